//! [`PublicDir`]: a temporary directory any user may read, for what a test runs as another
//! user. The checkout may be private (a clone into `mktemp -d` is mode 0700), so a binary or
//! image an unprivileged user must open is copied here first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory anyone may enter and read, removed with what it holds when dropped.
pub struct PublicDir(PathBuf);

impl PublicDir {
    /// A fresh directory under the system's temp dir, mode 0755, named after `tag` and this
    /// process.
    pub fn new(tag: &str) -> PublicDir {
        let dir = std::env::temp_dir().join(format!("roam-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("creating a temp directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("making the temp directory public");
        PublicDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Copies `file` in, readable and executable by anyone; returns the copy's path.
    pub fn copy(&self, file: &Path) -> PathBuf {
        let to = self.0.join(file.file_name().expect("a file name"));
        std::fs::copy(file, &to).expect("copying into the temp directory");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .expect("making the copy public");
        to
    }
}

impl Drop for PublicDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
