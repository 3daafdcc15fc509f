//! Keeping snapshots fresh: one export per set of missing types, shared by every query that
//! needs one of them while it runs, then converted and committed type by type.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::watch;
use url::Url;

use super::claims::Keeper;
use super::pushdown::{Conjunct, Pushdown, PushdownMode};
use super::source::{
    Capabilities, FetchOutcome, FetchPhase, FetchProgress, FetchRequest, FetchedFile, FhirSource,
};
use super::{CatalogOptions, Freshness};
use crate::snapshot::{
    Claim, Claiming, Incremental, RawFile, Snapshot, SnapshotManifest, SnapshotStore,
    SnapshotWriter, forget_staged, resource_ids, write_raw,
};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// How many finished exports [`Exporter::exports`] remembers.
const FINISHED_KEPT: usize = 32;

/// How often a machine waiting for another one's export looks for its snapshots and claim.
const CLAIM_POLL: Duration = Duration::from_secs(2);

type Done = Shared<BoxFuture<'static, Result<Arc<[Warning]>, Arc<Error>>>>;

/// The state of an export, as listed by [`super::FhirCatalog::exports`].
#[derive(Debug, Clone)]
pub enum ExportState {
    /// Fetching or converting.
    Running,
    /// Committed.
    Done,
    /// Failed with this error (kept whole: a Flight client reads only its own part of it).
    Failed(Arc<Error>),
    /// Cancelled.
    Cancelled,
}

/// States are equal when their kinds are, failures when their texts are too.
impl PartialEq for ExportState {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ExportState::Failed(a), ExportState::Failed(b)) => a.to_string() == b.to_string(),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// One export of a catalog: running or recently finished.
#[derive(Debug, Clone)]
pub struct ExportStatus {
    /// Id, unique within the catalog (for [`super::FhirCatalog::cancel`]).
    pub id: u64,
    /// The request.
    pub request: FetchRequest,
    /// When it started.
    pub started: SystemTime,
    /// Progress of the fetch.
    pub progress: FetchProgress,
    /// Where it stands.
    pub state: ExportState,
    /// What it finished despite (once done): the server's OperationOutcomes, skipped lines.
    pub warnings: Vec<Warning>,
}

#[derive(Debug)]
struct Job {
    id: u64,
    request: FetchRequest,
    targets: Vec<Target>,
    started: SystemTime,
    progress: watch::Receiver<FetchProgress>,
    abort: tokio::task::AbortHandle,
    done: Done,
}

/// One snapshot an export commits.
#[derive(Debug, Clone)]
struct Target {
    resource_type: String,
    /// The snapshot's name: the type, or a filtered export's (see [`Pushdown::snapshot_name`]).
    name: String,
    /// Its `_typeFilter`, and the filters recorded in its manifest.
    type_filter: Option<String>,
    pushdown: Vec<String>,
    /// Merge into the type's current snapshot (an incremental refresh).
    merge: bool,
    /// Adopt instead another machine's full snapshot of the type at the tables' location,
    /// committed since then ([`SnapshotStore::adopt`]; it serves a filtered one too): the
    /// oldest that the statement takes as fresh.
    adopt_since: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Jobs {
    /// The running job of each snapshot name.
    by_name: HashMap<String, Arc<Job>>,
    /// Running and recently finished jobs, oldest first.
    all: Vec<Arc<Job>>,
}

/// The shared heart of a catalog: its source, its snapshot store, its exports.
#[derive(Debug)]
pub(crate) struct Exporter {
    pub(crate) source: Arc<dyn FhirSource>,
    pub(crate) store: SnapshotStore,
    pub(crate) options: CatalogOptions,
    /// The configured resource types: the only tables when set.
    pinned: Option<Vec<String>>,
    /// What the source declares, asked once when first needed (never when the catalog is made).
    capabilities: tokio::sync::OnceCell<Arc<Capabilities>>,
    jobs: Mutex<Jobs>,
    next_id: AtomicU64,
}

impl Exporter {
    pub(crate) fn new(
        source: Arc<dyn FhirSource>,
        store: SnapshotStore,
        options: CatalogOptions,
        pinned: Option<Vec<String>>,
    ) -> Self {
        Self {
            source,
            store,
            options,
            pinned,
            capabilities: tokio::sync::OnceCell::new(),
            jobs: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    fn jobs(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resource type named `name` (matched case-insensitively: SQL folds unquoted names),
    /// without I/O: a configured type when types are configured; else an R4 resource type, a
    /// type the source declared (once asked), or one exported before.
    pub(crate) fn resource_type(&self, name: &str) -> Option<String> {
        let find = |types: &[String]| types.iter().find(|t| t.eq_ignore_ascii_case(name)).cloned();
        if let Some(pinned) = &self.pinned {
            return find(pinned);
        }
        let r4 = crate::r4::RESOURCE_TYPES.iter();
        r4.copied()
            .find(|t| t.eq_ignore_ascii_case(name))
            .map(str::to_owned)
            .or_else(|| find(&self.capabilities.get()?.resource_types))
            .or_else(|| find(&self.exported()))
    }

    /// The types that have a committed full snapshot (none when the store cannot be read).
    fn exported(&self) -> Vec<String> {
        self.store.resource_types().unwrap_or_else(|e| {
            tracing::warn!("listing the snapshots of {}: {e}", self.source.location());
            Vec::new()
        })
    }

    /// What the source declares: kept in the store (`capabilities.json`) once asked, so that
    /// statements answered from snapshots need no request even when their pushdown depends on
    /// it; asked of the source when the store has none (a failure is not kept: the next call
    /// asks again). Clearing the cache asks again.
    pub(crate) async fn capabilities(&self) -> Result<Arc<Capabilities>> {
        let path = self.store.dir().join("capabilities.json");
        self.capabilities
            .get_or_try_init(|| async {
                if let Ok(bytes) = std::fs::read(&path)
                    && let Ok(kept) = serde_json::from_slice(&bytes)
                {
                    return Ok(Arc::new(kept));
                }
                let declared = self.source.capabilities().await?;
                let json = serde_json::to_vec(&declared)
                    .map_err(|e| Error::snapshot_with("capabilities", e))?;
                let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
                let written =
                    std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    tracing::warn!("keeping {}: {e}", path.display());
                }
                Ok(Arc::new(declared))
            })
            .await
            .map(Arc::clone)
    }

    /// What a statement with `conjuncts` on `resource_type` pushes into its export, following
    /// the catalog's [`PushdownMode`]. Nothing when the type's full snapshot satisfies
    /// `freshness` (no export is needed, so the source is not asked what it supports).
    pub(crate) async fn pushdown(
        &self,
        resource_type: &str,
        conjuncts: &[Conjunct],
        freshness: &Freshness,
    ) -> Result<Pushdown> {
        let fresh = self
            .store
            .current(resource_type)?
            .is_some_and(|s| freshness.accepts(s.age()));
        let all = Pushdown::from_conjuncts(resource_type, conjuncts, &|_| true);
        Ok(match self.options.pushdown {
            _ if fresh => Pushdown::default(),
            PushdownMode::Off => Pushdown::default(),
            PushdownMode::On => all,
            PushdownMode::Auto if all.type_filter.is_none() => all,
            PushdownMode::Auto => match self.capabilities().await {
                Ok(declared) => Pushdown::from_conjuncts(resource_type, conjuncts, &|param| {
                    declared.supports_filter(resource_type, param)
                }),
                Err(e) => {
                    tracing::warn!(
                        "what {} supports is unknown, no search is pushed: {e}",
                        self.source.location()
                    );
                    Pushdown::from_conjuncts(resource_type, conjuncts, &|_| false)
                }
            },
        })
    }

    /// The tables browsing lists, without I/O: the configured types, else the union of those the
    /// source declared (when asked before, see [`Exporter::declare`]) and those exported.
    pub(crate) fn listed_types(&self) -> Vec<String> {
        if let Some(pinned) = &self.pinned {
            return pinned.clone();
        }
        let mut types = self.exported();
        if let Some(declared) = self.capabilities.get() {
            types.extend(declared.resource_types.iter().cloned());
        }
        types.sort();
        types.dedup();
        types
    }

    /// Asks the source what it declares, unless types are configured or it was asked before,
    /// so that browsing lists the declared types; a failure is logged and browsing lists the
    /// exported types only.
    pub(crate) async fn declare(&self) {
        if self.pinned.is_some() {
            return;
        }
        if let Err(e) = self.capabilities().await {
            tracing::warn!(
                "the resource types {} declares are unknown, only exported ones are listed: {e}",
                self.source.location()
            );
        }
    }

    /// [`Exporter::ensure_pushed`] without pushdown: the full snapshots of `types`.
    pub(crate) async fn ensure(
        self: &Arc<Self>,
        types: &[String],
        freshness: &Freshness,
        not_before: Option<SystemTime>,
    ) -> Result<Vec<Snapshot>> {
        self.ensure_pushed(&full(types), freshness, not_before)
            .await
    }

    /// Returns a snapshot for every `(type, pushdown)` in `wanted`: the type's full snapshot when
    /// it satisfies `freshness` (or was committed after `not_before`), else the snapshot of that
    /// pushdown when it does, else one made by an export. ONE export for all types without a
    /// snapshot, one incremental export per previous `transactionTime` for stale ones, one per
    /// `_since` pushed; exports already running for a snapshot are joined. Dropping the returned
    /// future withdraws from the exports it waits for, which run on and commit their snapshots
    /// (an export is expensive: only [`Exporter::cancel`] stops one).
    pub(crate) async fn ensure_pushed(
        self: &Arc<Self>,
        wanted: &[(String, Pushdown)],
        freshness: &Freshness,
        not_before: Option<SystemTime>,
    ) -> Result<Vec<Snapshot>> {
        let (snapshots, _) = self.ensure_exports(wanted, freshness, not_before).await?;
        Ok(snapshots)
    }

    /// [`Exporter::ensure_pushed`], with the ids of the exports it waited for (started or joined).
    pub(crate) async fn ensure_exports(
        self: &Arc<Self>,
        wanted: &[(String, Pushdown)],
        freshness: &Freshness,
        not_before: Option<SystemTime>,
    ) -> Result<(Vec<Snapshot>, Vec<u64>)> {
        let fresh = |s: &Snapshot| {
            not_before.is_some_and(|nb| s.created() >= nb) || freshness.accepts(s.age())
        };
        let mut waits: Vec<Arc<Job>> = Vec::new();
        let mut names = Vec::with_capacity(wanted.len());
        {
            let mut jobs = self.jobs();
            // Exports to start, by (`_since`, whether that `_since` is pushed down).
            let mut groups: BTreeMap<(Option<String>, bool), Vec<Target>> = BTreeMap::new();
            for (t, pushdown) in wanted {
                let current = self.store.current(t)?;
                let full_fresh = current.as_ref().is_some_and(fresh);
                let full_running = jobs.by_name.get(t);
                // A full snapshot serves every pushdown: a fresh one, or one being exported.
                if full_fresh || (full_running.is_some() && !pushdown.is_empty()) {
                    if let Some(job) = full_running.filter(|_| !full_fresh) {
                        waits.push(Arc::clone(job));
                    }
                    names.push((t.clone(), t));
                    continue;
                }
                let name = pushdown.snapshot_name(t);
                names.push((name.clone(), t));
                if let Some(job) = jobs.by_name.get(&name) {
                    waits.push(Arc::clone(job));
                    continue;
                }
                if groups.values().flatten().any(|target| target.name == name) {
                    continue;
                }
                let (key, target) = if pushdown.is_empty() {
                    let since = current
                        .filter(|_| self.options.incremental)
                        .map(|s| s.manifest().transaction_time.clone());
                    let merge = since.is_some();
                    let target = Target {
                        resource_type: t.clone(),
                        name,
                        type_filter: None,
                        pushdown: Vec::new(),
                        merge,
                        adopt_since: freshness.oldest(not_before),
                    };
                    ((since, false), target)
                } else {
                    if self.store.current(&name)?.as_ref().is_some_and(fresh) {
                        continue;
                    }
                    let recorded = [
                        pushdown
                            .type_filter
                            .as_ref()
                            .map(|f| format!("_typeFilter={f}")),
                        pushdown.since.as_ref().map(|s| format!("_since={s}")),
                    ];
                    let target = Target {
                        resource_type: t.clone(),
                        name,
                        type_filter: pushdown.type_filter.clone(),
                        pushdown: recorded.into_iter().flatten().collect(),
                        merge: false,
                        adopt_since: freshness.oldest(not_before),
                    };
                    ((pushdown.since.clone(), pushdown.since.is_some()), target)
                };
                groups.entry(key).or_default().push(target);
            }
            // The one place an export starts: the statement's gate decides, all or none.
            super::gate::admit(groups.len())?;
            for ((since, _), targets) in groups {
                let job = self.start(&mut jobs, since, targets);
                waits.push(job);
            }
        }
        for job in &waits {
            job.done.clone().await.map_err(Error::Shared)?;
        }
        let exports = waits.iter().map(|job| job.id).collect();
        let snapshots = names
            .iter()
            .map(|(n, t)| {
                let own = self.store.current(n)?;
                let full = match n != *t {
                    true => self.store.current(t)?.filter(fresh),
                    false => None,
                };
                // A full snapshot adopted in a filtered export's stead serves it.
                let newest = match (own, full) {
                    (Some(own), Some(full)) if full.created() > own.created() => Some(full),
                    (None, full) => full,
                    (own, _) => own,
                };
                newest
                    .ok_or_else(|| Error::snapshot(format!("export of {n} committed no snapshot")))
            })
            .collect::<Result<_>>()?;
        Ok((snapshots, exports))
    }

    /// Starts an export task and registers it for its types (the caller holds the jobs lock).
    fn start(
        self: &Arc<Self>,
        jobs: &mut Jobs,
        since: Option<String>,
        targets: Vec<Target>,
    ) -> Arc<Job> {
        let request = FetchRequest {
            types: targets.iter().map(|t| t.resource_type.clone()).collect(),
            since,
            type_filters: targets
                .iter()
                .filter_map(|t| t.type_filter.clone())
                .collect(),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(FetchProgress {
            ..FetchProgress::default()
        });
        let this = Arc::clone(self);
        let (req, plan) = (request.clone(), targets.clone());
        let task = tokio::spawn(async move {
            // Unregisters the job however the task ends, including abort.
            let _guard = Unregister {
                exporter: Arc::clone(&this),
                id,
            };
            this.run(&req, plan, &tx).await
        });
        let abort = task.abort_handle();
        let what = request.types.join(",");
        let done = task
            .map(move |r| match r {
                Ok(r) => r.map_err(Arc::new),
                Err(e) if e.is_cancelled() => Err(Arc::new(Error::Cancelled)),
                Err(e) => Err(Arc::new(Error::snapshot_with(
                    format!("export of {what} panicked"),
                    e,
                ))),
            })
            .boxed()
            .shared();
        let job = Arc::new(Job {
            id,
            request,
            targets,
            started: SystemTime::now(),
            progress: rx,
            abort,
            done: done.clone(),
        });
        for t in &job.targets {
            jobs.by_name.insert(t.name.clone(), Arc::clone(&job));
        }
        jobs.all.push(Arc::clone(&job));
        let excess = jobs.all.len().saturating_sub(FINISHED_KEPT);
        let mut finished = 0;
        jobs.all.retain(|j| {
            let keep = finished >= excess || j.done.peek().is_none();
            finished += usize::from(!keep);
            keep
        });
        // Runs the shared future to its end, so that its outcome is known without anyone
        // having to await it.
        tokio::spawn(done.map(drop));
        job
    }

    /// The export itself: fetch into a staging folder named after the request (so a killed run
    /// resumes), then build and commit one snapshot per type.
    async fn run(
        &self,
        request: &FetchRequest,
        mut targets: Vec<Target>,
        progress: &watch::Sender<FetchProgress>,
    ) -> Result<Arc<[Warning]>> {
        let started = SystemTime::now();
        let key = job_key(request);
        let staging = self.store.staging_dir(&key)?;
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        // One process at a time per request: another one waits, then finds its snapshots.
        let lock_path = staging.with_extension("lock");
        let _lock = tokio::task::spawn_blocking(move || {
            crate::lock_file::lock_exclusive_named(&lock_path).map_err(|e| Error::io(&lock_path, e))
        })
        .await
        .map_err(|e| Error::snapshot_with("lock task failed", e))??;
        targets.retain(|t| {
            self.store
                .current(&t.name)
                .ok()
                .flatten()
                .is_none_or(|s| s.created() < started)
        });
        self.adopt(&mut targets).await;
        // Filtered snapshots stay on this machine, and so do their exports.
        let home = self.store.staging_home(&key)?;
        let home = home.filter(|_| targets.iter().all(|t| t.type_filter.is_none()));
        let keeper = match home {
            Some(home) if !targets.is_empty() => self.claim(&home, &mut targets, &staging).await,
            _ => None,
        };
        if targets.is_empty() {
            return Ok(Arc::default());
        }
        let request = FetchRequest {
            types: targets.iter().map(|t| t.resource_type.clone()).collect(),
            since: request.since.clone(),
            type_filters: targets
                .iter()
                .filter_map(|t| t.type_filter.clone())
                .collect(),
        };

        // A full snapshot's files convert while the rest download.
        let converters = targets
            .iter()
            .map(|t| {
                let start = || Converter::start(&self.store, &self.options, t, progress);
                (!t.merge).then(start).transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let route = |file: FetchedFile| {
            let to = converters.iter().flatten();
            for converter in to.filter(|c| c.resource_type == file.resource_type) {
                // A converter that stopped (it failed) says why when it is finished.
                let _ = converter.files.send(file.clone());
            }
        };
        let (ready, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let outcome = {
            let fetch = self.source.fetch(&request, &staging, progress, &ready);
            tokio::pin!(fetch);
            loop {
                tokio::select! {
                    outcome = &mut fetch => break outcome,
                    Some(file) = handed.recv() => route(file),
                }
            }
        };
        while let Ok(file) = handed.try_recv() {
            route(file);
        }
        let outcome = outcome?;
        progress.send_modify(|p| p.phase = FetchPhase::Converting);
        let mut filtered: Vec<String> = targets
            .iter()
            .filter(|t| !t.pushdown.is_empty())
            .map(|t| t.resource_type.clone())
            .collect();
        filtered.sort();
        filtered.dedup();
        let mut tasks = Vec::new();
        for (t, converter) in targets.into_iter().zip(converters) {
            let converted = match converter {
                Some(converter) => converter.finish(&outcome).await?,
                None => None,
            };
            let start = match converted {
                Some(converted) => Start::Converted(converted),
                None if outcome.complete || !t.merge => Start::Empty,
                None => match self.store.current(&t.name)? {
                    Some(current) => Start::Merge(current),
                    None => Start::Empty,
                },
            };
            let (store, options, outcome) =
                (self.store.clone(), self.options.clone(), outcome.clone());
            let location = self.source.location().to_owned();
            let progress = progress.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let on_rows = |n| progress.send_modify(|p| p.rows_converted += n);
                commit_type(&store, &options, &location, &outcome, &t, start, &on_rows)
            }));
        }
        let mut warnings = outcome.warnings.clone();
        for task in tasks {
            let snapshot = task
                .await
                .map_err(|e| Error::snapshot_with("conversion task failed", e))??;
            // The conversion's own warnings: the export's are in `outcome` already.
            let converted = |w: &&Warning| {
                matches!(
                    w.kind,
                    WarningKind::SkippedLines | WarningKind::WideResources
                )
            };
            warnings.extend(
                snapshot
                    .manifest()
                    .warnings
                    .iter()
                    .filter(converted)
                    .cloned(),
            );
        }
        if let Some(keeper) = keeper {
            keeper.finish().await;
        }
        let _ = std::fs::remove_dir_all(&staging);
        // Housekeeping: the snapshots are committed, a failure here fails no query.
        for t in filtered {
            let (store, keep) = (self.store.clone(), self.options.max_filtered_snapshots);
            match tokio::task::spawn_blocking(move || store.evict_filtered(&t, keep)).await {
                Ok(Ok(evicted)) if !evicted.is_empty() => {
                    tracing::debug!(?evicted, "evicted least recently used filtered snapshots");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("evicting filtered snapshots: {e}"),
                Err(e) => tracing::warn!("evicting filtered snapshots: task failed: {e}"),
            }
        }
        Ok(warnings.into())
    }

    /// Claims the export staged at `home` for this machine ([`Claim`]) and starts from the
    /// resume files another machine left there: while another machine holds the claim, waits,
    /// adopting its snapshots as they come (`targets` served so are taken out; none left, no
    /// claim is needed). Without the home (unreachable), the export runs unshared.
    async fn claim(&self, home: &Url, targets: &mut Vec<Target>, staging: &Path) -> Option<Keeper> {
        let files = self.source.resume_files();
        let folder = match self.store.folder_id() {
            Ok(folder) => folder,
            Err(e) => {
                tracing::warn!("{e}; exporting without sharing the export");
                return None;
            }
        };
        let mut waiting = false;
        loop {
            match Claim::take(home, &folder).await {
                Ok(Claiming::Taken(mut claim)) => {
                    match claim.pull(files, staging).await {
                        Ok(0) => {}
                        Ok(_) => {
                            tracing::info!("resuming the export another machine left at {home}")
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                    return Some(Keeper::start(claim, files, staging.to_owned()));
                }
                Ok(Claiming::Held { owner, until }) => {
                    if !std::mem::replace(&mut waiting, true) {
                        let until = crate::snapshot::rfc3339(until);
                        tracing::info!(
                            "{home}: {owner} exports this (its claim runs until {until}); waiting"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; exporting without sharing the export");
                    return None;
                }
            }
            tokio::time::sleep(CLAIM_POLL).await;
            self.adopt(targets).await;
            if targets.is_empty() {
                return None;
            }
        }
    }

    /// Takes from `targets` those another machine's full snapshot of their type at the tables'
    /// location serves, adopted ([`SnapshotStore::adopt`]); one that cannot be adopted is
    /// exported, with a warning in the log.
    async fn adopt(&self, targets: &mut Vec<Target>) {
        let mut tried = HashSet::new();
        for t in targets.iter() {
            let Some(since) = t.adopt_since.filter(|_| tried.insert(&t.resource_type)) else {
                continue;
            };
            let (store, name) = (self.store.clone(), t.resource_type.clone());
            let adopting = tokio::task::spawn_blocking(move || store.adopt(&name, since));
            let adopting = adopting.await;
            if let Err(e) = adopting
                .map_err(|e| Error::snapshot_with("adoption task failed", e))
                .and_then(|adopted| adopted)
            {
                tracing::warn!("{}: exported, not adopted: {e}", t.resource_type);
            }
        }
        targets.retain(|t| {
            let full = self.store.current(&t.resource_type).ok().flatten();
            let served = t.adopt_since.zip(full);
            served.is_none_or(|(since, full)| full.created() < since)
        });
    }

    /// Running and recently finished exports, oldest first.
    pub(crate) fn exports(&self) -> Vec<ExportStatus> {
        self.jobs()
            .all
            .iter()
            .map(|j| {
                // Known as soon as a query awaiting the export has its outcome.
                let (state, warnings) = match j.done.peek() {
                    None => (ExportState::Running, Vec::new()),
                    Some(Ok(warnings)) => (ExportState::Done, warnings.to_vec()),
                    Some(Err(e)) if matches!(**e, Error::Cancelled) => {
                        (ExportState::Cancelled, Vec::new())
                    }
                    Some(Err(e)) => (ExportState::Failed(Arc::clone(e)), Vec::new()),
                };
                ExportStatus {
                    id: j.id,
                    request: j.request.clone(),
                    started: j.started,
                    progress: j.progress.borrow().clone(),
                    state,
                    warnings,
                }
            })
            .collect()
    }

    /// Cancels a running export: queries waiting on it fail with [`Error::Cancelled`], and once
    /// its task has stopped the source cancels what it keeps for a resume (a Bulk Data job is
    /// DELETEd on the server, its staged files removed). False when no such export runs.
    pub(crate) fn cancel(self: &Arc<Self>, id: u64) -> bool {
        let jobs = self.jobs();
        let Some(job) = jobs
            .all
            .iter()
            .find(|j| j.id == id && j.done.peek().is_none())
        else {
            return false;
        };
        job.abort.abort();
        let (this, job) = (Arc::clone(self), Arc::clone(job));
        tokio::spawn(async move {
            // The task writes into the staging folder until it has stopped.
            let _ = job.done.clone().await;
            let staging = match this.store.staging_dir(&job_key(&job.request)) {
                Ok(staging) => staging,
                Err(e) => return tracing::warn!("cancelling export {}: {e}", job.id),
            };
            match this.source.cancel(&staging).await {
                Ok(()) => tracing::info!(export = job.id, "export cancelled"),
                Err(e) => tracing::warn!("cancelling export {} at its source: {e}", job.id),
            }
            let home = this.store.staging_home(&job_key(&job.request));
            if let Ok(Some(home)) = home
                && let Err(e) = forget_staged(&home, this.source.resume_files()).await
            {
                tracing::warn!("cancelling export {}: {e}", job.id);
            }
        });
        true
    }
}

/// `types` wanted whole: without pushdown ([`Exporter::ensure_pushed`]).
pub(crate) fn full(types: &[String]) -> Vec<(String, Pushdown)> {
    types
        .iter()
        .map(|t| (t.clone(), Pushdown::default()))
        .collect()
}

/// Removes a job from `by_name` when its task ends (normally, by error or aborted).
struct Unregister {
    exporter: Arc<Exporter>,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.exporter.jobs().by_name.retain(|_, j| j.id != self.id);
    }
}

/// Builds and commits the snapshot of `resource_type` from a fetch: a full copy of the fetched
/// files, or (incremental) the previous snapshot's resources with the changed ones replaced and
/// the deleted ones removed. `on_rows` is told the rows converted as they are.
fn commit_type(
    store: &SnapshotStore,
    options: &CatalogOptions,
    location: &str,
    outcome: &FetchOutcome,
    target: &Target,
    start: Start,
    on_rows: &dyn Fn(u64),
) -> Result<Snapshot> {
    let resource_type = target.resource_type.as_str();
    let files: Vec<PathBuf> = outcome
        .files
        .iter()
        .filter(|f| f.resource_type == resource_type)
        .map(|f| f.path.clone())
        .collect();
    let deleted: HashSet<String> = outcome
        .deleted
        .iter()
        .filter(|(t, _)| t == resource_type)
        .map(|(_, id)| id.clone())
        .collect();
    let mut manifest = SnapshotManifest {
        source: location.to_owned(),
        request: outcome.request.clone(),
        transaction_time: outcome.transaction_time.clone(),
        warnings: outcome
            .warnings
            .iter()
            .filter(|w| w.concerns(resource_type))
            .cloned()
            .collect(),
        pushdown: target.pushdown.clone(),
        ..SnapshotManifest::default()
    };
    let writer = match start {
        Start::Converted(Converted { writer, raw, .. }) => {
            manifest.raw = raw;
            writer
        }
        // A full snapshot keeps the fetched files as they are, converted as they are copied.
        Start::Empty => {
            let mut writer = store.begin_named(&target.name, resource_type)?;
            let mode = std::slice::from_ref(options.mode());
            let decode = options.decode_options();
            manifest.raw = writer.copy_converting(0, &files, mode, &decode, on_rows)?;
            writer
        }
        // The previous snapshot's tables are carried over, touched only where ids changed.
        Start::Merge(prev) => {
            let mut writer = store.begin_named(&target.name, resource_type)?;
            let started = std::time::Instant::now();
            let max_line = options.max_line_bytes;
            let mut replaced = resource_ids(&files, max_line)?;
            replaced.extend(deleted.iter().cloned());
            manifest.raw = writer.keep_raw(&prev, &replaced, max_line)?;
            let kept = manifest.raw.len();
            let (path, rel) = writer.raw_path(kept, false);
            let (changed, bytes) = write_raw(&files, Some(&deleted), max_line, &path)?;
            manifest.raw.push(RawFile {
                path: rel,
                resources: changed,
                bytes,
                origin: None,
            });
            tracing::debug!(
                "{resource_type}: raw files merged in {:.3} s",
                started.elapsed().as_secs_f64()
            );
            let mut deleted: Vec<String> = deleted.into_iter().collect();
            deleted.sort();
            manifest.incremental = Some(Incremental {
                since: prev.manifest().transaction_time.clone(),
                previous: prev.manifest().snapshot.clone(),
                changed,
                deleted,
            });
            writer.carry_over(prev, replaced, &manifest.raw[..kept]);
            writer
        }
    };
    writer.commit(
        manifest,
        std::slice::from_ref(options.mode()),
        &options.decode_options(),
        on_rows,
    )
}

/// What the new snapshot of a type starts from.
enum Start {
    /// Nothing: a full snapshot of the fetched files.
    Empty,
    /// Its files in a writer, converted while they downloaded.
    Converted(Converted),
    /// The current snapshot, which the fetched changes are merged into (`_since`).
    Merge(Snapshot),
}

/// The full snapshot of one target converted while its export downloads: a blocking task
/// that copies each file handed to it into a writer and converts, as the next part of the
/// table, the files that came since the last part once they hold `part_bytes`.
struct Converter {
    resource_type: String,
    files: std::sync::mpsc::Sender<FetchedFile>,
    task: tokio::task::JoinHandle<Result<Converted>>,
}

/// What a [`Converter`] made: the snapshot so far, its raw files, the files it was handed.
struct Converted {
    writer: SnapshotWriter,
    raw: Vec<RawFile>,
    files: Vec<FetchedFile>,
}

impl Converter {
    fn start(
        store: &SnapshotStore,
        options: &CatalogOptions,
        target: &Target,
        progress: &watch::Sender<FetchProgress>,
    ) -> Result<Self> {
        let writer = store.begin_named(&target.name, &target.resource_type)?;
        let (files, handed) = std::sync::mpsc::channel::<FetchedFile>();
        let (options, progress) = (options.clone(), progress.clone());
        let task = tokio::task::spawn_blocking(move || {
            let on_rows = |n| progress.send_modify(|p| p.rows_converted += n);
            let mode = std::slice::from_ref(options.mode());
            let mut converted = Converted {
                writer,
                raw: Vec::new(),
                files: Vec::new(),
            };
            // The raw files not in a part yet: the commit converts what is left of them.
            let (mut from, mut pending) = (0, 0);
            // The raw files already synced.
            let mut synced = 0;
            while let Ok(first) = handed.recv() {
                for file in std::iter::once(first).chain(handed.try_iter()) {
                    let raw = converted.writer.copy_raw(converted.raw.len(), &file.path)?;
                    pending += raw.bytes;
                    converted.raw.push(raw);
                    converted.files.push(file);
                }
                if pending >= options.part_bytes {
                    let part = &converted.raw[from..];
                    converted.writer.convert_part(
                        part,
                        mode,
                        &options.decode_options(),
                        &on_rows,
                    )?;
                    (from, pending) = (converted.raw.len(), 0);
                }
                converted.writer.sync_raw(&converted.raw[synced..])?;
                synced = converted.raw.len();
            }
            Ok(converted)
        });
        Ok(Self {
            resource_type: target.resource_type.clone(),
            files,
            task,
        })
    }

    /// The conversion, once every file was handed over: kept when it holds exactly the
    /// outcome's files of its type, in order (else it was of files an export that started
    /// over left, whatever became of it).
    async fn finish(self, outcome: &FetchOutcome) -> Result<Option<Converted>> {
        drop(self.files);
        let converted = self
            .task
            .await
            .map_err(|e| Error::snapshot_with("conversion task failed", e));
        if outcome.restarted {
            return Ok(None);
        }
        let converted = converted??;
        let files = outcome
            .files
            .iter()
            .filter(|f| f.resource_type == self.resource_type);
        let whole = files.eq(converted.files.iter());
        Ok(whole.then_some(converted))
    }
}

/// The staging folder name of a request: readable and stable across runs.
fn job_key(request: &FetchRequest) -> String {
    use sha2::Digest;
    let mut types = request.types.clone();
    types.sort();
    let text = format!("{types:?}{:?}{:?}", request.since, request.type_filters);
    let hash = sha2::Sha256::digest(text.as_bytes());
    let hex: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut name = types.join("_");
    name.truncate(60);
    format!("{name}-{hex}")
}
