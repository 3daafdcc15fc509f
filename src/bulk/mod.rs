//! Bulk Data client: kick-off, status polling, manifest, downloads, job lifecycle.
