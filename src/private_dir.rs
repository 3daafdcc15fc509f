//! Folders that hold patient data (the snapshot cache, an export's folder) are readable by their
//! owner only: created with mode 0700 on Unix, so the NDJSON, Parquet and manifests inside are
//! out of other local users' reach whatever their own modes.

use std::io;
use std::path::Path;

/// Creates `path` and its missing parents, each new one readable by its owner only; folders
/// that exist are left as they are.
pub(crate) fn create(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Makes the existing folder `path` readable by its owner only (a cache made by an earlier
/// version, with the default mode).
pub(crate) fn restrict(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_folders_are_the_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let nested = root.path().join("a/b");
        create(&nested).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&root.path().join("a")), mode(&nested)),
            (0o700, 0o700)
        );
        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o755)).unwrap();
        restrict(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
    }
}
