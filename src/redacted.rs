//! [`Redacted`]: a secret whose `Debug` never shows it.

use std::fmt;
use std::ops::Deref;

/// A secret (a private key, a token, a password digest) that any `Debug` output, and so any log
/// line or error built from one, shows as `***`. Derive `Debug` on the struct that holds it.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Redacted<T>(pub(crate) T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> Deref for Redacted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        #[derive(Debug)]
        #[allow(dead_code)] // read by Debug only
        struct Holder {
            name: &'static str,
            key: Redacted<&'static str>,
        }
        let holder = Holder {
            name: "kid-1",
            key: Redacted("s3cr3t"),
        };
        assert_eq!(
            format!("{holder:?}"),
            r#"Holder { name: "kid-1", key: *** }"#
        );
        assert_eq!(*holder.key, "s3cr3t");
    }
}
