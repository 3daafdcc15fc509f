//! `fhirflight cache`: what the snapshot cache holds (`list`), what another engine reads for a
//! type (`path`), the exports a type's Delta table holds (`history`), and removing snapshots
//! (`clear`, `gc`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirflight::config::Config;
use fhirflight::size::{display, display_rounded};
use fhirflight::snapshot::{CachedSnapshot, CachedSource, CachedTable, clean_cache, list_cache};
use fhirflight::{Error, Result};

use crate::args::{
    CacheArgs, CacheClearArgs, CacheCommand, CacheHistoryArgs, CacheListArgs, CachePathArgs,
    CacheTableArgs, ListFormat, PathFormat,
};

pub(crate) fn run(args: CacheArgs, config: &Config) -> Result<()> {
    let command = args.command.unwrap_or(CacheCommand::List(args.list));
    match command.or_config(config)? {
        CacheCommand::List(args) => list(args),
        CacheCommand::Path(args) => path(args),
        CacheCommand::History(args) => history(args),
        CacheCommand::Clear(args) => clear(args),
        CacheCommand::Gc(args) => {
            let root = args.cache.root();
            let removed = clean_cache(&root, args.staging_older_than, args.retention)?;
            print_removed(&removed, "folders removed");
            Ok(())
        }
    }
}

fn list(args: CacheListArgs) -> Result<()> {
    let root = args.cache.root();
    let sources = list_cache(&root)?;
    if let ListFormat::Json = args.format {
        let json = serde_json::to_string_pretty(&sources)
            .map_err(|e| Error::snapshot_with("cannot serialise the listing", e))?;
        println!("{json}");
        return Ok(());
    }
    if sources.is_empty() {
        println!("no snapshots in {}", root.display());
        return Ok(());
    }
    for source in &sources {
        println!("{}  ({})", source.source, source.dir.display());
        if source.snapshots.is_empty() {
            println!("  no snapshots");
            continue;
        }
        let width = source.snapshots.iter().map(|s| s.name.len()).max();
        let width = width.unwrap_or(0).max("TYPE".len());
        println!(
            "  {:<width$}  {:>10}  {:>10}  {:>5}  TRANSACTION TIME",
            "TYPE", "ROWS", "SIZE", "AGE"
        );
        for s in &source.snapshots {
            println!(
                "  {:<width$}  {:>10}  {:>10}  {:>5}  {}",
                s.name,
                s.resources,
                display_rounded(s.bytes()),
                age(s.age()),
                s.transaction_time
            );
        }
    }
    println!(
        "another engine reads a type as a Delta table: fhirflight cache path [SOURCE] TYPE; its exports: fhirflight cache history [SOURCE] TYPE"
    );
    Ok(())
}

fn path(args: CachePathArgs) -> Result<()> {
    let sources = list_cache(&args.table.cache.root())?;
    let (source, snapshot, table) = find_table(&sources, &args.table)?;
    match args.format {
        PathFormat::Delta => match &table.delta {
            Some(delta) => match delta.to_file_path() {
                // Without the URL's closing `/`, as a folder path is written.
                Ok(path) => println!("{}", path.components().collect::<PathBuf>().display()),
                Err(()) => println!("{delta}"),
            },
            None => {
                return Err(Error::config(format!(
                    "the {} table of {} for {} is no Delta table (written by an earlier version of fhirflight, or refused: `cache list --format json` shows its warnings); its next export makes one, or use --format lines",
                    args.table.mode, snapshot.name, source.source
                )));
            }
        },
        PathFormat::Lines => {
            for file in &table.files {
                println!("{}", file.display());
            }
        }
        PathFormat::Duckdb => {
            let quote = |p: &PathBuf| format!("'{}'", p.display().to_string().replace('\'', "''"));
            let files: Vec<String> = table.files.iter().map(quote).collect();
            // A table converted while its export downloaded is parts of different columns.
            println!(
                "SELECT * FROM read_parquet([{}], union_by_name = true);",
                files.join(", ")
            );
        }
    }
    Ok(())
}

fn history(args: CacheHistoryArgs) -> Result<()> {
    let sources = list_cache(&args.table.cache.root())?;
    let (_, snapshot, table) = find_table(&sources, &args.table)?;
    let Some(table) = table.delta.clone() else {
        let mode = &args.table.mode;
        println!(
            "the {mode} table of {} is no Delta table yet",
            snapshot.name
        );
        return Ok(());
    };
    let versions = fhirflight::snapshot::history(&table)?;
    if let ListFormat::Json = args.format {
        let json = serde_json::to_string_pretty(&versions)
            .map_err(|e| Error::snapshot_with("cannot serialise the history", e))?;
        println!("{json}");
        return Ok(());
    }
    println!("{table}");
    println!(
        "  {:>7}  {:<24}  {:>10}  {:<24}  SNAPSHOT",
        "VERSION", "COMMITTED", "RESOURCES", "TRANSACTION TIME"
    );
    for v in &versions {
        let field = |key: &str| v.export.get(key).and_then(|x| x.as_str()).unwrap_or("");
        let committed = fhirflight::snapshot::rfc3339(
            std::time::UNIX_EPOCH + Duration::from_millis(v.timestamp_ms.max(0) as u64),
        );
        let resources = v.export.get("resources").and_then(|x| x.as_u64());
        println!(
            "  {:>7}  {:<24}  {:>10}  {:<24}  {}",
            v.version,
            committed,
            resources.map_or_else(String::new, |n| n.to_string()),
            field("transactionTime"),
            field("snapshot"),
        );
    }
    println!(
        "an earlier version reads while its files are kept: SELECT * FROM fhir_snapshot('<catalog>', '{}', <version>)",
        snapshot.resource_type
    );
    Ok(())
}

/// The source and current snapshot `args` names, and the snapshot's table of `args.mode` (a
/// mode it has, so a folder of the store and nothing else).
fn find_table<'a>(
    sources: &'a [CachedSource],
    args: &CacheTableArgs,
) -> Result<(&'a CachedSource, &'a CachedSnapshot, &'a CachedTable)> {
    let (source, snapshot) = find_snapshot(sources, &args.names, &args.cache.root())?;
    let mode = &args.mode;
    let table = snapshot.tables.get(mode).ok_or_else(|| {
        let modes: Vec<&str> = snapshot.tables.keys().map(String::as_str).collect();
        Error::config(format!(
            "the snapshot of {} for {} has no {mode} table; it has: {}",
            snapshot.name,
            source.source,
            modes.join(", ")
        ))
    })?;
    Ok((source, snapshot, table))
}

/// The source and current snapshot `names` point at: `[TYPE]` (when one source holds it) or
/// `[SOURCE, TYPE]`.
fn find_snapshot<'a>(
    sources: &'a [CachedSource],
    names: &[String],
    root: &Path,
) -> Result<(&'a CachedSource, &'a CachedSnapshot)> {
    let (source, name) = match names {
        [source, name] => (named_source(sources, source, root)?, name),
        [name] => {
            let holding: Vec<&CachedSource> = sources
                .iter()
                .filter(|s| s.snapshot(name).is_some())
                .collect();
            match holding.as_slice() {
                [source] => (*source, name),
                [] => {
                    return Err(Error::config(format!(
                        "no snapshot of {name} in {}; {}",
                        root.display(),
                        cached(sources)
                    )));
                }
                _ => {
                    return Err(Error::config(format!(
                        "{name} is cached for several sources, name one (fhirflight cache path SOURCE {name}); {}",
                        cached(holding.iter().copied())
                    )));
                }
            }
        }
        _ => unreachable!("clap takes one or two names"),
    };
    let snapshot = source.snapshot(name).ok_or_else(|| {
        Error::config(format!(
            "no snapshot of {name} for {}; it has: {}",
            source.source,
            names_of(&source.snapshots)
        ))
    })?;
    Ok((source, snapshot))
}

fn clear(args: CacheClearArgs) -> Result<()> {
    let root = args.cache.root();
    let sources = list_cache(&root)?;
    // A lone name is a source when one is named so, else a type of every source.
    let (selected, resource_type): (Vec<&CachedSource>, Option<&str>) = match args.names.as_slice()
    {
        [] => (sources.iter().collect(), None),
        [source, name] => (vec![named_source(&sources, source, &root)?], Some(name)),
        [name] => match sources.iter().find(|s| s.is_named(name)) {
            Some(source) => (vec![source], None),
            None if fhirflight::r4::check_type_name(name).is_ok() => {
                (sources.iter().collect(), Some(name))
            }
            None => return Err(no_source(name, &sources, &root)),
        },
        _ => unreachable!("clap takes at most two names"),
    };
    let mut removed = Vec::new();
    for source in selected {
        let cleared = source.store().clear(resource_type)?;
        for kept in &cleared.kept {
            println!(
                "kept {}: a running process reads it (`fhirflight cache gc` removes it once unread)",
                kept.display()
            );
        }
        removed.extend(cleared.removed);
    }
    print_removed(&removed, "removed");
    Ok(())
}

/// Prints each path removed with its bytes, then the totals (`<what>: <count>, freed: <bytes>`).
fn print_removed(removed: &[(PathBuf, u64)], what: &str) {
    for (path, bytes) in removed {
        println!("removed {} ({})", path.display(), display(*bytes));
    }
    let total = removed.iter().map(|(_, bytes)| bytes).sum();
    println!("{what}: {}, freed: {}", removed.len(), display(total));
}

/// The source of `sources` named `text` ([`CachedSource::is_named`]).
fn named_source<'a>(
    sources: &'a [CachedSource],
    text: &str,
    root: &Path,
) -> Result<&'a CachedSource> {
    sources
        .iter()
        .find(|s| s.is_named(text))
        .ok_or_else(|| no_source(text, sources, root))
}

fn no_source(text: &str, sources: &[CachedSource], root: &Path) -> Error {
    Error::config(format!(
        "no source {text} in {}; {}",
        root.display(),
        cached(sources)
    ))
}

/// What `sources` hold, for errors: `cached: <source> (<folder>): <names>; ...`.
fn cached<'a>(sources: impl IntoIterator<Item = &'a CachedSource>) -> String {
    let each: Vec<String> = sources
        .into_iter()
        .map(|s| {
            let key = s.dir.file_name().unwrap_or_default().to_string_lossy();
            format!("{} ({key}): {}", s.source, names_of(&s.snapshots))
        })
        .collect();
    match each.is_empty() {
        true => "the cache is empty".to_owned(),
        false => format!("cached: {}", each.join("; ")),
    }
}

fn names_of(snapshots: &[CachedSnapshot]) -> String {
    match snapshots.is_empty() {
        true => "no snapshots".to_owned(),
        false => snapshots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A snapshot's age in its largest whole unit: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}
