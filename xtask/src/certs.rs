//! Certificate directories for moves over TCP (mutual TLS): `cargo xtask certs DIR`, and
//! the throwaway ones the move helpers, the benchmarks and the tests use, for every address
//! a test topology receives moves on.

use crate::net::MIGRATION_IPS;
use crate::net::wan::{H1_WAN_IP, Site};
use anyhow::{Context, Result};
use migration_wire::tls;
use std::path::{Path, PathBuf};

/// Writes a CA and its server and client certificates into `dir` (keys 0600), the server's
/// for `names` (IP addresses become IP SANs, others DNS SANs).
pub fn make(dir: &Path, names: &[String]) -> Result<()> {
    tls::generate(names)?
        .write(dir)
        .with_context(|| format!("writing {}", dir.display()))
}

/// Every address a test topology listens for moves on, and the loopback (proxies).
pub fn test_names() -> Vec<String> {
    let mut names: Vec<String> = ["127.0.0.1", "localhost", H1_WAN_IP]
        .into_iter()
        .chain(MIGRATION_IPS)
        .chain([Site::A.care_of(), Site::B.care_of()])
        .map(str::to_owned)
        .collect();
    names.dedup();
    names
}

/// A certificate directory for the test topologies' addresses ([`test_names`]) under the
/// temp directory, removed when dropped.
#[derive(Debug)]
pub struct CertDir(PathBuf);

impl CertDir {
    /// Makes one.
    pub fn for_tests() -> Result<CertDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "roam-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let made = CertDir(dir);
        make(&made.0, &test_names())?;
        Ok(made)
    }

    /// The directory (give it to `--tls-dir` or `tls_dir`).
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as a string, for command lines and JSON bodies.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_test_directory_has_the_layout_and_private_keys() {
        let d = CertDir::for_tests().unwrap();
        for (name, mode) in [
            (tls::CA_CERT, 0o644),
            (tls::SERVER_CERT, 0o644),
            (tls::SERVER_KEY, 0o600),
            (tls::CLIENT_CERT, 0o644),
            (tls::CLIENT_KEY, 0o600),
        ] {
            let m = std::fs::metadata(d.path().join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, mode, "{name}");
        }
        // Both ends can build their configurations from it.
        tls::server_config(d.path()).unwrap();
        tls::client_config(d.path()).unwrap();
        let path = d.path().to_owned();
        drop(d);
        assert!(!path.exists());
        assert!(test_names().contains(&MIGRATION_IPS[1].to_owned()));
    }
}
