//! An export's claim at the snapshots' home, kept while the export runs: renewed, and the
//! source's resume files mirrored there, so that another machine waits for this one and
//! resumes its job if it dies ([`crate::snapshot::Claim`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::snapshot::{CLAIM_RENEWAL, Claim};

/// How often the resume files are looked at for a change (a stat and a small read).
const MIRROR_EVERY: Duration = Duration::from_secs(1);

/// The claim of a running export, kept by a task of its own. [`Keeper::finish`] ends it once
/// the export is committed (no machine is to resume it); dropped, as when the export failed
/// or was stopped, the keeper mirrors the resume files one last time and releases the claim,
/// so that the next machine resumes the job at once.
pub(super) struct Keeper {
    done: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Keeps `claim`, mirroring `files` of the staging folder `dir`.
    pub(super) fn start(mut claim: Claim, files: &'static [&'static str], dir: PathBuf) -> Self {
        let (done, mut finished) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut mirror = tokio::time::interval(MIRROR_EVERY);
            let mut renew = tokio::time::interval(CLAIM_RENEWAL);
            renew.tick().await;
            // Lost when another machine took the claim over: its state there is its own then.
            let mut held = true;
            let mut mirrored = true;
            let committed = loop {
                tokio::select! {
                    finish = &mut finished => break finish.is_ok(),
                    _ = mirror.tick(), if held => {
                        let result = claim.mirror(files, &dir).await;
                        // Said once, not every second, while the store is unreachable.
                        if let Err(e) = &result && mirrored {
                            tracing::warn!("{e}");
                        }
                        mirrored = result.is_ok();
                    }
                    _ = renew.tick(), if held => match claim.renew().await {
                        Ok(true) => {}
                        // This export goes on: both commit, and Delta orders the two.
                        Ok(false) => {
                            let url = claim.url();
                            tracing::warn!("{url}: another machine took over this export's claim");
                            held = false;
                        }
                        Err(e) => tracing::warn!("{e}"),
                    },
                }
            };
            if !held {
                return;
            }
            let settled = match committed {
                true => claim.forget(files).await,
                false => claim.mirror(files, &dir).await,
            };
            if let Err(e) = settled {
                tracing::warn!("{e}");
            }
            if let Err(e) = claim.release().await {
                tracing::warn!("{e}");
            }
        });
        Keeper { done, task }
    }

    /// The export is committed: its resume files go from the home, and the claim is released.
    pub(super) async fn finish(self) {
        let _ = self.done.send(());
        let _ = self.task.await;
    }
}
