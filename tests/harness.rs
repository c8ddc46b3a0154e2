//! Shared pieces of Roam's integration tests.
//!
//! The tests expect what `cargo xtask test` builds first: the release host-vmm and every
//! image in target/images/. They boot real VMs through the same code as `cargo xtask run`.

#![deny(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use xtask::vm::{Boot, GuestRun, NetAttach, Vmm};

/// Generous bound for one boot: a hung guest fails the test instead of hanging CI.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Prints straight to the test's stderr, past libtest's capture, so the figures a test
/// reports are always seen.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// For a test that needs KVM: `true` when /dev/kvm is usable. When it is not, the test fails
/// saying why and what to do, unless the run opted out (`cargo xtask test --no-kvm`): then it
/// prints `skipped: TEST: REASON`, which the runner counts, and returns `false` (the test
/// returns at once). The one skip the tests have (`xtask::skip`).
pub fn kvm_present(test: &str) -> bool {
    xtask::skip::kvm_or_skip(test)
}

/// Whether this process is root (some bad-input cases need to drop or hide privileges).
pub fn is_root() -> bool {
    xtask::prereq::is_root()
}

/// Fails `test` unless it runs as root (network namespaces, hiding /dev/kvm, dropping
/// privileges need it; `cargo xtask test` checks it before it starts).
pub fn root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (network namespaces, privileges to drop): run the tests as root, e.g. `sudo -E cargo xtask test`"
    );
}

/// `program`, after checking it is on PATH; fails saying which Debian package installs it.
pub fn tool<'a>(program: &'a str, package: &str) -> &'a str {
    assert!(
        xtask::prereq::on_path(program),
        "`{program}` is not on PATH: install the Debian package {package}"
    );
    program
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("the command starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The built image `name`, or a panic that says how to build it.
pub fn image(name: &str) -> PathBuf {
    let path = xtask::image_path(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask image --all` (`cargo xtask test` does it for you)",
        path.display()
    );
    path
}

/// The release host-vmm binary, or a panic that says how to build it.
pub fn host_vmm() -> PathBuf {
    let path = xtask::host_vmm_path();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release -p host-vmm` (`cargo xtask test` does it for you)",
        path.display()
    );
    path
}

/// Boots image `name` under `vmm` with `cmdline`, waiting for `ready` on stdout.
pub fn boot(vmm: Vmm, name: &str, cmdline: &str, ready: &str) -> GuestRun {
    let image = image(name);
    boot_with(
        vmm,
        &Boot {
            cmdline,
            ..Boot::new(&image)
        },
        ready,
    )
}

/// Boots `b` under `vmm`, waiting for `ready` on stdout; panics with the reason on failure.
pub fn boot_with(vmm: Vmm, b: &Boot, ready: &str) -> GuestRun {
    if vmm == Vmm::HostVmm {
        host_vmm();
    }
    let name = b.image.display();
    vmm.boot(b, ready, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("booting {name} under {}: {e:#}", vmm.key()))
}

/// A file in the temp directory that is removed when dropped, named so runs cannot collide.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Creates `roam-<tag>-<pid>-<n>` with `contents`.
    pub fn new(tag: &str, contents: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("roam-{tag}-{}-{n}", std::process::id()));
        std::fs::write(&path, contents).expect("writing a temp file");
        TempFile(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
