//! The files of an export as its manifest pages arrive: partial manifests while the export
//! runs, the complete manifest, its `next` pages. Each file is taken once (by URL), checked,
//! given its name in the folder and handed to the downloads at once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, watch};
use url::Url;

use super::download::Downloaded;
use super::origins::TokenOrigins;
use super::{DownloadedFile, ExportProgress, Manifest, OutputFile};
use crate::error::quoted;
use crate::http::redact_url;
use crate::r4::check_type_name;
use crate::{Error, Result};

/// Which list of the manifest a file comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Output,
    Deleted,
    Error,
}

/// A file to download: where it is in the manifest and where it goes in the folder.
///
/// Owned: borrowed entries, captured by the download closures, make the export future not
/// provably `Send` (a rustc limitation with higher-ranked lifetimes).
#[derive(Debug)]
pub(crate) struct PlannedFile {
    /// Position among all files of the export, in manifest order.
    pub(crate) index: usize,
    pub(crate) kind: FileKind,
    pub(crate) file: OutputFile,
    /// `<dir>/<Type>.<n>.ndjson`, `deleted.<n>.ndjson` or `error.<n>.ndjson`.
    pub(crate) path: PathBuf,
    /// Whether the request needs the bearer token (the manifest's `requiresAccessToken`).
    pub(crate) requires_token: bool,
}

/// Collects the pages of one export's manifest into one, handing each new file to `files`.
pub(crate) struct Collector<'a> {
    dir: &'a Path,
    origins: &'a TokenOrigins,
    progress: &'a watch::Sender<ExportProgress>,
    files: mpsc::UnboundedSender<PlannedFile>,
    merged: Option<Manifest>,
    seen: HashSet<Url>,
    counters: HashMap<String, usize>,
    planned: usize,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(
        dir: &'a Path,
        origins: &'a TokenOrigins,
        progress: &'a watch::Sender<ExportProgress>,
        files: mpsc::UnboundedSender<PlannedFile>,
    ) -> Self {
        Self {
            dir,
            origins,
            progress,
            files,
            merged: None,
            seen: HashSet::new(),
            counters: HashMap::new(),
            planned: 0,
        }
    }

    /// Takes the files of `page` not seen before; whether there were any.
    ///
    /// Every entry's type must be a resource type name ([`check_type_name`]), in all three
    /// lists, and its URL one that may be requested, or the page is refused naming the entry
    /// before any of its files is handed over: a server that sends a path-like type is broken or
    /// hostile, and skipping the entry would quietly give a table without its data.
    pub(crate) fn add(&mut self, page: &Manifest) -> Result<bool> {
        let merged = self.merged.get_or_insert_with(|| Manifest {
            output: Vec::new(),
            deleted: Vec::new(),
            error: Vec::new(),
            link: Vec::new(),
            ..page.clone()
        });
        let lists = [
            ("output", FileKind::Output, &page.output),
            ("deleted", FileKind::Deleted, &page.deleted),
            ("error", FileKind::Error, &page.error),
        ];
        let mut new = Vec::new();
        for (list, kind, files) in lists {
            let before = match kind {
                FileKind::Output => merged.output.len(),
                FileKind::Deleted => merged.deleted.len(),
                FileKind::Error => merged.error.len(),
            };
            let fresh = files.iter().filter(|f| !self.seen.contains(&f.url));
            for (offset, file) in fresh.enumerate() {
                if check_type_name(&file.resource_type).is_err() {
                    return Err(Error::Protocol {
                        url: page.request.clone(),
                        message: format!(
                            "manifest {list}[{}] ({}) has the type {}, which is not a resource type name: export refused",
                            before + offset,
                            redact_url(&file.url),
                            quoted(&file.resource_type)
                        ),
                        source: None,
                    });
                }
                self.origins.token_allowed(&file.url)?;
                new.push((list, kind, file.clone()));
            }
        }
        for (list, kind, file) in &new {
            self.seen.insert(file.url.clone());
            let stem = match kind {
                FileKind::Output => file.resource_type.as_str(),
                FileKind::Deleted | FileKind::Error => list,
            };
            let counter = self.counters.entry(stem.to_owned()).or_default();
            let path = self.dir.join(format!("{stem}.{counter}.ndjson"));
            *counter += 1;
            match kind {
                FileKind::Output => merged.output.push(file.clone()),
                FileKind::Deleted => merged.deleted.push(file.clone()),
                FileKind::Error => merged.error.push(file.clone()),
            }
            let planned = PlannedFile {
                index: self.planned,
                kind: *kind,
                file: file.clone(),
                path,
                requires_token: page.requires_access_token,
            };
            self.planned += 1;
            // The downloads may be gone (one failed): the export is ending anyway.
            let _ = self.files.send(planned);
        }
        if !new.is_empty() {
            self.progress.send_modify(|p| p.files_total = self.planned);
        }
        Ok(!new.is_empty())
    }

    /// The manifest of every page, without `link`; `None` when no page came.
    pub(crate) fn finish(self) -> Option<Manifest> {
        self.merged
    }
}

/// Hands the data files of an export over in manifest order as their downloads end: a file
/// waits for every file listed before it (of any kind).
#[derive(Debug)]
pub(crate) struct InOrder {
    next: usize,
    waiting: std::collections::BTreeMap<usize, Option<DownloadedFile>>,
    ready: Option<mpsc::UnboundedSender<DownloadedFile>>,
}

impl InOrder {
    /// Handing over to `ready`; with `None`, only keeping count.
    pub(crate) fn new(ready: Option<mpsc::UnboundedSender<DownloadedFile>>) -> Self {
        Self {
            next: 0,
            waiting: Default::default(),
            ready,
        }
    }

    /// The file at `index` (in manifest order) is done: `data` for a data file.
    pub(crate) fn done(&mut self, index: usize, data: Option<DownloadedFile>) {
        self.waiting.insert(index, data);
        while let Some(data) = self.waiting.remove(&self.next) {
            self.next += 1;
            if let (Some(ready), Some(file)) = (&self.ready, data) {
                // Nobody listening is fine: the outcome lists the files too.
                let _ = ready.send(file);
            }
        }
    }
}

impl DownloadedFile {
    /// The data file `planned`, as its download ended.
    pub(crate) fn of(planned: &PlannedFile, done: &Downloaded) -> Self {
        Self {
            resource_type: planned.file.resource_type.clone(),
            path: done.path.clone(),
            lines: done.lines,
            bytes: done.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(json: &str) -> Manifest {
        Manifest::parse(json.as_bytes(), &Url::parse("https://f/s").unwrap()).unwrap()
    }

    #[test]
    fn each_file_once_named_in_order_and_bad_pages_refused_whole() {
        let dir = Path::new("/out");
        let origins = TokenOrigins::try_new(&Url::parse("https://f/").unwrap(), &[]).unwrap();
        let (progress, _) = watch::channel(ExportProgress::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut collector = Collector::new(dir, &origins, &progress, tx);
        let first = page(
            r#"{"transactionTime":"t","request":"r","requiresAccessToken":true,
            "output":[{"type":"Patient","url":"https://f/1"},{"type":"Patient","url":"https://f/2"}],
            "error":[{"type":"OperationOutcome","url":"https://f/e"}],
            "link":[{"relation":"next","url":"https://f/p2"}]}"#,
        );
        assert!(collector.add(&first).unwrap());
        assert!(
            !collector.add(&first).unwrap(),
            "a page seen again adds nothing"
        );
        let second = page(
            r#"{"transactionTime":"t","request":"r","output":[
            {"type":"Patient","url":"https://f/2"},{"type":"Observation","url":"https://f/3"}],
            "deleted":[{"type":"Bundle","url":"https://f/d"}]}"#,
        );
        assert!(collector.add(&second).unwrap());
        let bad = page(
            r#"{"transactionTime":"t","request":"r","output":[
            {"type":"Patient","url":"https://f/4"},{"type":"../x","url":"https://f/5"}]}"#,
        );
        let err = collector.add(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"r: manifest output[4] (https://f/5) has the type "../x", which is not a resource type name: export refused"#
        );
        let planned: Vec<(usize, String, bool)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| (p.index, p.path.display().to_string(), p.requires_token))
            .collect();
        assert_eq!(
            planned,
            [
                (0, "/out/Patient.0.ndjson".into(), true),
                (1, "/out/Patient.1.ndjson".into(), true),
                (2, "/out/error.0.ndjson".into(), true),
                (3, "/out/Observation.0.ndjson".into(), false),
                (4, "/out/deleted.0.ndjson".into(), false),
            ],
            "nothing of the refused page"
        );
        assert_eq!(progress.borrow().files_total, 5);
        let merged = collector.finish().unwrap();
        assert_eq!(merged.output.len(), 3);
        assert!(merged.link.is_empty() && merged.requires_access_token);
    }

    #[test]
    fn files_are_handed_over_in_manifest_order_as_their_downloads_end() {
        let file = |n: usize| DownloadedFile {
            resource_type: "Patient".into(),
            path: format!("Patient.{n}.ndjson").into(),
            lines: 1,
            bytes: 1,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ready = InOrder::new(Some(tx));
        let mut handed = || std::iter::from_fn(|| rx.try_recv().ok()).count();
        // File 1 (data) and 2 (an error file) end before file 0.
        ready.done(1, Some(file(1)));
        ready.done(2, None);
        assert_eq!(handed(), 0, "file 1 waits for file 0");
        ready.done(0, Some(file(0)));
        assert_eq!(handed(), 2, "files 0 and 1; the error file is not data");
        ready.done(3, Some(file(3)));
        assert_eq!(handed(), 1);
        let mut counting = InOrder::new(None);
        counting.done(0, Some(file(0)));
        assert_eq!(counting.next, 1);
    }
}
