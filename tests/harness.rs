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

/// The longest pause a move may take (`pause_ms` in its summary: source vCPU stop to
/// destination vCPU run). host-vmm pauses for milliseconds; the bound is generous because
/// the tests run on nested KVM on a shared machine.
pub const MAX_PAUSE_MS: f64 = 2000.0;

/// The longest silence a move may cause in a client's traffic (the longest ping gap, the
/// longest wait for a kv reply, the longest stretch of iperf3 intervals without a byte):
/// the pause, the switch back to the VF and the network learning the new port, generously.
pub const MAX_MOVE_GAP: Duration = Duration::from_secs(5);

/// Fails unless `pause_ms`, a move's pause, is positive and at most [`MAX_PAUSE_MS`].
pub fn assert_pause(what: &str, pause_ms: f64) {
    assert!(
        pause_ms > 0.0 && pause_ms <= MAX_PAUSE_MS,
        "{what}: pause {pause_ms:.3} ms, expected more than 0 and at most {MAX_PAUSE_MS} ms"
    );
}

/// Fails unless `gap_ms`, the longest silence around a move, is at most [`MAX_MOVE_GAP`].
pub fn assert_gap(what: &str, gap_ms: f64) {
    assert!(
        gap_ms <= MAX_MOVE_GAP.as_secs_f64() * 1e3,
        "{what}: traffic stopped for {gap_ms:.1} ms (bound {MAX_MOVE_GAP:?})"
    );
}

/// ping's arguments for `count` echoes `interval` seconds apart, each to be answered (see
/// [`unanswered_pings`]): `-c` with a deadline (`-w`), so ping waits for late replies until
/// the deadline. With `-W` instead, ping stops waiting two round trips after its last
/// request, and a reply delayed by a busy guest would count as lost. With a deadline, ping
/// goes on sending past `count` until it has `count` replies; those extra requests are not
/// checked.
pub fn ping_args(count: u32, interval: f64) -> Vec<String> {
    let deadline = (f64::from(count) * interval).ceil() as u64 + 5;
    vec![
        "-c".into(),
        count.to_string(),
        "-i".into(),
        interval.to_string(),
        "-w".into(),
        deadline.to_string(),
    ]
}

/// The sequence numbers among the first `count` of a ping run (`text`, its stdout) that got
/// no reply.
pub fn unanswered_pings(text: &str, count: u32) -> Vec<u32> {
    let answered: std::collections::BTreeSet<u32> = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    (1..=count).filter(|k| !answered.contains(k)).collect()
}

/// Fails unless the first `count` requests of the ping run `text` were all answered.
pub fn assert_pings_answered(what: &str, text: &str, count: u32) {
    let missing = unanswered_pings(text, count);
    assert!(
        missing.is_empty(),
        "{what}: no reply to ping(s) {missing:?} of {count}:\n{text}"
    );
}

/// The longest wait for a reply in `netprobe kv-for`'s summary line, in ms.
pub fn kv_longest_wait_ms(summary: &str) -> f64 {
    summary
        .split("longest wait ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no `longest wait N ms` in the kv-for summary: {summary}"))
}

/// What stock `iperf3 --json` reported: fails on output that is not JSON, on an `"error"`
/// key (iperf3 reports some failures there and still exits 0), and when nothing arrived.
pub fn iperf3_report(what: &str, stdout: &str) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{what}: iperf3 printed no JSON ({e}):\n{stdout}"));
    if let Some(error) = json.get("error") {
        panic!("{what}: iperf3 reports an error: {error}\n{stdout}");
    }
    let received = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(received > 0.0, "{what}: iperf3 received nothing:\n{stdout}");
    json
}

/// The longest stretch of consecutive iperf3 intervals in which no byte moved, in ms (0 when
/// every interval moved some): a move's or a switch's silence, at the intervals' resolution.
pub fn iperf3_longest_silence_ms(report: &serde_json::Value) -> f64 {
    let (mut longest, mut current) = (0.0f64, 0.0f64);
    for interval in report["intervals"].as_array().into_iter().flatten() {
        let sum = &interval["sum"];
        if sum["bytes"].as_f64() == Some(0.0) {
            current += sum["seconds"].as_f64().unwrap_or(0.0) * 1e3;
            longest = longest.max(current);
        } else {
            current = 0.0;
        }
    }
    longest
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
        let file = TempFile::reserve(tag);
        file.write(contents);
        file
    }

    /// Names `roam-<tag>-<pid>-<n>` without creating it: a stop file, say, whose creation
    /// (`write`) tells a `netprobe` session to end.
    pub fn reserve(tag: &str) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("roam-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }

    /// Writes `contents` to it, creating it.
    pub fn write(&self, contents: &[u8]) {
        std::fs::write(&self.0, contents).expect("writing a temp file");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_pings_lists_the_missing_among_the_first_count() {
        let text = "PING 198.18.0.10 (198.18.0.10) 56(84) bytes of data.\n\
            64 bytes from 198.18.0.10: icmp_seq=1 ttl=64 time=1.48 ms\n\
            64 bytes from 198.18.0.10: icmp_seq=3 ttl=64 time=4.55 ms\n\
            64 bytes from 198.18.0.10: icmp_seq=3 ttl=64 time=4.60 ms (DUP!)\n\
            64 bytes from 198.18.0.10: icmp_seq=5 ttl=64 time=1.67 ms\n\
            --- 198.18.0.10 ping statistics ---\n\
            5 packets transmitted, 4 received, 20% packet loss, time 191ms\n";
        assert_eq!(unanswered_pings(text, 4), vec![2, 4]);
        assert_eq!(unanswered_pings(text, 1), Vec::<u32>::new());
        assert_eq!(unanswered_pings("", 2), vec![1, 2]);
    }
}
