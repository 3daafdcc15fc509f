//! Every shell example of the README runs, read from the README itself, in its order, in one
//! folder (so `./export` written by one is read by the next), with one cache. What only a real
//! server has is swapped for the demo server's: its URL for `https://ehr.example.org/fhir`, its
//! client id for `ID`, its private JWKS as `key.jwks.json`, one of its groups for `cohort-1`;
//! listeners take port 0; `../shared` is `FHIRFLIGHT_SHARED` and `python` is
//! `FHIRFLIGHT_PYTHON` (an example needing either is skipped, saying why, when it is absent);
//! `df://127.0.0.1:50050` is a scheduler (with an executor) this test starts;
//! `fhirflight.toml` is the `[views.patients]` section of the README's configuration reference,
//! `report.sql` a statement and a meta command, also given as standard input.
//! A server (`serve`, `demo-server`) passes once it announces its address; everything else must exit
//! 0 with output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fhirflight::demo::{DEMO_CLIENT_ID, DemoConfig, DemoServer};

const README: &str = include_str!("../../README.md");

/// A command of the README: where it starts and its text, continuation lines joined.
struct Example {
    line: usize,
    text: String,
}

/// The commands of the README's indented code blocks that run `fhirflight` (or `cargo run --`).
fn examples() -> Vec<Example> {
    let mut examples = Vec::new();
    let mut lines = README.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(command) = line.strip_prefix("    ") else {
            continue;
        };
        if !(command.starts_with("fhirflight ") || command.starts_with("cargo run -- ")) {
            continue;
        }
        let mut text = command.trim_end().to_owned();
        while let Some(open) = text.strip_suffix('\\') {
            let (_, next) = lines.next().expect("a continuation line");
            text = format!("{open}{}", next.trim());
        }
        examples.push(Example {
            line: index + 1,
            text,
        });
    }
    examples
}

/// The `[views.patients]` section of the README's configuration reference.
fn views_section() -> &'static str {
    let start = README.find("[views.patients]").unwrap();
    let end = start + README[start..].find("]\n#").unwrap() + 2;
    &README[start..end]
}

/// The example as it runs here, or why it cannot.
fn localized(text: &str, demo: &DemoServer, group: &str, cluster: &str) -> Result<String, String> {
    let mut text = text
        .replacen("cargo run -- ", "fhirflight ", 1)
        .replace("df://127.0.0.1:50050", cluster)
        .replace("--listen 127.0.0.1:50050", "--listen 127.0.0.1:0")
        .replace("--listen 127.0.0.1:50052", "--listen 127.0.0.1:0")
        .replace("https://ehr.example.org/fhir", demo.base_url().as_str())
        .replace("--client-id ID", &format!("--client-id {DEMO_CLIENT_ID}"))
        .replace("group:cohort-1", &format!("group:{group}"))
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    if text.contains("../shared/") {
        let shared = std::env::var("FHIRFLIGHT_SHARED")
            .map_err(|_| "../shared is not present (FHIRFLIGHT_SHARED)".to_owned())?;
        text = text.replace("../shared", &shared);
    }
    if text.contains("| python ") {
        let python = crate::python().ok_or("no Python (FHIRFLIGHT_PYTHON)")?;
        text = text.replace("| python ", &format!("| {} ", python.display()));
    }
    if text.starts_with("fhirflight serve ") && !text.contains("--listen") {
        text.push_str(" --listen 127.0.0.1:0");
    }
    Ok(text)
}

/// A folder with `fhirflight` on the path, the files the examples name, and its own cache.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(demo: &DemoServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fhirflight"), bin.join("fhirflight"))
            .unwrap();
        std::fs::write(
            dir.path().join("key.jwks.json"),
            demo.credentials().private_jwks(),
        )
        .unwrap();
        std::fs::write(dir.path().join("fhirflight.toml"), views_section()).unwrap();
        // What `-f report.sql` runs, and standard input (the shell's, when no query is given).
        let report =
            "SELECT gender, count(*) AS patients FROM Patient GROUP BY gender;\n\\d Patient\n";
        std::fs::write(dir.path().join("report.sql"), report).unwrap();
        std::fs::create_dir(dir.path().join("views")).unwrap();
        Self { dir }
    }

    fn command(&self, text: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("bash");
        let stdin = std::fs::File::open(self.dir.path().join("report.sql")).unwrap();
        command
            .args(["-o", "pipefail", "-c", &format!("exec {text}")])
            .stdin(stdin)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("FHIRFLIGHT_CACHE_DIR", self.cache())
            .env_remove("FHIRFLIGHT_CONFIG");
        command
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

/// Runs a server example until its first line on standard output, which must announce it.
fn announces(workspace: &Workspace, text: &str) -> String {
    let mut child = workspace
        .command(text)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shell_example_of_the_readme_runs() {
    let config = DemoConfig::default().with_patients(10);
    let population = fhirflight::demo::generate(config.seed(), 10);
    let demo = DemoServer::start(config).await.unwrap();
    let group = population.group_ids()[0].to_owned();
    let workspace = Workspace::new(&demo);
    // The scheduler the cluster examples name, with an executor.
    let cluster = crate::cluster::LocalCluster::start(1);
    let scheduler = format!("df://{}", &cluster.cluster.scheduler()["http://".len()..]);
    let examples = examples();
    assert!(examples.len() >= 10, "{} examples found", examples.len());
    let mut ran = 0;
    for Example { line, text } in &examples {
        let text = match localized(text, &demo, &group, &scheduler) {
            Ok(text) => text,
            Err(why) => {
                eprintln!("README line {line}: skipped: {why}");
                continue;
            }
        };
        let server = [
            "fhirflight serve ",
            "fhirflight demo-server ",
            "fhirflight cluster scheduler ",
            "fhirflight cluster executor ",
        ]
        .iter()
        .any(|s| text.starts_with(s));
        if server {
            let first = announces(&workspace, &text);
            assert!(
                first.contains(" 127.0.0.1:") || first.contains("://127.0.0.1:"),
                "README line {line}: {text}\n{first}"
            );
        } else {
            let out = tokio::task::block_in_place(|| workspace.command(&text).output().unwrap());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "README line {line}: {text}\n{stderr}");
            let made_output =
                !out.stdout.is_empty() || text.contains("--output") || text.contains("--out ");
            assert!(made_output, "README line {line}: {text}: no output");
        }
        ran += 1;
    }
    let skipped = examples.len() - ran;
    let may_skip = std::env::var_os("FHIRFLIGHT_SHARED").is_none() || crate::python().is_none();
    assert!(skipped == 0 || may_skip, "{skipped} skipped");
    assert!(Path::new(&workspace.cache()).is_dir());
}

/// The README's Python example, against `serve --demo` as the README starts it (port 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_of_the_readme_runs() {
    let Some(python) = crate::python() else {
        eprintln!("skipped: no Python (FHIRFLIGHT_PYTHON)");
        return;
    };
    let start = README.find("```python\n").unwrap() + "```python\n".len();
    let example = &README[start..start + README[start..].find("```").unwrap()];
    let demo = DemoServer::start(DemoConfig::default()).await.unwrap();
    let workspace = Workspace::new(&demo);
    let mut serve = workspace
        .command("fhirflight serve --demo --demo-patients 10 --users alice:wonderland --listen 127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kept open while it serves: a server whose standard output is gone ends.
    let mut stdout = BufReader::new(serve.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let address = first.trim().rsplit("grpc://").next().unwrap().to_owned();
    let script = example.replace("127.0.0.1:50051", &address)
        + "print(len(patients), len(women), list(patients.columns), conditions['n'].sum() > 0)\n";
    let out = tokio::task::block_in_place(|| {
        Command::new(python).args(["-c", &script]).output().unwrap()
    });
    serve.kill().unwrap();
    serve.wait().unwrap();
    drop(stdout);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("10 ")
            && stdout
                .ends_with("['id', 'gender', 'birthDate', 'maritalStatus_coding_0_code'] True\n"),
        "{stdout}"
    );
    assert!(stderr.is_empty(), "no warning: {stderr}");
}

/// The SQL statements the README's prose quotes (`SELECT ... FROM Patient ...`), run in one
/// `sql --demo` process as the shell examples are; a statement with a placeholder (`<name>`) or
/// another engine's function (DuckDB's `read_parquet`) is skipped, saying why.
#[test]
fn every_inline_statement_of_the_readme_runs() {
    let mut statements = Vec::new();
    for (index, line) in README.lines().enumerate() {
        // Inline code spans: the odd pieces between backticks.
        for span in line.split('`').skip(1).step_by(2) {
            let keyword = span.split_whitespace().next().unwrap_or_default();
            if !["SELECT", "WITH", "EXPLAIN"].contains(&keyword) || !span.contains(" FROM ") {
                continue;
            }
            let skipped = match () {
                _ if span.contains('<') => "a placeholder",
                _ if span.contains("read_parquet") => "DuckDB's SQL",
                _ => {
                    statements.push((index + 1, span));
                    continue;
                }
            };
            eprintln!("README line {}: skipped: {skipped}: {span}", index + 1);
        }
    }
    assert!(
        statements.len() >= 3,
        "{} statements found",
        statements.len()
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhirflight"));
    let cache = tempfile::tempdir().unwrap();
    command
        .args(["sql", "--demo", "--demo-patients", "10", "--cache-dir"])
        .arg(cache.path());
    for (_, statement) in &statements {
        command.args(["-c", statement]);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A failure names the statement (`stopped at -c #N`): its README line is the Nth found.
    let lines: Vec<String> = statements
        .iter()
        .enumerate()
        .map(|(i, (line, _))| format!("-c #{}: README line {line}", i + 1))
        .collect();
    assert!(out.status.success(), "{stderr}\n{lines:#?}");
}
