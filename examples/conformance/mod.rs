//! What the conformance runners share: `<suite folder> [--report <file>]` on the command line,
//! and the exit status (0 all passed, 1 a case failed, 2 the suite could not be run).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Parses the arguments of the runner `name` and calls `run(suite, report)`, which says whether
/// every case passed.
pub(crate) fn main(
    name: &str,
    run: impl FnOnce(&Path, Option<&Path>) -> Result<bool, String>,
) -> ExitCode {
    let usage = |msg: &str| {
        eprintln!("{name}: {msg}\nusage: {name} <suite folder> [--report <file>]");
        ExitCode::from(2)
    };
    let mut args = std::env::args().skip(1);
    let (mut suite, mut report) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--report" => report = args.next().map(PathBuf::from),
            _ if suite.is_none() => suite = Some(PathBuf::from(arg)),
            _ => return usage(&format!("unexpected argument {arg}")),
        }
    }
    let Some(suite) = suite else {
        return usage("missing the suite folder");
    };
    match run(&suite, report.as_deref()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}
