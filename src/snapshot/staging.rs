//! The staging of an export at the snapshots' home, shared by the machines of a tables'
//! location ([`super::SnapshotStore::staging_home`]): `<location>/<source-key>/staging/<job-key>/`.
//! What a flock on the local staging folder does for the processes of one machine, a claim there
//! does for machines, with object stores' conditional writes:
//!
//! - **One machine exports a request at a time.** A machine takes the request's [`Claim`]
//!   before it exports, and renews it while it runs; another machine waits for it (and adopts
//!   its snapshots, [`super::SnapshotStore::adopt`]), and takes it over once it expired: the
//!   machine that held it died.
//! - **A killed export resumes on any machine.** The source's resume files (a Bulk Data job's
//!   status URL, [`crate::catalog::FhirSource::resume_files`]) are mirrored there while the
//!   export runs, and the machine that takes the claim over starts from them: the server's job
//!   (hours of export on a large server, and on some the one export a client may run) is
//!   resumed, not started again. Its downloads are made again from the server, which keeps its
//!   files until they expire; they are not uploaded twice (the raw files go to the home with the
//!   snapshot).
//!
//! A claim is a series of objects `claim.<generation>.json`, each written once with a
//! conditional create, so that exactly one machine makes each generation: the highest one names
//! the holder and until when it holds (`expires_unix_ms`). Renewing and taking over write the
//! next generation; releasing writes one that has expired already. Clocks of the machines are
//! assumed to agree within seconds (NTP), well under [`CLAIM_TTL`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use url::Url;

use super::delta;
use crate::{Error, Result};

/// How long a claim holds without being renewed: the time another machine waits for one whose
/// machine died before it takes the export over.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// How often a claim is renewed: a few renewals may fail (the network) before it expires.
pub const CLAIM_RENEWAL: Duration = Duration::from_secs(15);

/// The largest resume file or claim read from the home: they hold a URL or two.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// The generations of a claim looked at: older ones are removed as newer ones come.
const MAX_CLAIM_OBJECTS: usize = 1000;

/// One generation of a claim, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimObject {
    owner: String,
    /// The claiming store's [folder id](super::SnapshotStore::folder_id).
    folder: String,
    expires_unix_ms: u64,
}

/// An export's claim at the snapshots' home, held by this machine until it is released or
/// expires ([`CLAIM_TTL`]).
#[derive(Debug)]
pub struct Claim {
    store: deltalake::logstore::ObjectStoreRef,
    url: Url,
    owner: String,
    folder: String,
    generation: u64,
    /// The resume files as they are at the home, once known (`None` per file absent there).
    mirrored: Option<Vec<Option<Vec<u8>>>>,
}

/// What [`Claim::take`] found.
#[derive(Debug)]
pub enum Claiming {
    /// The claim is this machine's now.
    Taken(Claim),
    /// Another machine holds it, until the time given unless it renews it.
    Held {
        /// The holder: its host name, process id and a random part.
        owner: String,
        /// When the claim expires unless its holder renews it.
        until: SystemTime,
    },
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn claim_path(generation: u64) -> deltalake::Path {
    deltalake::Path::from(format!("claim.{generation:020}.json"))
}

/// The generation a claim object's name gives, if it is one.
fn generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("claim.")?.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The bytes of the object at `path`, none when there is none; refused past
/// [`MAX_STATE_BYTES`].
async fn read_small(
    store: &deltalake::logstore::ObjectStoreRef,
    path: &deltalake::Path,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let got = match store.get(path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if got.meta.size > MAX_STATE_BYTES {
        return Err(format!("{path}: {} bytes, too large", got.meta.size));
    }
    let bytes = got.bytes().await.map_err(|e| e.to_string())?;
    Ok(Some(bytes.to_vec()))
}

/// The claim generations at the staging home, highest first.
async fn generations(
    store: &deltalake::logstore::ObjectStoreRef,
) -> std::result::Result<Vec<u64>, String> {
    let listed = store.list_with_delimiter(None).await;
    let mut found: Vec<u64> = listed
        .map_err(|e| e.to_string())?
        .objects
        .iter()
        .filter_map(|o| o.location.filename().and_then(generation))
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.truncate(MAX_CLAIM_OBJECTS);
    Ok(found)
}

/// Writes generation `generation` of a claim, unless another machine wrote it first (false).
async fn create(
    store: &deltalake::logstore::ObjectStoreRef,
    generation: u64,
    claim: &ClaimObject,
) -> std::result::Result<bool, String> {
    let json = serde_json::to_vec(claim).map_err(|e| e.to_string())?;
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let path = claim_path(generation);
    match store.put_opts(&path, PutPayload::from(json), opts).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

impl Claim {
    /// Takes the claim at `url` (a [staging home](super::SnapshotStore::staging_home)) for the
    /// store whose [folder id](super::SnapshotStore::folder_id) is `folder`, when nobody holds
    /// it, its holder let it expire, or its holder was a process of that folder (the caller
    /// holds the folder's lock of the export, so that process died); or says who holds it.
    pub async fn take(url: &Url, folder: &str) -> Result<Claiming> {
        let failed = |e: String| Error::snapshot(format!("claiming {url}: {e}"));
        let store = delta::object_store(url).map_err(failed)?;
        let owner = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut claim = Claim {
            store,
            url: url.clone(),
            owner,
            folder: folder.to_owned(),
            generation: 0,
            mirrored: None,
        };
        // Each lost race means another machine wrote the next generation: at most a few.
        for _ in 0..8 {
            let highest = generations(&claim.store)
                .await
                .map_err(failed)?
                .first()
                .copied();
            claim.generation = highest.unwrap_or(0);
            if highest.is_some() {
                let held = read_small(&claim.store, &claim_path(claim.generation)).await;
                let held = held
                    .map_err(failed)?
                    .map(|bytes| serde_json::from_slice(&bytes));
                // One that cannot be read is taken over as an expired one.
                if let Some(Ok(ClaimObject {
                    owner,
                    folder,
                    expires_unix_ms,
                })) = held
                {
                    let until = UNIX_EPOCH + Duration::from_millis(expires_unix_ms);
                    if until > SystemTime::now() && folder != claim.folder {
                        return Ok(Claiming::Held { owner, until });
                    }
                }
            }
            if claim.next(CLAIM_TTL).await.map_err(failed)? {
                return Ok(Claiming::Taken(claim));
            }
        }
        Err(failed("other machines kept taking it".into()))
    }

    /// Writes the next generation, held for `ttl` from now; false when another machine wrote it
    /// first.
    async fn next(&mut self, ttl: Duration) -> std::result::Result<bool, String> {
        let claim = ClaimObject {
            owner: self.owner.clone(),
            folder: self.folder.clone(),
            expires_unix_ms: unix_ms(SystemTime::now() + ttl),
        };
        if !create(&self.store, self.generation + 1, &claim).await? {
            return Ok(false);
        }
        // Only the highest generation counts: the one before goes (one a crash left between
        // the two writes stays, harmless, until `cache gc` removes the folder).
        if self.generation > 0 {
            let _ = self.store.delete(&claim_path(self.generation)).await;
        }
        self.generation += 1;
        Ok(true)
    }

    /// Holds the claim for another [`CLAIM_TTL`]; false when it was lost: another machine
    /// took it over after it expired (this machine stalled for that long).
    pub async fn renew(&mut self) -> Result<bool> {
        self.next(CLAIM_TTL)
            .await
            .map_err(|e| Error::snapshot(format!("renewing {}: {e}", self.url)))
    }

    /// The staging home claimed.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Removes the resume `files` here: the export is committed, no machine is to resume it.
    pub async fn forget(&self, files: &[&str]) -> Result<()> {
        let removed = remove(&self.store, files).await;
        removed.map_err(|e| Error::snapshot(format!("removing from {}: {e}", self.url)))
    }

    /// Lets another machine take the claim at once.
    pub async fn release(mut self) -> Result<()> {
        match self.next(Duration::ZERO).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::snapshot(format!("releasing {}: {e}", self.url))),
        }
    }

    /// Copies the resume `files` at the home into `dir` when `dir` holds none of them (a job
    /// another machine left); returns how many came.
    pub async fn pull(&mut self, files: &[&str], dir: &Path) -> Result<usize> {
        if files.iter().any(|f| dir.join(f).exists()) {
            return Ok(0);
        }
        let failed = |e: String| Error::snapshot(format!("reading {}: {e}", self.url));
        let mut there = Vec::with_capacity(files.len());
        for f in files {
            let path = deltalake::Path::from(*f);
            there.push(read_small(&self.store, &path).await.map_err(failed)?);
        }
        let mut pulled = 0;
        for (f, bytes) in files.iter().zip(&there) {
            if let Some(bytes) = bytes {
                super::manifest::write_atomic(&dir.join(f), bytes)?;
                pulled += 1;
            }
        }
        self.mirrored = Some(there);
        Ok(pulled)
    }

    /// Mirrors the resume `files` of `dir` at the home, those that changed since the last
    /// time. They are a sequence (a job, then what it saved): the home's copies of those after
    /// the first that changed are removed before it is written, so that the home never pairs
    /// one job's state with another's.
    pub async fn mirror(&mut self, files: &[&str], dir: &Path) -> Result<()> {
        let mut local = Vec::with_capacity(files.len());
        for f in files {
            let path = dir.join(f);
            match tokio::fs::read(&path).await {
                Ok(bytes) => local.push(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => local.push(None),
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        let from = match &self.mirrored {
            Some(mirrored) => (0..files.len()).find(|&n| mirrored.get(n) != Some(&local[n])),
            None => Some(0),
        };
        let Some(from) = from else {
            return Ok(());
        };
        let failed =
            |e: object_store::Error| Error::snapshot(format!("mirroring to {}: {e}", self.url));
        self.mirrored = None;
        // A put replaces the first changed file at once: the later ones go before it.
        let stale = (from..files.len()).filter(|&n| n > from || local[n].is_none());
        for f in stale.rev().map(|n| files[n]) {
            match self.store.delete(&deltalake::Path::from(f)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        for (f, bytes) in files.iter().zip(&local).skip(from) {
            if let Some(bytes) = bytes {
                let path = deltalake::Path::from(*f);
                let put = self.store.put(&path, bytes.clone().into());
                put.await.map_err(failed)?;
            }
        }
        self.mirrored = Some(local);
        Ok(())
    }
}

/// Removes the resume `files` at the staging home `url`: the export is committed or cancelled,
/// and no machine is to resume it.
pub async fn forget_staged(url: &Url, files: &[&str]) -> Result<()> {
    let failed = |e: String| Error::snapshot(format!("removing from {url}: {e}"));
    let store = delta::object_store(url).map_err(failed)?;
    remove(&store, files).await.map_err(failed)
}

/// Removes `files` (the last first) from `store`, those that are not there aside.
async fn remove(
    store: &deltalake::logstore::ObjectStoreRef,
    files: &[&str],
) -> std::result::Result<(), String> {
    for f in files.iter().rev() {
        match store.delete(&deltalake::Path::from(*f)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// This machine's name for the claims it writes (logged by machines that wait for it).
fn hostname() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// Removes the staging homes under `root` (`<location>/<source-key>/staging/`) that nothing
/// claimed for `max_age`, the time after which a server's job cannot be resumed (as the local
/// staging folders of [`super::SnapshotStore::clean`]): the claim's expiry, or without a claim, the
/// newest object's time. Returns how many objects went.
pub(super) fn collect(root: &Url, max_age: Duration) -> Result<usize> {
    let collected = delta::block_on(|| async {
        let store = delta::object_store(root)?;
        let listed = store.list_with_delimiter(None).await;
        let folders = listed.map_err(|e| e.to_string())?.common_prefixes;
        let mut removed = 0;
        for folder in folders {
            let objects: Vec<object_store::ObjectMeta> = store
                .list(Some(&folder))
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            let claim = objects
                .iter()
                .filter_map(|o| Some((o.location.filename().and_then(generation)?, o)))
                .max_by_key(|(g, _)| *g);
            let touched = objects.iter().map(|o| SystemTime::from(o.last_modified));
            let mut alive_until = touched.max().unwrap_or(UNIX_EPOCH);
            if let Some((_, o)) = claim
                && let Ok(Some(bytes)) = read_small(&store, &o.location).await
                && let Ok(held) = serde_json::from_slice::<ClaimObject>(&bytes)
            {
                let expires = UNIX_EPOCH + Duration::from_millis(held.expires_unix_ms);
                alive_until = alive_until.max(expires);
            }
            if alive_until + max_age > SystemTime::now() {
                continue;
            }
            for o in &objects {
                match store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(removed)
    })?;
    collected.map_err(|e| Error::snapshot(format!("{root}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: &[&str] = &[".job.json", ".saved.json"];

    fn home(dir: &Path) -> Url {
        Url::from_directory_path(dir.join("staging").join("job")).unwrap()
    }

    async fn take(url: &Url) -> Claim {
        let folder = uuid::Uuid::new_v4().simple().to_string();
        match Claim::take(url, &folder).await.unwrap() {
            Claiming::Taken(claim) => claim,
            held => panic!("not taken: {held:?}"),
        }
    }

    fn claims(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("staging").join("job"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| generation(n).is_some())
            .collect();
        names.sort();
        names
    }

    /// One machine holds a claim at a time; a released or expired one is taken over, and the
    /// machine that lost it learns so when it renews.
    #[tokio::test]
    async fn a_claim_is_held_by_one_machine_until_released_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let url = home(dir.path());
        let mut first = take(&url).await;
        assert!(first.renew().await.unwrap());
        assert_eq!(claims(dir.path()), [format!("claim.{:020}.json", 2)]);
        match Claim::take(&url, "another folder").await.unwrap() {
            Claiming::Held { owner, until } => {
                assert_eq!(owner, first.owner);
                assert!(until > SystemTime::now() + CLAIM_TTL - Duration::from_secs(5));
            }
            taken => panic!("taken from a live holder: {taken:?}"),
        }
        // A process of the holder's folder takes it: the holder died (it held the folder's
        // lock of the export).
        let Claiming::Taken(first) = Claim::take(&url, &first.folder).await.unwrap() else {
            panic!("not taken by the holder's folder");
        };
        assert_eq!(first.generation, 3);
        first.release().await.unwrap();
        let mut second = take(&url).await;
        assert_eq!(second.generation, 5);

        // Its machine died: the claim expires, and the next machine takes it over.
        let expired = ClaimObject {
            owner: second.owner.clone(),
            folder: second.folder.clone(),
            expires_unix_ms: unix_ms(SystemTime::now() - Duration::from_secs(1)),
        };
        let at = dir.path().join("staging/job").join(claim_path(5).as_ref());
        std::fs::write(&at, serde_json::to_vec(&expired).unwrap()).unwrap();
        let third = take(&url).await;
        assert_eq!(third.generation, 6);
        assert!(!second.renew().await.unwrap(), "lost to the third machine");
        assert_eq!(claims(dir.path()), [format!("claim.{:020}.json", 6)]);
    }

    /// The resume files go to the home as they change, in order (a changed first one removes
    /// the later ones there before it is written), and come back into a machine's empty
    /// folder, never over one that has its own.
    #[tokio::test]
    async fn resume_files_are_mirrored_and_pulled_into_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let url = home(dir.path());
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let there = |f: &str| std::fs::read(dir.path().join("staging/job").join(f)).ok();
        let mut claim = take(&url).await;
        std::fs::write(a.join(FILES[0]), "job 1").unwrap();
        std::fs::write(a.join(FILES[1]), "saved 1").unwrap();
        claim.mirror(FILES, &a).await.unwrap();
        assert_eq!(there(FILES[1]).as_deref(), Some(&b"saved 1"[..]));

        // A new job: its state replaces the old one's, and what the old one saved goes.
        std::fs::remove_file(a.join(FILES[1])).unwrap();
        std::fs::write(a.join(FILES[0]), "job 2").unwrap();
        claim.mirror(FILES, &a).await.unwrap();
        assert_eq!(there(FILES[0]).as_deref(), Some(&b"job 2"[..]));
        assert_eq!(there(FILES[1]), None);
        claim.release().await.unwrap();

        let mut next = take(&url).await;
        assert_eq!(next.pull(FILES, &b).await.unwrap(), 1);
        assert_eq!(std::fs::read(b.join(FILES[0])).unwrap(), b"job 2");
        assert_eq!(next.pull(FILES, &a).await.unwrap(), 0, "a has its own");
        forget_staged(&url, FILES).await.unwrap();
        assert_eq!(there(FILES[0]), None);
    }

    /// `cache gc` removes the staging of exports nothing claimed for the staging age, and
    /// keeps a live one.
    #[tokio::test]
    async fn collection_removes_the_staging_nothing_claims() {
        let dir = tempfile::tempdir().unwrap();
        let live = Url::from_directory_path(dir.path().join("staging/live")).unwrap();
        let dead = home(dir.path());
        let mut claim = take(&dead).await;
        std::fs::write(dir.path().join(FILES[0]), "job").unwrap();
        claim.mirror(FILES, dir.path()).await.unwrap();
        claim.release().await.unwrap();
        let _live = take(&live).await;
        let root = Url::from_directory_path(dir.path().join("staging")).unwrap();
        let hour = Duration::from_secs(3600);
        let collected = tokio::task::spawn_blocking(move || {
            (
                collect(&root, hour).unwrap(),
                collect(&root, Duration::ZERO).unwrap(),
            )
        });
        assert_eq!(
            collected.await.unwrap(),
            (0, 2),
            "the job file and its claim"
        );
        assert!(!dir.path().join("staging/job").join(FILES[0]).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("staging/live"))
                .unwrap()
                .count(),
            1
        );
    }
}
