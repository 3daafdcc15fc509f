//! Delta tables on an S3 endpoint: moto's server on 127.0.0.1 (`tests/s3_server.py`, started by
//! each test with the Python of `crate::python`), which honours conditional writes (checked
//! first: without them the concurrency below would prove nothing). Processes with caches of
//! their own stand for machines sharing the tables: exports, an incremental refresh, concurrent
//! refreshes and processes killed mid-commit, each leaving a table whose latest version reads.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::TryStreamExt as _;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

const BUCKET: &str = "fhirflight";
const TABLES: &str = "s3://fhirflight/tables";

/// The S3 endpoint of one test; stopped when dropped.
struct S3 {
    server: Child,
    endpoint: String,
}

impl S3 {
    fn start() -> Option<Self> {
        let python = crate::python()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_server.py");
        let mut server = Command::new(python)
            .arg(script)
            .arg(BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        Some(Self { server, endpoint })
    }

    /// `fhirflight ARGS` with the endpoint and credentials in the environment, as the AWS
    /// tools take them.
    fn fhirflight(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fhirflight"));
        command
            .args(args)
            .env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
        command
    }

    /// `fhirflight sql --demo` over the cache `cache` with the tables on S3: the JSON rows.
    fn sql(&self, cache: &Path, statement: &str) -> Vec<serde_json::Value> {
        let out = self.sql_command(cache, statement).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{statement}: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn sql_command(&self, cache: &Path, statement: &str) -> Command {
        self.sql_command_with(cache, &[], statement)
    }

    /// [`S3::sql_command`] with more flags.
    fn sql_command_with(&self, cache: &Path, flags: &[&str], statement: &str) -> Command {
        let cache = cache.to_str().unwrap();
        let args = ["sql", "--demo", "--demo-patients", "20", "--format", "json"];
        let mut command = self.fhirflight(&args);
        command
            .args(["--cache-dir", cache, "--table-location", TABLES])
            .args(flags)
            .arg(statement)
            .stderr(Stdio::piped());
        command
    }

    /// The versions of Patient's table, newest first, as `cache history --format json` lists
    /// them from `cache`.
    fn history(&self, cache: &Path) -> Vec<serde_json::Value> {
        let cache = cache.to_str().unwrap();
        let args = ["cache", "history", "Patient", "--format", "json"];
        let out = self
            .fhirflight(&args)
            .args(["--cache-dir", cache])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The rows of Patient's table at its latest version, read from S3 (`fhir_snapshot`).
    fn latest_rows(&self, cache: &Path) -> u64 {
        let latest = self.history(cache)[0]["version"].as_u64().unwrap();
        let count = format!("SELECT count(*) AS n FROM fhir_snapshot('fhir', 'Patient', {latest})");
        self.sql(cache, &count)[0]["n"].as_u64().unwrap()
    }
}

impl S3 {
    /// The endpoint's bucket, as object_store reaches it.
    fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .unwrap()
    }

    /// The claims of exports at the tables' location (`tables/<source>/staging/<job>/claim.*`),
    /// as JSON.
    fn claims(&self) -> Vec<serde_json::Value> {
        let store = self.store();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let listed: Vec<_> = store
                .list(Some(&"tables".into()))
                .try_collect()
                .await
                .unwrap();
            let mut claims = Vec::new();
            for o in listed {
                let name = o.location.filename().unwrap_or_default();
                if o.location.as_ref().contains("/staging/") && name.starts_with("claim.") {
                    let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
                    claims.push(serde_json::from_slice(&bytes).unwrap());
                }
            }
            claims
        })
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

macro_rules! s3_or_skip {
    () => {
        match S3::start() {
            Some(s3) => s3,
            None => {
                eprintln!("skipped: no Python with moto (FHIRFLIGHT_PYTHON)");
                return;
            }
        }
    };
}

#[tokio::test]
async fn the_endpoint_refuses_a_second_conditional_write_of_one_key() {
    let s3 = s3_or_skip!();
    let store = s3.store();
    let create = || PutOptions::from(PutMode::Create);
    let key = object_store::path::Path::from("_delta_log/00000000000000000000.json");
    store
        .put_opts(&key, PutPayload::from_static(b"first"), create())
        .await
        .unwrap();
    let second = store
        .put_opts(&key, PutPayload::from_static(b"second"), create())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "{second:?}"
    );
    let kept = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&kept[..], b"first");
}

#[test]
fn machines_sharing_tables_on_s3_export_refresh_race_and_die_mid_commit() {
    let s3 = s3_or_skip!();
    let caches = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let [a, b, c] = [0, 1, 2].map(|n| caches[n].path());

    // An export: its table on S3, read there.
    assert_eq!(s3.sql(a, "SELECT count(*) AS n FROM Patient")[0]["n"], 20);
    let history = s3.history(a);
    assert_eq!(history.len(), 1);
    let listing = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["cache", "list", "--format", "json", "--cache-dir"])
        .arg(a)
        .output()
        .unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let delta = listing[0]["snapshots"][0]["tables"]["flattened"]["delta"].clone();
    assert!(
        delta
            .as_str()
            .unwrap()
            .starts_with("s3://fhirflight/tables/demo_seed_42_patients_20-"),
        "{delta}"
    );
    assert_eq!(s3.latest_rows(a), 20);

    // An incremental refresh is the next version, with what it merged: a merge that keeps the
    // files on S3 as they are.
    let refreshed = s3.sql(a, "SELECT changed FROM fhir_refresh('fhir', 'Patient')");
    assert_eq!(
        refreshed[0]["changed"], 0,
        "nothing changed on the demo server"
    );
    let history = s3.history(a);
    assert_eq!(history.len(), 2);
    assert!(
        history[0]["export"]["incremental"].is_object(),
        "{history:?}"
    );
    assert_eq!(history[0]["operation"], "MERGE");
    assert_eq!(s3.latest_rows(a), 20);

    // Three machines commit at once: each export becomes a version, a loser's after the winner's.
    // Their requests differ (the same one would be exported by one machine at a time, the
    // others waiting for its claim): an incremental refresh, a full one, and one with another type.
    let racing: Vec<Child> = [(a, "Patient"), (b, "Patient"), (c, "Patient,Condition")]
        .iter()
        .map(|(cache, types)| {
            let refresh = format!("SELECT snapshot FROM fhir_refresh('fhir', '{types}')");
            s3.sql_command(cache, &refresh)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in racing {
        assert!(child.wait().unwrap().success());
    }
    let history = s3.history(b);
    let versions: Vec<u64> = history
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1, 0]);
    let mut snapshots: Vec<&str> = history
        .iter()
        .map(|v| v["export"]["snapshot"].as_str().unwrap())
        .collect();
    snapshots.dedup();
    assert_eq!(snapshots.len(), 5, "each version is an export of its own");
    // Each request was claimed on S3 by the machine exporting it, and released once committed.
    let claims = s3.claims();
    assert!(claims.len() >= 3, "{claims:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let now_ms = now.unwrap().as_millis() as u64;
    assert!(
        claims
            .iter()
            .all(|c| c["expires_unix_ms"].as_u64().unwrap() <= now_ms),
        "{claims:?}"
    );
    assert_eq!(s3.latest_rows(b), 20);

    // Killed at any moment of a refresh (downloads, conversion, upload, commit): the table's
    // latest version still reads whole, and the next refresh commits.
    for delay in [100, 400, 800, 1200] {
        let refresh = "SELECT snapshot FROM fhir_refresh('fhir', 'Patient')";
        let mut child = s3
            .sql_command(a, refresh)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(s3.latest_rows(b), 20, "killed after {delay} ms");
    }
    let before = s3.history(b).len();
    s3.sql(a, "SELECT snapshot FROM fhir_refresh('fhir', 'Patient')");
    assert_eq!(s3.history(b).len(), before + 1);
    assert_eq!(s3.latest_rows(a), 20);

    // Vacuum on S3 (superseded versions, then uploads no version names a week old): the
    // latest version still reads whole.
    let gc = s3
        .fhirflight(&["cache", "gc", "--cache-dir", a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_eq!(s3.latest_rows(b), 20);

    // A machine whose cache is on S3 (its working copy in its user cache folder) adopts the
    // latest snapshot there, raw files too (the nested table is made from them), instead of
    // exporting: it holds the snapshot the latest version names.
    let d = tempfile::tempdir().unwrap();
    // (The versions after it are vacuum's.)
    let history = s3.history(b);
    let exported = history.iter().find(|v| v["export"].is_object()).unwrap();
    let latest = exported["export"]["snapshot"].clone();
    let home = "s3://fhirflight/tables";
    let args = ["sql", "--demo", "--demo-patients", "20", "--format", "json"];
    let query = "SELECT count(*) AS n FROM Patient WHERE gender IS NOT NULL";
    for mode in [&[][..], &["--nested"][..]] {
        let out = s3
            .fhirflight(&args)
            .args(mode)
            .args(["--cache-dir", home, query])
            .env("XDG_CACHE_HOME", d.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows[0]["n"], 20, "{mode:?}");
    }
    let listing = s3
        .fhirflight(&["cache", "list", "--format", "json", "--cache-dir", home])
        .env("XDG_CACHE_HOME", d.path())
        .output()
        .unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let adopted = &listing[0]["snapshots"][0];
    assert_eq!(adopted["id"], latest, "{listing}");
    let tables = adopted["tables"].as_object().unwrap();
    assert_eq!(tables.keys().collect::<Vec<_>>(), ["flattened", "nested"]);
}

#[test]
fn an_upload_that_fails_leaves_the_table_unpublished_and_the_query_answered() {
    let s3 = s3_or_skip!();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let args = ["sql", "--demo", "--demo-patients", "20", "--format", "json"];
    let out = s3
        .fhirflight(&args)
        .args([
            "--cache-dir",
            cache,
            "--table-location",
            "s3://no-such-bucket/fhir",
        ])
        .arg("SELECT count(*) AS n FROM Patient")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["n"], 20);
    assert!(
        stderr.contains("uploading to s3://no-such-bucket/fhir/")
            && stderr.contains("/part-0.parquet: ")
            && stderr.contains("NoSuchBucket"),
        "{stderr}"
    );
    let history = ["cache", "history", "Patient", "--cache-dir", cache];
    let out = s3.fhirflight(&history).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no Delta table yet"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A process of the test, killed when dropped, and what it announced on its first line.
struct Process {
    child: Child,
    announced: String,
}

impl Process {
    /// Starts `command` and reads its first line, `prefix` and what it announces.
    fn start(mut command: Command, prefix: &str) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let announced = line.trim().strip_prefix(prefix).unwrap_or_else(|| {
            panic!("{prefix}...: {line}");
        });
        Self {
            announced: announced.to_owned(),
            child,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// JSON rows as sorted lines.
fn sorted(rows: Vec<serde_json::Value>) -> Vec<String> {
    let mut rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    rows.sort();
    rows
}

/// A scheduler and two executors, each a `fhirflight cluster` process on 127.0.0.1, with the S3
/// endpoint's credentials; a `fhirflight sql --cluster` coordinator and a `fhirflight sql` of
/// one process, each with a cache of its own, sharing the tables on S3: every statement answers
/// the same; the executors read the snapshots on S3; an executor killed during a statement
/// gives the right answer or an error that says so, and the next statement runs on the other.
#[test]
fn a_cluster_of_processes_reads_the_tables_on_s3_and_answers_as_one_process() {
    let s3 = s3_or_skip!();
    let mut scheduler = s3.fhirflight(&["cluster", "scheduler", "--listen", "127.0.0.1:0"]);
    scheduler.args(["--executor-timeout", "4s"]);
    let scheduler = Process::start(scheduler, "scheduler listening on ");
    let url = scheduler.announced.clone();
    let mut executors: Vec<Process> = (0..2)
        .map(|_| {
            let mut command = s3.fhirflight(&["cluster", "executor", "--scheduler", &url]);
            command.args(["--listen", "127.0.0.1:0", "--task-slots", "2"]);
            Process::start(command, "executor listening on ")
        })
        .collect();
    let views = tempfile::tempdir().unwrap();
    let view = serde_json::json!({
        "resourceType": "ViewDefinition", "name": "patient_names", "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family", "type": "string"}]}
        ]
    });
    std::fs::write(views.path().join("patient_names.json"), view.to_string()).unwrap();
    let views = views.path().to_str().unwrap();
    let (one, coordinator) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let run = |cache: &Path, flags: &[&str], statement: &str| {
        let out = s3
            .sql_command_with(cache, flags, statement)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.success() {
            true => Ok(serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()),
            false => Err(stderr),
        }
    };
    let on_cluster = ["--views", views, "--cluster", &url];
    for statement in [
        "SELECT count(*) AS n FROM Patient",
        "SELECT gender, count(*) AS n FROM Patient GROUP BY gender",
        "SELECT p.gender, count(*) AS n FROM Patient p \
         JOIN Condition c ON c.subject_reference = concat('Patient/', p.id) GROUP BY p.gender",
        "SELECT count(*) AS n FROM Observation WHERE code_coding_0_code = '8867-4'",
        "SELECT family, count(*) AS n FROM patient_names GROUP BY family",
        "SELECT id, birthDate FROM Patient ORDER BY birthDate DESC, id LIMIT 3",
    ] {
        let expected = sorted(run(one.path(), &["--views", views], statement).unwrap());
        assert!(!expected.is_empty(), "{statement}");
        let clustered = run(coordinator.path(), &on_cluster, statement);
        assert_eq!(sorted(clustered.unwrap()), expected, "{statement}");
    }
    // The coordinator adopted the snapshots the other process published; the executors read
    // them on S3.
    let plan = |statement: &str| -> String {
        let rows = run(
            coordinator.path(),
            &on_cluster,
            &format!("EXPLAIN {statement}"),
        );
        rows.unwrap()
            .iter()
            .map(|r| format!("{}\n", r["plan"]))
            .collect()
    };
    let by_gender = plan("SELECT gender, count(*) FROM Patient GROUP BY gender");
    let scheduler = format!("ClusterExec: scheduler=http://{}", &url[5..]);
    assert!(by_gender.contains(&scheduler), "{by_gender}");
    assert!(
        by_gender.contains("tables/demo_seed_42_patients_20-"),
        "{by_gender}"
    );
    // The view's Parquet copy too, in the view's Delta table there.
    let by_family = plan("SELECT family, count(*) FROM patient_names GROUP BY family");
    assert!(by_family.contains(&scheduler), "{by_family}");
    let copy =
        regex::Regex::new(r"tables/demo_seed_42_patients_20-\w+/Patient/views/patient_names-")
            .unwrap();
    assert!(copy.is_match(&by_family), "{by_family}");

    // An incremental refresh runs in the coordinator; the executors read the merged snapshot.
    let refresh = "SELECT changed FROM fhir_refresh('fhir', 'Patient')";
    assert_eq!(
        run(coordinator.path(), &on_cluster, refresh).unwrap()[0]["changed"],
        0
    );
    let genders = "SELECT gender, count(*) AS n FROM Patient GROUP BY gender";
    let expected = sorted(run(one.path(), &[], genders).unwrap());
    assert_eq!(
        sorted(run(coordinator.path(), &on_cluster, genders).unwrap()),
        expected
    );

    // An executor killed during a statement (half way through the time the statement took
    // with both): the right answer, or an error saying so.
    let heavy = "SELECT count(*) AS n FROM Observation a \
                 JOIN Observation b ON a.subject_reference = b.subject_reference \
                 JOIN Observation c ON c.subject_reference = b.subject_reference";
    let expected = run(one.path(), &[], heavy).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        run(coordinator.path(), &on_cluster, heavy).unwrap(),
        expected
    );
    let took = started.elapsed();
    let statement = s3
        .sql_command_with(coordinator.path(), &on_cluster, heavy)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(took / 2);
    executors[0].kill();
    let out = statement.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => {
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(rows, expected);
        }
        false => assert!(
            stderr.contains(&format!("the cluster at http://{}", &url[5..])),
            "{stderr}"
        ),
    }
    // The next statement runs on the executor left. (A bare count(*) would be answered from the
    // snapshot's row count by the coordinator.)
    let count = "SELECT count(*) AS n FROM Patient WHERE gender IS NOT NULL";
    assert_eq!(
        run(coordinator.path(), &on_cluster, count).unwrap()[0]["n"],
        20
    );
}

/// `fhirflight cluster export` with a scheduler and two executor processes: the executors fetch
/// and convert the export's files straight to S3, the coordinator commits, and another machine
/// reads the snapshots there as a process that exported them itself answers.
#[test]
fn an_export_converted_by_executor_processes_is_read_from_s3_by_another_machine() {
    let s3 = s3_or_skip!();
    let scheduler = s3.fhirflight(&["cluster", "scheduler", "--listen", "127.0.0.1:0"]);
    let scheduler = Process::start(scheduler, "scheduler listening on ");
    let url = scheduler.announced.clone();
    let _executors: Vec<Process> = (0..2)
        .map(|_| {
            let mut command = s3.fhirflight(&["cluster", "executor", "--scheduler", &url]);
            command.args(["--listen", "127.0.0.1:0"]);
            Process::start(command, "executor listening on ")
        })
        .collect();
    // A population of its own: no other test's snapshots at the location.
    let demo = ["--demo", "--demo-patients", "12"];
    let (coordinator, other, alone) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let cache = |dir: &tempfile::TempDir| dir.path().to_str().unwrap().to_owned();
    let out = s3
        .fhirflight(&[
            "cluster",
            "export",
            "--cluster",
            &url,
            "--types",
            "Patient,Condition",
        ])
        .args(demo)
        .args([
            "--cache-dir",
            &cache(&coordinator),
            "--table-location",
            TABLES,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("Patient: 12 resources in 1 files")
            && stdout.contains(
                "converted on the cluster -> s3://fhirflight/tables/demo_seed_42_patients_12-"
            ),
        "{stdout}"
    );
    let held = crate::cluster::files_ending(coordinator.path(), &[".parquet", ".ndjson"]);
    assert!(held.is_empty(), "{held:?}");
    let sql = |cache: String, shared: bool, statement: &str| {
        let mut command = s3.fhirflight(&["sql", "--format", "json"]);
        command.args(demo).args(["--cache-dir", &cache]);
        if shared {
            command.args(["--table-location", TABLES]);
        }
        let out = command.arg(statement).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        sorted(serde_json::from_slice(&out.stdout).unwrap())
    };
    for statement in [
        "SELECT gender, count(*) AS n FROM Patient GROUP BY gender",
        "SELECT p.gender, count(*) AS n FROM Patient p \
         JOIN Condition c ON c.subject_reference = concat('Patient/', p.id) GROUP BY p.gender",
        "SELECT id, birthDate FROM Patient ORDER BY birthDate DESC, id LIMIT 3",
    ] {
        assert_eq!(
            sql(cache(&other), true, statement),
            sql(cache(&alone), false, statement),
            "{statement}"
        );
    }
}
