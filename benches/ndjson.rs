//! Converts `<Type>.ndjson` files to Arrow (schema inference, then decoding, both on all cores)
//! and prints one line per type in the format of `../shared/bench/harness.py`, so that
//! `benches/ndjson.sh` can set it beside the baselines:
//!
//! `tool type bytes resources seconds_median MB/s res/s columns peak_rss_MB extra | rep_seconds`
//!
//! Usage: `cargo bench --bench ndjson -- DATA_DIR [--types T1,T2] [--reps N] [--nested]` (the
//! script runs the built binary with the same arguments). Every repetition runs in
//! a fresh process (so peak RSS is per type); the time covers reading the file, inference and
//! decoding into record batches (which are then dropped).
//!
//! Beside each type it prints the JSON-parsing floor, `serde_floor`: the same bytes read and every
//! line parsed by serde_json into `IgnoredAny` (validation only, nothing built), on all cores.
//! `time_vs_floor` in fhirflight's line is its time over the floor's: the price of the two passes
//! (inference, then decoding) and of building the columns.

mod driver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use fhirflight::ndjson::{DecodeOptions, SchemaInference, TableMode, decode_reader, infer_reader};
use serde::de::IgnoredAny;

fn main() -> fhirflight::Result<()> {
    let driver = driver::Args::from_env();
    let args = driver.all();
    let nested = args.iter().any(|a| a == "--nested");
    let mode = if nested {
        TableMode::Nested
    } else {
        TableMode::default()
    };
    match args.first().map(String::as_str) {
        Some("--worker") => return worker(Path::new(&args[1]), &args[2], &mode),
        Some("--floor") => return floor(Path::new(&args[1])),
        _ => {}
    }
    let dir = PathBuf::from(args.first().expect(
        "usage: cargo bench --bench ndjson -- DATA_DIR [--types T1,T2] [--reps N] [--nested]",
    ));
    let types: Option<Vec<String>> = driver
        .flag("--types")
        .map(|t| t.split(',').map(str::to_owned).collect());
    let reps = driver.number("--reps", 3);
    let tool = if nested {
        "fhirflight_nested"
    } else {
        "fhirflight_flat"
    };

    let mut files: Vec<(u64, PathBuf, String)> = std::fs::read_dir(&dir)
        .map_err(|e| fhirflight::Error::io(&dir, e))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let rtype = path
                .file_name()?
                .to_str()?
                .strip_suffix(".ndjson")?
                .to_owned();
            let wanted = types.as_ref().is_none_or(|t| t.contains(&rtype));
            wanted.then(|| (path.metadata().map_or(0, |m| m.len()), path, rtype))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("# {tool} data={} reps={reps} nproc={cores}", dir.display());
    println!(
        "# tool type bytes resources seconds_median MB/s res/s columns peak_rss_MB extra | rep_seconds"
    );
    for (size, path, rtype) in files {
        let run = |kind: &str, label: &str| -> fhirflight::Result<Option<Vec<Vec<f64>>>> {
            let mut runs = Vec::new();
            for _ in 0..reps {
                let out = Command::new(std::env::current_exe().expect("own path"))
                    .args([kind, path.to_str().expect("UTF-8 path"), &rtype])
                    .args(nested.then_some("--nested"))
                    .output()
                    .map_err(|e| fhirflight::Error::io(&path, e))?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("@@RESULT ")) else {
                    println!(
                        "{label} {rtype} {size} - FAILED: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    return Ok(None);
                };
                runs.push(
                    line.split(' ')
                        .map(|x| x.parse().expect("worker numbers"))
                        .collect(),
                );
            }
            Ok(Some(runs))
        };
        let Some(runs) = run("--worker", tool)? else {
            continue;
        };
        let Some(floor_runs) = run("--floor", "serde_floor")? else {
            continue;
        };
        let median = |runs: &[Vec<f64>], i: usize| {
            let mut v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let line = |tool: &str, runs: &[Vec<f64>], extra: &str| {
            let (seconds, resources, columns, rss) =
                (median(runs, 0), runs[0][1], runs[0][2], median(runs, 3));
            let reps: Vec<String> = runs.iter().map(|r| format!("{:.3}", r[0])).collect();
            println!(
                "{tool} {rtype} {size} {resources} {seconds:.3} {:.2} {:.0} {columns} {rss:.0} {extra} | {}",
                size as f64 / 1e6 / seconds,
                resources / seconds,
                reps.join(",")
            );
        };
        line("serde_floor", &floor_runs, "ignored_any");
        let extra = format!(
            "infer_s={:.3} time_vs_floor={:.2}",
            median(&runs, 4),
            median(&runs, 0) / median(&floor_runs, 0)
        );
        line(tool, &runs, &extra);
    }
    Ok(())
}

/// One conversion; prints `@@RESULT seconds resources columns peak_rss_mb infer_seconds`.
fn worker(path: &Path, rtype: &str, mode: &TableMode) -> fhirflight::Result<()> {
    let open = || std::fs::File::open(path).map_err(|e| fhirflight::Error::io(path, e));
    let options = DecodeOptions::default()
        .with_resource_type(rtype)
        .with_source(path.display().to_string());
    let start = Instant::now();
    let mut inference = SchemaInference::with_options(mode, options.clone());
    infer_reader(open()?, &mut inference)?;
    let infer = start.elapsed().as_secs_f64();
    let schema = inference.schema();
    let summary = decode_reader(
        open()?,
        std::sync::Arc::clone(&schema),
        mode,
        options,
        |batch| {
            std::hint::black_box(batch);
            Ok::<_, fhirflight::Error>(())
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let columns = schema.fields().len();
    println!(
        "@@RESULT {seconds} {} {columns} {} {infer}",
        summary.rows,
        peak_rss_mb()
    );
    Ok(())
}

/// The parsing floor: the file read whole and each line parsed into `IgnoredAny` on all cores.
/// Prints `@@RESULT seconds lines 0 peak_rss_mb 0`.
fn floor(path: &Path) -> fhirflight::Result<()> {
    let start = Instant::now();
    let bytes = std::fs::read(path).map_err(|e| fhirflight::Error::io(path, e))?;
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    // Cut at line ends into one piece per core.
    let mut pieces = Vec::new();
    let mut rest = &bytes[..];
    for i in (1..=workers).rev() {
        let at = rest.len() / i;
        let cut = memchr::memchr(b'\n', &rest[at..]).map_or(rest.len(), |n| at + n + 1);
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    let lines: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .map(|piece| {
                scope.spawn(move || {
                    piece
                        .split(|&b| b == b'\n')
                        .filter(|line| !line.is_empty())
                        .map(|line| {
                            serde_json::from_slice::<IgnoredAny>(line).expect("valid JSON");
                        })
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum()
    });
    let seconds = start.elapsed().as_secs_f64();
    println!("@@RESULT {seconds} {lines} 0 {} 0", peak_rss_mb());
    Ok(())
}

/// This process's peak resident set, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}
