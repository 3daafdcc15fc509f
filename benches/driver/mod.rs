//! The command line the bench drivers share: `cargo bench` adds `--bench`; a driver's own
//! arguments are the others, a folder first, then `--name value` flags.

/// A driver's own arguments.
pub(crate) struct Args(Vec<String>);

impl Args {
    pub(crate) fn from_env() -> Self {
        Self(
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect(),
        )
    }

    /// The arguments, in order.
    pub(crate) fn all(&self) -> &[String] {
        &self.0
    }

    /// The value after the flag `name`.
    pub(crate) fn flag(&self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).cloned()
    }

    /// The number after the flag `name`, else `default`.
    pub(crate) fn number(&self, name: &str, default: usize) -> usize {
        self.flag(name).map_or(default, |n| {
            n.parse().unwrap_or_else(|_| panic!("{name} N"))
        })
    }
}
