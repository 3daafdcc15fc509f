//! The `fhirflight` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `fhirflight sql --folder <folder>` with its cache in `folder`; flags and the query follow.
fn sql_command(folder: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhirflight"));
    command
        .args(["sql", "--cache-dir"])
        .arg(folder.join("cache"))
        .arg("--folder")
        .arg(folder);
    command
}

/// The standard output and error of a finished command, as text.
fn texts(out: &Output) -> (String, String) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&out.stdout), text(&out.stderr))
}

/// Runs `fhirflight sql --folder <folder> <query>` with its cache in `folder`.
fn sql(folder: &Path, query: &str) -> Output {
    sql_command(folder).arg(query).output().unwrap()
}

/// A folder of one Patient's NDJSON.
fn one_patient() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("Patient.ndjson"),
        r#"{"resourceType":"Patient","id":"p1","gender":"female"}"#,
    )
    .unwrap();
    folder
}

fn chain(n: usize, term: &str, op: &str) -> String {
    vec![term; n].join(op)
}

#[test]
fn deep_statements_and_expressions_are_errors_not_aborts() {
    let folder = one_patient();
    // Deep, but within the bound: answered (this overflowed a 2 MiB stack).
    let out = sql(
        folder.path(),
        &format!("SELECT {} AS n", chain(2_000, "1", "+")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| 2000 |"), "{stdout}");
    // 10,000 terms aborted the process: now a clear error.
    let out = sql(
        folder.path(),
        &format!("SELECT {}", chain(10_000, "1", "+")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nested more than 5000 levels"), "{stderr}");
    // A FHIRPath expression of 60,000 `+` in a view added from SQL (as long as one argument may
    // be), likewise.
    let view = serde_json::json!({
        "resource": "Patient",
        "select": [{"column": [{"name": "n", "path": chain(60_000, "1", "+")}]}],
    });
    let out = sql(
        folder.path(),
        &format!("SELECT * FROM fhir_add_view('fhir', '{view}')"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("more than the 65536 allowed"), "{stderr}");
    let deep = chain(1_000, "1", "+");
    let view = view.to_string().replace(&chain(60_000, "1", "+"), &deep);
    let out = sql(
        folder.path(),
        &format!("SELECT * FROM fhir_add_view('fhir', '{view}')"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nested more than 256 levels"), "{stderr}");
}

#[test]
fn serve_fails_before_announcing_when_it_cannot_serve() {
    let folder = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--users",
            "alice:wonderland",
        ])
        .args([
            "--tls-cert",
            "no/such/cert.pem",
            "--tls-key",
            "no/such/key.pem",
        ])
        .arg("--folder")
        .arg(folder.path())
        .arg("--cache-dir")
        .arg(folder.path().join("cache"))
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("no/such/cert.pem"), "{stderr}");
}

#[test]
fn users_add_prints_a_users_file_line_that_serve_accepts() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["users", "add", "carol", "--role", "read"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long passphrase\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("carol:read:$argon2id$"), "{line}");
    assert!(!line.contains("passphrase"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, &line).unwrap();
    assert_eq!(
        fhirflight::flight::Users::from_file(&file).unwrap().len(),
        1
    );

    // An empty password is refused, with no line printed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["users", "add", "dave"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("an empty password is not allowed"),
        "{stderr}"
    );
}

#[test]
fn the_notebooks_patient_level_export_runs_from_sql() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args([
            "sql",
            "--demo",
            "--demo-patients",
            "7",
            "--level",
            "patient",
        ])
        // The kick-off is logged at info; `sql` logs warnings only by default.
        .args(["--log", "info", "--format", "csv", "--cache-dir"])
        .arg(cache.path())
        .arg("SELECT count(*) AS n FROM Patient")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n7\n");
    assert!(
        stderr.contains("/Patient/$export"),
        "a patient-level kick-off: {stderr}"
    );
}

#[test]
fn skipped_lines_are_a_warning_on_the_terminal() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("Patient.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\n",
    )
    .unwrap();
    let out = sql(folder.path(), "SELECT count(*) AS n FROM Patient");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: Patient: skipped-lines: 1 line skipped: raw/Patient.000.ndjson line 2: invalid JSON"
        ),
        "{stderr}"
    );
}

#[test]
fn serve_listens_though_the_fhir_server_is_down_and_sigterm_stops_it_with_0() {
    use std::io::BufRead;
    use std::process::Stdio;
    let cache = tempfile::tempdir().unwrap();
    // A FHIR server that is down: a port bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/fhir", closed.local_addr().unwrap());
    drop(closed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--anonymous",
            "--server",
            &url,
        ])
        .arg("--cache-dir")
        .arg(cache.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open until the end: the server prints more lines after the first.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(child.wait().unwrap().code(), Some(0), "a graceful stop");
    assert!(
        first.starts_with("fhirflight Flight SQL server listening on grpc://127.0.0.1:"),
        "{first}"
    );
}

#[test]
fn strict_fails_on_a_bad_line_and_commits_nothing() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("Patient.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\n",
    )
    .unwrap();
    let strict = sql_command(folder.path())
        .arg("--strict")
        .arg("SELECT count(*) AS n FROM Patient")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("raw/Patient.000.ndjson line 2: invalid JSON"),
        "{stderr}"
    );
    // Nothing was committed: without --strict the same cache converts again, with a warning.
    let lenient = sql(folder.path(), "SELECT count(*) AS n FROM Patient");
    let stderr = String::from_utf8_lossy(&lenient.stderr);
    assert!(lenient.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: Patient: skipped-lines"),
        "{stderr}"
    );
}

#[test]
fn cache_gc_removes_what_nobody_needs_and_keeps_the_snapshots() {
    let folder = one_patient();
    let query = "SELECT count(*) AS n FROM Patient";
    assert!(sql(folder.path(), query).status.success());
    let cache = folder.path().join("cache");
    let store = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // What a killed run left: a writer's folder, and downloads no export holds, a week old.
    let orphan = store.join("tmp").join("20261206000000000-0badc0de");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.with_extension("lock"), "").unwrap();
    let stopped = store.join("staging").join("stopped-export");
    std::fs::create_dir_all(&stopped).unwrap();
    let download = stopped.join("Patient.0.ndjson");
    std::fs::write(&download, "{}\n").unwrap();
    let week_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 86_400);
    for path in [&download, &stopped] {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(week_ago)
            .unwrap();
    }

    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["cache", "gc", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("removed {} (3 bytes)", stopped.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("removed {} (0 bytes)", orphan.display())),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("folders removed: 2, freed: 3 bytes\n"),
        "{stdout}"
    );
    assert!(!stopped.exists() && !orphan.exists());
    // The snapshot stays: the query is answered from the cache.
    let out = sql(folder.path(), query);
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 1 |"));
}

#[test]
fn the_configs_limits_reach_the_tables() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("Patient.ndjson"),
        r#"{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-01"}"#,
    )
    .unwrap();
    let config = folder.path().join("fhirflight.toml");
    std::fs::write(&config, "[limits]\nmax_columns = 3\n").unwrap();
    let out = sql_command(folder.path())
        .arg("--config")
        .arg(&config)
        .args(["--format", "csv", "SELECT * FROM Patient"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "resourceType,id,gender,_overflow\nPatient,p1,female,\"{\"\"birthDate\"\":\"\"1970-01-01\"\"}\"\n"
    );
    assert!(stderr.contains("wide-resources"), "{stderr}");
}

/// `[cache] url` keeps the snapshots where it says, for queries and the `cache` commands alike;
/// `--cache-dir` wins over it.
#[test]
fn the_configs_cache_url_keeps_the_snapshots() {
    let folder = one_patient();
    let (configured, flagged) = (folder.path().join("lake"), folder.path().join("flag"));
    let config = folder.path().join("fhirflight.toml");
    let url = url::Url::from_directory_path(&configured).unwrap();
    std::fs::write(&config, format!("[cache]\nurl = \"{url}\"\n")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = texts(&out);
        assert!(out.status.success(), "{stderr}");
        stdout
    };
    let folder_arg = folder.path().to_str().unwrap();
    let count = "SELECT count(*) AS n FROM Patient";
    assert!(run(&["sql", "--folder", folder_arg, count]).contains("| 1 |"));
    let listed = run(&["cache", "list"]);
    assert!(
        listed.contains(&configured.display().to_string()),
        "{listed}"
    );
    assert!(listed.contains("Patient"), "{listed}");

    let flag = flagged.to_str().unwrap();
    run(&["sql", "--folder", folder_arg, "--cache-dir", flag, count]);
    assert!(run(&["cache", "list", "--cache-dir", flag]).contains("Patient"));
    let sources = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
    assert_eq!((sources(&configured), sources(&flagged)), (1, 1));

    std::fs::write(&config, "[cache]\nurl = \"file://host/share\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .arg("--config")
        .arg(&config)
        .args(["cache", "list"])
        .output()
        .unwrap();
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("[cache] url: file://host/share: not a folder path"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ctrl_c_during_conversion_exits_130_and_leaves_nothing_half_written() {
    use std::io::Write;
    let folder = tempfile::tempdir().unwrap();
    let mut ndjson = std::io::BufWriter::new(
        std::fs::File::create(folder.path().join("Patient.ndjson")).unwrap(),
    );
    for i in 0..2_000_000 {
        writeln!(
            ndjson,
            r#"{{"resourceType":"Patient","id":"p{i}","name":[{{"given":["Ann"]}}]}}"#
        )
        .unwrap();
    }
    ndjson.flush().unwrap();
    let cache = folder.path().join("cache");
    let mut child = sql_command(folder.path())
        .arg("SELECT count(*) FROM Patient")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A snapshot being written: a folder in the store's tmp/.
    let writing = || {
        let stores = std::fs::read_dir(&cache).into_iter().flatten().flatten();
        stores
            .flat_map(|s| {
                std::fs::read_dir(s.path().join("tmp"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .any(|e| e.path().is_dir())
    };
    crate::until("a conversion", || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "fhirflight ended early"
        );
        writing()
    })
    .await;
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(!writing(), "the writer removed its folder");
    let committed = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .any(|s| s.path().join("Patient").join("manifest.json").exists());
    assert!(!committed, "no snapshot committed");
}

/// Two patients with gaps (nulls), a number, and a name that CSV must quote.
fn patients(folder: &Path) {
    std::fs::write(
        folder.join("Patient.ndjson"),
        concat!(
            r#"{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-01","multipleBirthInteger":2}"#,
            "\n",
            r#"{"resourceType":"Patient","id":"p2","birthDate":"1980-02-02","name":[{"family":"O'Brien, \"Ann\""}]}"#,
            "\n",
        ),
    )
    .unwrap();
}

const PATIENTS: &str = "SELECT id, gender, birthDate, multipleBirthInteger, name_0_family \
                        FROM Patient ORDER BY id";

/// The standard output of a successful `fhirflight sql` with `flags`.
fn stdout_of(folder: &Path, flags: &[&str], query: &str) -> String {
    let out = sql_command(folder).args(flags).arg(query).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{flags:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sql_formats_write_nulls_and_empty_results_keep_their_header() {
    let folder = tempfile::tempdir().unwrap();
    let folder = folder.path();
    patients(folder);
    let text = |format: &str, query: &str| stdout_of(folder, &["--format", format], query);
    assert_eq!(
        text("csv", PATIENTS),
        "id,gender,birthDate,multipleBirthInteger,name_0_family\n\
         p1,female,1970-01-01,2,\n\
         p2,,1980-02-02,,\"O'Brien, \"\"Ann\"\"\"\n"
    );
    assert_eq!(
        text("tsv", PATIENTS),
        "id\tgender\tbirthDate\tmultipleBirthInteger\tname_0_family\n\
         p1\tfemale\t1970-01-01\t2\t\n\
         p2\t\t1980-02-02\t\t\"O'Brien, \"\"Ann\"\"\"\n"
    );
    let p1 = r#"{"id":"p1","gender":"female","birthDate":"1970-01-01","multipleBirthInteger":2,"name_0_family":null}"#;
    let p2 = r#"{"id":"p2","gender":null,"birthDate":"1980-02-02","multipleBirthInteger":null,"name_0_family":"O'Brien, \"Ann\""}"#;
    assert_eq!(text("json", PATIENTS), format!("[{p1},{p2}]\n"));
    assert_eq!(text("ndjson", PATIENTS), format!("{p1}\n{p2}\n"));
    assert_eq!(
        text("nd-json", PATIENTS),
        format!("{p1}\n{p2}\n"),
        "datafusion-cli's name"
    );

    let none = "SELECT id, gender FROM Patient WHERE id = 'nobody'";
    assert_eq!(text("csv", none), "id,gender\n");
    assert_eq!(text("tsv", none), "id\tgender\n");
    assert_eq!(text("json", none), "[]\n");
    assert_eq!(text("ndjson", none), "");
    let border = "+----+--------+\n";
    assert_eq!(
        text("table", none),
        format!("{border}| id | gender |\n{border}{border}")
    );
    let parquet = folder.join("none.parquet");
    let arrow = folder.join("none.arrows");
    for (format, path) in [("parquet", &parquet), ("arrow", &arrow)] {
        let flags = ["--format", format, "--output", path.to_str().unwrap()];
        assert_eq!(stdout_of(folder, &flags, none), "");
    }
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&parquet).unwrap(),
        )
        .unwrap();
    let names = |schema: &arrow::datatypes::Schema| {
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
        names.join(",")
    };
    assert_eq!(names(reader.schema()), "id,gender");
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::fs::File::open(&arrow).unwrap(), None)
            .unwrap();
    assert_eq!(names(&reader.schema()), "id,gender");

    // A failed query leaves no file that looks whole.
    let failed = folder.join("failed.csv");
    let out = sql_command(folder)
        .args(["--format", "csv", "--output", failed.to_str().unwrap()])
        .arg("SELECT CAST(id AS INT) FROM Patient")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!failed.exists());
}

/// Reads files given as `format=path` with pandas (pyarrow for the Arrow IPC stream) and prints
/// each as `{"format": [[columns], [row], ...]}`, missing values as null, whole floats as ints.
const READ_BACK: &str = r#"
import json, math, sys
import pandas as pd, pyarrow as pa, pyarrow.ipc
read = {
    "csv": pd.read_csv,
    "tsv": lambda p: pd.read_csv(p, sep="\t"),
    "json": lambda p: pd.read_json(p, convert_dates=False),
    "ndjson": lambda p: pd.read_json(p, lines=True, convert_dates=False),
    "parquet": pd.read_parquet,
    "arrow": lambda p: pa.ipc.open_stream(open(p, "rb")).read_all().to_pandas(),
}
def plain(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
tables = {}
for arg in sys.argv[1:]:
    format, path = arg.split("=", 1)
    df = read[format](path)
    tables[format] = [list(df.columns)] + [[plain(v) for v in row] for row in df.itertuples(index=False)]
print(json.dumps(tables))
"#;

#[test]
fn sql_formats_round_trip_through_pandas_and_pyarrow() {
    let Some(python) = crate::python() else {
        eprintln!(
            "SKIPPED sql_formats_round_trip_through_pandas_and_pyarrow: needs FHIRFLIGHT_PYTHON or .venv/bin/python with pandas and pyarrow"
        );
        return;
    };
    let folder = tempfile::tempdir().unwrap();
    let folder = folder.path();
    patients(folder);
    let mut read_back = Command::new(python);
    read_back.arg("-c").arg(READ_BACK);
    for format in ["csv", "tsv", "json", "ndjson", "parquet", "arrow"] {
        let path = folder.join(format!("patients.{format}"));
        let flags = ["--format", format, "--output", path.to_str().unwrap()];
        assert_eq!(stdout_of(folder, &flags, PATIENTS), "");
        read_back.arg(format!("{format}={}", path.display()));
    }
    let out = read_back.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = serde_json::json!([
        [
            "id",
            "gender",
            "birthDate",
            "multipleBirthInteger",
            "name_0_family"
        ],
        ["p1", "female", "1970-01-01", 2, null],
        ["p2", null, "1980-02-02", null, "O'Brien, \"Ann\""],
    ]);
    for (format, table) in tables.as_object().unwrap() {
        assert_eq!(table, &expected, "{format}");
    }
    assert_eq!(tables.as_object().unwrap().len(), 6);
}

#[test]
fn output_flags_are_checked_before_any_export() {
    let folder = tempfile::tempdir().unwrap();
    // A FHIR server that is down: a flag checked after the export would fail on it instead.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/fhir", closed.local_addr().unwrap());
    drop(closed);
    let no_dir = folder.path().join("no/such/dir/out.csv");
    for (flags, error) in [
        (
            vec!["--format", "parquet"],
            "--format parquet needs --output FILE",
        ),
        (
            vec!["--format", "csv", "--maxrows", "5"],
            "--maxrows applies to --format table, not csv",
        ),
        (
            vec!["--format", "csv", "--output", no_dir.to_str().unwrap()],
            "no/such/dir/out.csv",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(["sql", "--server", &url, "--cache-dir"])
            .arg(folder.path().join("cache"))
            .args(&flags)
            .arg("SELECT count(*) FROM Patient")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(error), "{flags:?}: {stderr}");
        assert!(!stderr.contains(&url), "no request was made: {stderr}");
    }
    assert!(
        !folder.path().join("cache").exists(),
        "no session was built"
    );
}

#[test]
fn a_closed_pipe_ends_the_query_quietly_with_0() {
    let folder = tempfile::tempdir().unwrap();
    patients(folder.path());
    // An endless result: only streaming gets its first rows to `head`, and only the closed pipe
    // ends the query.
    let endless = "SELECT value FROM generate_series(1, 9223372036854775806)";
    for format in ["table", "csv", "json", "arrow"] {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(r#"set -o pipefail; "$0" sql --cache-dir "$1" --folder "$2" --format "$3" "$4" | head -c 100 >/dev/null"#)
            .arg(env!("CARGO_BIN_EXE_fhirflight"))
            .arg(folder.path().join("cache"))
            .arg(folder.path())
            .args([format, endless])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("--format {format}: still running after `head` left");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "--format {format}: {stderr}");
        assert!(!stderr.contains("error"), "--format {format}: {stderr}");
    }
}

#[test]
fn a_table_is_a_screenful_on_a_terminal_and_whole_otherwise() {
    let folder = tempfile::tempdir().unwrap();
    patients(folder.path());
    let long = "x".repeat(100);
    let query = format!("SELECT value AS n, '{long}' AS long FROM generate_series(1, 100)");

    // Piped: every row, every value whole; the footer on standard error.
    let out = sql(folder.path(), &query);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches(&long).count(), 100, "{stdout}");
    assert!(stderr.contains("100 rows, "), "{stderr}");
    assert!(!stderr.contains("shown") && !stdout.contains("rows"));

    // A terminal (util-linux `script` gives the command one), 40 columns wide.
    if !script_available("the terminal half of a_table_is_a_screenful_on_a_terminal_...") {
        return;
    }
    let (cache, data) = (folder.path().join("cache"), folder.path());
    let on_terminal = |flags: &[&str]| {
        let mut args = vec!["sql", "--cache-dir", cache.to_str().unwrap()];
        args.extend(["--folder", data.to_str().unwrap()]);
        args.extend(flags);
        args.push(&query);
        let out = script_command(&args)
            .env("COLUMNS", "40")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{flags:?}");
        String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n")
    };
    let screen = on_terminal(&[]);
    let rows: Vec<&str> = screen.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 41, "a header and 40 rows: {screen}");
    assert_eq!(rows[40], format!("| 40 | {}… |", "x".repeat(30)));
    assert!(screen.lines().all(|l| l.chars().count() <= 40), "{screen}");
    assert!(screen.contains("\n100 rows, 40 shown, "), "{screen}");
    let two = on_terminal(&["--maxrows", "2"]);
    assert!(two.contains("| 2 |") && !two.contains("| 3 |"), "{two}");
    assert!(two.contains("100 rows, 2 shown, "), "{two}");
    let asked = on_terminal(&["--format", "table"]);
    assert_eq!(asked.matches(&long).count(), 100, "{asked}");
}

/// Runs `fhirflight cache <args> --cache-dir <cache>`; fails the test unless it succeeds, and
/// returns its standard output.
fn cache_command(cache: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .arg("cache")
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cache {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// `fhirflight cache list --format json`, parsed.
fn cache_listing(cache: &Path) -> serde_json::Value {
    serde_json::from_str(&cache_command(cache, &["list", "--format", "json"])).unwrap()
}

/// Runs `fhirflight sql --refresh` over `folder` (cache in `folder/cache`); fails unless it
/// succeeds.
fn refresh(folder: &Path, query: &str) {
    let out = sql_command(folder)
        .args(["--refresh", query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows in the Parquet files at `paths`.
fn parquet_rows(paths: &[&str]) -> usize {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut rows = 0;
    for path in paths {
        let file = std::fs::File::open(path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
    }
    rows
}

/// Patients of these ids, nothing else.
fn patients_with_ids(folder: &Path, ids: &[&str]) {
    let lines: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#))
        .collect();
    std::fs::write(folder.join("Patient.ndjson"), lines.join("\n")).unwrap();
}

/// The snapshot folder (`<name>/<snapshot>`) of a table file (`<name>/<mode>/<snapshot>/part-0`).
fn snapshot_dir(file: &Path) -> PathBuf {
    let table = file.parent().unwrap();
    let name = table.parent().unwrap().parent().unwrap();
    name.join(table.file_name().unwrap())
}

#[test]
fn cache_path_gives_the_current_snapshots_rows_where_a_glob_takes_a_held_one_too() {
    let folder = tempfile::tempdir().unwrap();
    let cache = folder.path().join("cache");
    patients_with_ids(folder.path(), &["a"]);
    refresh(folder.path(), "SELECT count(*) FROM Patient");
    let first = cache_command(&cache, &["path", "Patient", "--format", "lines"]);
    // Another process still reads the first snapshot when the second is committed.
    let first_dir = &snapshot_dir(Path::new(first.trim()));
    let readers = std::fs::File::open(first_dir.join(".readers")).unwrap();
    readers.lock_shared().unwrap();
    patients_with_ids(folder.path(), &["a", "b"]);
    refresh(folder.path(), "SELECT count(*) FROM Patient");

    let listing = cache_listing(&cache);
    let source = &listing[0];
    let canonical = folder.path().canonicalize().unwrap();
    assert_eq!(source["source"], canonical.display().to_string());
    let patient = &source["snapshots"][0];
    assert_eq!(patient["name"], "Patient");
    assert_eq!(patient["resources"], 2);
    let type_dir = Path::new(source["dir"].as_str().unwrap()).join("Patient");
    let glob: Vec<String> = std::fs::read_dir(type_dir.join("flattened"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("part-0.parquet"))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    let glob: Vec<&str> = glob.iter().map(String::as_str).collect();
    assert_eq!(
        parquet_rows(&glob),
        3,
        "Patient/flattened/*/*.parquet: {glob:?}"
    );
    // What another engine reads is the Delta table, whose current version is the snapshot.
    let delta = type_dir.join("flattened");
    assert_eq!(
        cache_command(&cache, &["path", "Patient"]),
        format!("{}\n", delta.display())
    );
    let url = format!("file://{}/", delta.display());
    assert_eq!(patient["tables"]["flattened"]["delta"], url);
    assert_eq!(patient["tables"]["flattened"]["deltaVersion"], 1);

    let lines = cache_command(&cache, &["path", "Patient", "--format", "lines"]);
    let paths: Vec<&str> = lines.lines().collect();
    assert_eq!(parquet_rows(&paths), 2, "{paths:?}");
    assert!(
        paths
            .iter()
            .all(|p| !p.starts_with(&*first_dir.to_string_lossy()))
    );
    let listed: Vec<&str> = patient["tables"]["flattened"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(listed, paths);
    // The same with the source named, by its folder or its cache folder's name.
    let key = type_dir
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    for source in [canonical.to_str().unwrap(), key] {
        let named = ["path", source, "Patient", "--format", "lines"];
        assert_eq!(cache_command(&cache, &named), lines);
    }
    assert_eq!(
        cache_command(&cache, &["path", "Patient", "--format", "duckdb"]),
        format!(
            "SELECT * FROM read_parquet(['{}'], union_by_name = true);\n",
            paths.join("', '")
        )
    );

    let text = cache_command(&cache, &[]);
    assert!(
        text.starts_with(&format!("{}  (", canonical.display())),
        "{text}"
    );
    let header: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["TYPE", "ROWS", "SIZE", "AGE", "TRANSACTION", "TIME"]
    );
    let row = text.lines().find(|l| l.starts_with("  Patient ")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "2", "{row}");
    assert_eq!(
        cells[5],
        patient["transactionTime"].as_str().unwrap(),
        "{row}"
    );
    drop(readers);
}

#[test]
fn cache_clear_removes_a_type_keeps_what_is_read_and_names_what_exists() {
    let folder = tempfile::tempdir().unwrap();
    let cache = folder.path().join("cache");
    patients_with_ids(folder.path(), &["a"]);
    std::fs::write(
        folder.path().join("Observation.ndjson"),
        r#"{"resourceType":"Observation","id":"o","status":"final"}"#,
    )
    .unwrap();
    refresh(folder.path(), "SELECT count(*) FROM Patient, Observation");
    let names = |listing: &serde_json::Value| -> Vec<String> {
        let snapshots = listing[0]["snapshots"].as_array().unwrap();
        snapshots
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&cache_listing(&cache)), ["Observation", "Patient"]);

    let out = cache_command(&cache, &["clear", "Patient"]);
    assert!(out.contains("/Patient/manifest.json ("), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("removed: 5, freed: "),
        "{out}"
    );
    assert_eq!(names(&cache_listing(&cache)), ["Observation"]);

    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args([
            "cache",
            "clear",
            "https://elsewhere.example/fhir",
            "--cache-dir",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let canonical = folder.path().canonicalize().unwrap();
    assert!(
        stderr.contains(&format!(
            "no source https://elsewhere.example/fhir in {}; cached: {} (",
            cache.display(),
            canonical.display()
        )) && stderr.contains("): Observation"),
        "{stderr}"
    );

    // A query of another process reads Observation: it stays, and is no longer current.
    let observation = cache_command(&cache, &["path", "Observation", "--format", "lines"]);
    let held = &snapshot_dir(Path::new(observation.trim()));
    let readers = std::fs::File::open(held.join(".readers")).unwrap();
    readers.lock_shared().unwrap();
    let out = cache_command(&cache, &["clear", canonical.to_str().unwrap()]);
    assert!(
        out.contains(&format!(
            "kept {}: a running process reads it",
            held.display()
        )),
        "{out}"
    );
    assert!(held.is_dir());
    assert!(names(&cache_listing(&cache)).is_empty());
    drop(readers);
    let out = cache_command(&cache, &["gc"]);
    assert!(
        out.contains(&format!("removed {} (", held.display())),
        "{out}"
    );
    assert!(!held.exists());
}

#[test]
fn a_second_demo_run_answers_from_the_cache_and_other_settings_keep_their_own() {
    let cache = tempfile::tempdir().unwrap();
    let demo = |patients: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(["sql", "--demo", "--demo-patients", patients])
            .args(["--log", "info", "--format", "csv", "--cache-dir"])
            .arg(cache.path())
            .arg("SELECT count(*) AS n FROM Patient")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("n\n{patients}\n")
        );
        stderr.contains("$export")
    };
    assert!(demo("5"), "the first run exports");
    let created = |listing: &serde_json::Value| listing[0]["snapshots"][0]["createdAt"].clone();
    let first = cache_listing(cache.path());
    assert!(!demo("5"), "the second run reads the first one's snapshot");
    assert_eq!(created(&cache_listing(cache.path())), created(&first));
    assert!(demo("6"), "another population is another source");
    let listing = cache_listing(cache.path());
    let sources: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["demo:seed=42,patients=5", "demo:seed=42,patients=6"]
    );
}

/// Whether util-linux `script` can give a command a terminal; says which test skips without.
fn script_available(test: &str) -> bool {
    let found = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED {test}: needs util-linux `script` for a terminal");
    }
    found
}

/// `fhirflight <args>` on a terminal: util-linux `script` runs it on a pseudo-terminal of its own.
fn script_command(args: &[&str]) -> Command {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_fhirflight"))
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    // `exec`: fhirflight is the terminal's only process whatever `$SHELL` runs the command (a
    // shell left waiting, as dash is, would take a Ctrl-C typed for fhirflight as its own).
    let mut script = Command::new("script");
    script.args(["-qec", &format!("exec {}", command.join(" ")), "/dev/null"]);
    script
}

/// Runs `fhirflight <args>` on a terminal (`script`), returning what the terminal shows: standard
/// output and error together, escape sequences and carriage returns kept.
fn on_a_terminal(args: &[&str]) -> String {
    let out = script_command(args)
        .env("COLUMNS", "160")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {shown}");
    shown
}

/// A bad line in a folder: the skipped-lines warning every run must show.
fn folder_with_a_bad_line() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("Patient.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\n",
    )
    .unwrap();
    folder
}

#[test]
fn a_piped_sql_run_shows_its_result_and_warnings_without_colours_or_info_lines() {
    let folder = folder_with_a_bad_line();
    let out = sql(folder.path(), "SELECT count(*) AS n FROM Patient");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 1 |"));
    assert!(
        !stderr.contains("\x1b["),
        "no ANSI codes in a pipe: {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("warning: Patient: skipped-lines: 1 line skipped"),
        "{stderr}"
    );
    assert!(lines[1].starts_with("1 row, "), "the footer: {stderr}");
    // --quiet: the same, warnings included.
    let quiet = sql_command(folder.path())
        .args(["--quiet", "--refresh", "SELECT count(*) AS n FROM Patient"])
        .output()
        .unwrap();
    let quiet = String::from_utf8_lossy(&quiet.stderr);
    assert!(
        quiet.starts_with("warning: Patient: skipped-lines: 1 line skipped"),
        "{quiet}"
    );
}

/// The demo server with `patients` in files of 2 and `faults`, and a key file of its client in
/// `dir`: the flags `sql` and `export` reach it with, downloading one file at a time.
async fn demo_server_of_small_files(
    dir: &Path,
    patients: usize,
    faults: fhirflight::demo::Faults,
) -> (fhirflight::demo::DemoServer, Vec<String>) {
    use fhirflight::demo::{DemoConfig, DemoServer};
    let config = DemoConfig::default()
        .with_patients(patients)
        .with_page_size(2);
    let server = DemoServer::start(config).await.unwrap();
    server.set_faults(faults);
    let creds = server.credentials();
    let key_file = dir.join("key.jwk.json");
    std::fs::write(&key_file, creds.rs384().private_jwk()).unwrap();
    let flags = [
        "--server",
        server.base_url().as_str(),
        "--client-id",
        creds.client_id(),
        "--key-file",
        key_file.to_str().unwrap(),
        "--parallel-downloads",
        "1",
    ]
    .map(str::to_owned)
    .to_vec();
    (server, flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_line_counts_files_bytes_and_a_rate_and_quiet_hides_it_but_not_warnings() {
    const TEST: &str =
        "the_progress_line_counts_files_bytes_and_a_rate_and_quiet_hides_it_but_not_warnings";
    if !script_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 6 files of one type, one at a time, each over 400 ms; a bad line for a warning.
    let faults = fhirflight::demo::Faults {
        download_chunk_delay: Some(std::time::Duration::from_millis(400)),
        malformed_line: true,
        ..Default::default()
    };
    let (_server, flags) = demo_server_of_small_files(dir.path(), 12, faults).await;
    let cache = dir.path().join("cache");
    let run = move |extra: &'static [&'static str]| {
        let mut args = vec!["sql", "SELECT count(*) AS n FROM Patient", "--cache-dir"];
        args.push(cache.to_str().unwrap());
        args.extend(flags.iter().map(String::as_str));
        args.extend(extra);
        on_a_terminal(&args)
    };
    let run = std::sync::Arc::new(run);
    let shown = {
        let run = std::sync::Arc::clone(&run);
        tokio::task::spawn_blocking(move || run(&[])).await.unwrap()
    };
    let lines: Vec<&str> = shown.split(['\r', '\n']).collect();
    let downloading: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("fhir Patient: downloading ["))
        .collect();
    assert!(
        downloading.iter().any(|l| l.contains("/6 files, ")),
        "a bar over the manifest's 6 files: {shown:?}"
    );
    assert!(
        downloading
            .iter()
            .any(|l| l.contains("B/s") && l.contains(", ETA ")),
        "bytes, their rate and an ETA: {shown:?}"
    );
    assert!(
        downloading.iter().all(|l| !l.contains('%')),
        "no percentage of the waiting phase: {shown:?}"
    );
    let result = shown.find("| n  |").expect("the result");
    assert!(
        !shown[result..].contains("fhir Patient:"),
        "the lines end before the result: {shown:?}"
    );
    assert!(
        shown.contains("warning: Patient: skipped-lines"),
        "{shown:?}"
    );

    let quiet = tokio::task::spawn_blocking(move || run(&["--quiet", "--refresh"]))
        .await
        .unwrap();
    assert!(!quiet.contains("fhir Patient:"), "no progress: {quiet:?}");
    assert!(
        quiet.contains("warning: Patient: skipped-lines"),
        "warnings stay: {quiet:?}"
    );
    assert!(quiet.contains("| n  |"), "{quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_a_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, flags) = demo_server_of_small_files(dir.path(), 4, Default::default()).await;
    let out_dir = dir.path().join("export");
    let mut export = Command::new(env!("CARGO_BIN_EXE_fhirflight"));
    export
        .args([
            "--log-format",
            "json",
            "export",
            "--types",
            "Patient",
            "--out",
        ])
        .arg(&out_dir)
        .args(&flags);
    let out = tokio::task::spawn_blocking(move || export.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let messages: Vec<String> = stderr
        .lines()
        .map(|line| {
            let event: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(event["level"].is_string() && event["timestamp"].is_string());
            event["fields"]["message"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("export kicked off with GET")),
        "{stderr}"
    );
}

#[test]
fn demo_server_says_what_it_generates_and_what_to_run_next() {
    use std::io::BufRead;
    use std::process::Stdio;
    let keys = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["demo-server", "--listen", "127.0.0.1:0", "--patients", "5"])
        .arg("--keys-dir")
        .arg(keys.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut shown = String::new();
    while !shown.contains("key_file = ") {
        assert!(stdout.read_line(&mut shown).unwrap() > 0, "{shown}");
    }
    let line = |start: &str| {
        let found = shown.lines().find(|l| l.trim_start().starts_with(start));
        found
            .unwrap_or_else(|| panic!("no {start:?}: {shown}"))
            .trim_start()
    };
    assert!(line("fhirflight serve --server http://127.0.0.1:").ends_with(" --anonymous"));
    // The printed `sql` command and config snippet work as they are.
    let sql = line("fhirflight sql --server http://127.0.0.1:");
    let cache = keys.path().join("cache");
    let run = |command: &str| {
        let command = command.replacen("fhirflight", env!("CARGO_BIN_EXE_fhirflight"), 1);
        let out = Command::new("sh")
            .args(["-c", &command])
            .env("FHIRFLIGHT_CACHE_DIR", &cache)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(sql).contains("| gender "), "{sql}");
    let snippet: String = shown
        .lines()
        .skip_while(|l| l.trim() != "[server]")
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let config = keys.path().join("fhirflight.toml");
    std::fs::write(&config, &snippet).unwrap();
    let counted = run(&format!(
        "fhirflight --config '{}' sql 'SELECT count(*) AS n FROM Patient'",
        config.display()
    ));
    assert!(counted.contains("| 5 |"), "{snippet}\n{counted}");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("generating 5 patients (seed 1)...") && stderr.contains("generated in "),
        "{stderr}"
    );
}

/// The view a statement of the shell tests adds at run time.
const GENDERS_VIEW: &str = r#"SELECT * FROM fhir_add_view('fhir', '{"name": "genders", "resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}, {"name": "gender", "path": "gender"}]}]}');"#;

/// `fhirflight sql` over `folder` with `flags` and `stdin` piped in.
fn sql_with_stdin(folder: &Path, flags: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = sql_command(folder)
        .args(flags)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sql_runs_the_statements_of_stdin_in_one_session_and_stops_at_the_first_error() {
    let folder = tempfile::tempdir().unwrap();
    patients(folder.path());
    let input = format!(
        "{GENDERS_VIEW}\n\\d\n\\d genders\nSELECT id, gender FROM genders\n  ORDER BY id; SELECT 'second' AS s;\n\\d Condition\n\\d Nope\nSELECT 'not reached';\n"
    );
    let out = sql_with_stdin(folder.path(), &[], &input);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // The view added by the first statement is a table for the later ones.
    assert!(
        stdout.contains("| fhir          | fhir         | genders    | VIEW"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| fhir          | gender      | Utf8      | YES"),
        "{stdout}"
    );
    assert!(stdout.contains("| p1 | female |"), "{stdout}");
    assert!(stdout.contains("| second |"), "{stdout}");
    assert!(stdout.contains("Condition: not exported yet"), "{stdout}");
    assert!(!stdout.contains("not reached"), "{stdout}");
    assert!(
        stderr.contains("stopped at standard input, line 7: \\d Nope\nerror: table Nope not found"),
        "{stderr}"
    );
    assert!(
        !folder.path().join("cache").read_dir().unwrap().any(|d| {
            let dir = d.unwrap().path();
            dir.join("Condition").exists()
        }),
        "describing exports nothing"
    );
}

#[test]
fn sql_runs_repeated_c_and_f_files_in_order_and_names_the_failing_line() {
    let folder = tempfile::tempdir().unwrap();
    patients(folder.path());
    let out = sql_command(folder.path())
        .args(["-c", "SELECT count(*) AS n FROM Patient; SELECT 'two' AS t"])
        .args(["-c", "\\d Patient"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    let n = stdout.find("| 2 |").expect("the count");
    let two = stdout.find("| two |").expect("the second statement");
    let described = stdout
        .find("| birthDate ")
        .expect("the columns, once exported");
    assert!(n < two && two < described, "{stdout}");

    let file = folder.path().join("queries.sql");
    std::fs::write(
        &file,
        "-- a comment;\nSELECT 'a;b' AS x;\n\nSELECT nope\n  FROM Patient;\nSELECT 'not reached';\n",
    )
    .unwrap();
    let out = sql_command(folder.path())
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("| a;b |") && !stdout.contains("not reached"),
        "{stdout}"
    );
    let named = format!(
        "stopped at {}, line 4: SELECT nope …\nerror: ",
        file.display()
    );
    assert!(stderr.contains(&named), "{stderr}");
    assert!(stderr.contains("No field named nope"), "{stderr}");

    // An --output file holds one result: two statements are refused before any export.
    let out = sql_command(folder.path())
        .args(["--output", "x.csv", "-c", "SELECT 1; SELECT 2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--output holds the result of one statement"),
        "{stderr}"
    );
}

/// `fhirflight <args>` on a terminal (`script`) that a test types into and reads.
struct Terminal {
    child: std::process::Child,
    keys: std::process::ChildStdin,
    screen: std::sync::mpsc::Receiver<String>,
    /// Everything shown so far, and how much of it was waited for.
    shown: String,
    seen: usize,
}

impl Terminal {
    fn start(args: &[&str], env: &[(&str, &Path)]) -> Self {
        use std::io::Read as _;
        let mut child = script_command(args)
            .env("TERM", "xterm")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut terminal = child.stdout.take().unwrap();
        let (screen_tx, screen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = terminal.read(&mut buffer) {
                let _ = screen_tx.send(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
        });
        let keys = child.stdin.take().unwrap();
        Self {
            child,
            keys,
            screen,
            shown: String::new(),
            seen: 0,
        }
    }

    /// Waits until the terminal shows `text` after what was waited for before (the editor
    /// redraws a line, its prompt included, as keys come); returns the whole screen.
    fn wait_for(&mut self, text: &str) -> String {
        while !self.shown[self.seen..].contains(text) {
            let more = self.screen.recv_timeout(std::time::Duration::from_secs(60));
            let shown = &self.shown;
            self.shown
                .push_str(&more.unwrap_or_else(|_| panic!("waiting for {text:?}: {shown}")));
        }
        self.seen += self.shown[self.seen..].find(text).unwrap() + text.len();
        self.shown.clone()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write as _;
        self.keys.write_all(keys).unwrap();
    }

    /// Ctrl-D at the prompt: the shell ends with status 0.
    fn quit(mut self) -> String {
        self.type_keys(b"\x04");
        let status = self.child.wait().unwrap();
        // What the shell showed on its way out belongs to the screen (and to a failure's message).
        while let Ok(more) = self.screen.recv_timeout(std::time::Duration::from_secs(5)) {
            self.shown.push_str(&more);
        }
        assert!(status.success(), "{status}: {}", self.shown);
        self.shown
    }
}

#[test]
fn the_shell_on_a_terminal_completes_names_runs_a_statement_and_ends_with_ctrl_d() {
    if !script_available("the_shell_on_a_terminal_...") {
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    patients(folder.path());
    // A snapshot, so that Tab completes the columns of Patient.
    assert!(sql(folder.path(), "SELECT 1 FROM Patient").status.success());
    let history = folder.path().join("data").join("history");
    let (cache, data) = (folder.path().join("cache"), folder.path());
    let mut terminal = Terminal::start(
        &[
            "sql",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--folder",
            data.to_str().unwrap(),
        ],
        &[("FHIRFLIGHT_HISTORY", &history)],
    );
    terminal.wait_for("fhirflight> ");
    // Tab completes a column, then a table; the statement goes on on a second line.
    terminal.type_keys(b"SELECT birthD\t FROM Pat\t\n");
    terminal.wait_for("...> ");
    terminal.type_keys(b"WHERE id = 'p1';\n");
    terminal.wait_for("1 row, ");
    terminal.wait_for("fhirflight> ");
    let screen = terminal.quit();
    assert!(screen.contains("| 1970-01-01 |"), "{screen}");
    assert!(screen.contains("1 row, "), "{screen}");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT birthDate FROM Patient"), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&history).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "statements hold patient ids");
    }
}

#[test]
fn help_groups_the_options_and_shows_examples() {
    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["sql", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let headings = [
        "FHIR server:",
        "SMART Backend Services:",
        "Cache:",
        "Tables and exports:",
        "Output:",
        "Examples:",
    ];
    let at: Vec<usize> = headings
        .iter()
        .map(|h| {
            help.find(&format!("\n{h}\n"))
                .unwrap_or_else(|| panic!("{h}\n{help}"))
        })
        .collect();
    assert!(at.is_sorted(), "{help}");
    assert!(
        help.contains("  fhirflight sql --demo -f report.sql"),
        "{help}"
    );
}

#[test]
fn prefetch_exports_the_types_a_run_reads_in_one_export() {
    // The kick-offs of a run over a fresh cache, as their `_type`.
    let kickoffs = |prefetch: &[&str]| {
        let cache = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(["sql", "--demo", "--demo-patients", "5"])
            .args(prefetch)
            .args(["-c", "SELECT count(*) AS n FROM Patient"])
            .args(["-c", "SELECT count(*) AS n FROM Condition"])
            .args(["--log", "info", "--format", "csv", "--cache-dir"])
            .arg(cache.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("n\n5\nn\n"));
        let types = stderr
            .lines()
            .filter_map(|l| l.split("export kicked off").nth(1))
            .map(|l| {
                l.split("_type=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            });
        types.collect::<Vec<_>>()
    };
    assert_eq!(kickoffs(&[]), ["Patient", "Condition"]);
    assert_eq!(
        kickoffs(&["--prefetch", "Patient,Condition"]),
        ["Patient%2CCondition"]
    );
}

#[test]
fn c_and_f_run_in_command_line_order_in_one_session_where_statements_create_views() {
    let folder = tempfile::tempdir().unwrap();
    patients(folder.path());
    let scripts = tempfile::tempdir().unwrap();
    let file = scripts.path().join("count.sql");
    std::fs::write(&file, "SELECT count(*) AS women FROM WOMEN;\n").unwrap();
    let out = sql_command(folder.path())
        .args(["--quiet", "--format", "csv"])
        .args([
            "-c",
            "CREATE VIEW Women AS SELECT id FROM Patient WHERE gender = 'female'",
        ])
        .arg("-f")
        .arg(&file)
        .args(["-c", "DROP VIEW women"])
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    // The view answers the first file and is gone for the second.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "women\n1\n");
    let second = format!("stopped at {}, line 1: ", file.display());
    assert!(stderr.contains(&second), "{stderr}");
    assert!(
        stderr.contains("table 'fhir.fhir.women' not found"),
        "{stderr}"
    );

    // A view of the catalog cannot take a created table's name.
    let view = r#"{"resourceType":"ViewDefinition","name":"women","resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]}]}"#;
    let out = sql_command(folder.path())
        .args(["-c", "CREATE VIEW women AS SELECT 1 AS one"])
        .args([
            "-c",
            &format!("SELECT * FROM fhir_add_view('fhir', '{view}')"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is taken by a table a statement created"),
        "{stderr}"
    );

    // A resource type is no name a statement may take; --quiet leaves out the table's footer.
    let out = sql_command(folder.path())
        .args(["--quiet", "-c", "SELECT 1 AS one"])
        .args(["-c", "CREATE OR REPLACE VIEW patient AS SELECT 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| one |"));
    assert!(!stderr.contains("1 row"), "{stderr}");
    assert!(
        stderr.contains(
            "'Patient' is the resource type Patient, which a statement cannot create, replace or drop"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exports_of_every_catalog_have_a_progress_line() {
    const TEST: &str = "the_exports_of_every_catalog_have_a_progress_line";
    if !script_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = || fhirflight::demo::Faults {
        download_chunk_delay: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    };
    let (_first, flags) = demo_server_of_small_files(dir.path(), 8, slow()).await;
    // The second server is the catalog `hospital_b` of the config file.
    let second_dir = dir.path().join("b");
    std::fs::create_dir(&second_dir).unwrap();
    let (_second, second) = demo_server_of_small_files(&second_dir, 6, slow()).await;
    let config = dir.path().join("fhirflight.toml");
    std::fs::write(
        &config,
        format!(
            "[servers.hospital_b]\nurl = {:?}\nclient_id = {:?}\nkey_file = {:?}\n",
            second[1], second[3], second[5]
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let shown = tokio::task::spawn_blocking(move || {
        let query = "SELECT (SELECT count(*) FROM Patient) AS a, \
                     (SELECT count(*) FROM hospital_b.fhir.Patient) AS b";
        let mut args = vec!["sql", query, "--cache-dir", cache.to_str().unwrap()];
        args.extend(["--config", config.to_str().unwrap()]);
        args.extend(flags.iter().map(String::as_str));
        on_a_terminal(&args)
    })
    .await
    .unwrap();
    for catalog in ["fhir", "hospital_b"] {
        let line = format!("{catalog} Patient: downloading [");
        assert!(shown.contains(&line), "{line}: {shown:?}");
    }
    let result = shown.find("| a ").expect("the result");
    assert!(
        !shown[result..].contains(" Patient: "),
        "the lines end before the result: {shown:?}"
    );
    assert!(shown[result..].contains("| 8 | 6 |"), "{shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_the_shell_cancels_the_statement_and_the_export_runs_on_for_the_next() {
    if !script_available("ctrl_c_in_the_shell_cancels_the_statement_...") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The job stays in progress until the statement was cancelled: the Ctrl-C lands in the
    // statement however slowly this test reads the terminal.
    let stuck = fhirflight::demo::Faults {
        status_stuck: true,
        ..Default::default()
    };
    let (server, flags) = demo_server_of_small_files(dir.path(), 8, stuck).await;
    let (cache, history) = (dir.path().join("cache"), dir.path().join("history"));
    let mut terminal = tokio::task::spawn_blocking(move || {
        let mut args = vec!["sql", "--cache-dir", cache.to_str().unwrap()];
        args.extend(flags.iter().map(String::as_str));
        let mut terminal = Terminal::start(&args, &[("FHIRFLIGHT_HISTORY", &history)]);
        terminal.wait_for("fhirflight> ");
        terminal.type_keys(b"SELECT count(*) AS n FROM Patient;\n");
        terminal.wait_for("fhir Patient: waiting for the server");
        terminal.type_keys(b"\x03");
        terminal.wait_for("cancelled; an export it waited for runs on");
        terminal.wait_for("fhirflight> ");
        terminal
    })
    .await
    .unwrap();
    server.set_faults(Default::default());
    let shown = tokio::task::spawn_blocking(move || {
        terminal.type_keys(b"\\exports\n");
        terminal.wait_for("| Patient |");
        let listed = terminal.wait_for("fhirflight> ");
        let row = listed
            .lines()
            .rev()
            .find(|l| l.contains("| Patient |"))
            .unwrap();
        assert!(!row.contains("cancel") && !row.contains("fail"), "{row}");
        // The same statement again waits for the export that ran on.
        terminal.type_keys(b"SELECT count(*) AS n FROM Patient;\n");
        terminal.wait_for("1 row, ");
        terminal.wait_for("fhirflight> ");
        terminal.quit()
    })
    .await
    .unwrap();
    assert!(shown.contains("| 8 |"), "{shown}");
    assert_eq!(server.stats().kickoffs.len(), 1, "one export: {shown}");
}
