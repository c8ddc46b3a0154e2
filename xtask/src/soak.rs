//! `cargo xtask soak [--moves N] [--json]`: kv moved back and forth between the two hosts of
//! a [`TwoHosts`] topology (pre-copy twice, zero-copy twice, and again), with a kv client
//! checking every reply, and host-vmm's memory and open fds watched (docs/measuring.md).
//!
//! Every move starts a fresh `host-vmm receive` on the other host and the old source exits
//! ([`HostVmmGuest::move_to_other`], the helpers every move test uses), so the process on each
//! side is new every other move. What could leak is what a move carries or leaves behind: the
//! serving host-vmm is sampled once the guest has settled after each move, and the samples
//! are compared per series (host and mode: each side receives pre-copy and zero-copy moves in
//! turn) after the warm-up (the first 10 moves, or half of a shorter soak): the floor of the
//! last samples against the floor of the first ([`Report::rss_growth_kib`]). Memory is host-vmm's own (`RssAnon`: heap, stacks; guest RAM is a
//! shared memfd, counted in `RssShmem`, and grows with what the guest touches, not with
//! what host-vmm keeps); `VmRSS` is reported too.

use crate::bench::migrate::Mode;
use crate::migrate::HostVmmGuest;
use crate::net::{GUEST_IP, Side, TwoHosts};
use crate::proc::{self, Watched};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The image moved.
pub const IMAGE: &str = "kv";
/// Guest RAM.
const MEM_MIB: u32 = 128;
/// Moves between two reports (and per kv client session).
pub const REPORT_EVERY: u32 = 10;
/// The most host-vmm's own memory may grow after the warm-up.
pub const MAX_RSS_GROWTH_KIB: u64 = 1024;
/// The most open fds may grow after the warm-up.
pub const MAX_FD_GROWTH: u64 = 0;
/// Bound for the guest to settle after a move (agent answers, back on the VF).
const SETTLE: Duration = Duration::from_secs(30);
/// Samples at each end of a series whose lowest value is compared.
const FLOOR: usize = 3;
/// A kv session's own bound (netprobe's limit is 240 s); it ends earlier on its stop file.
const KV_SECONDS: u32 = 230;

/// One look at the host-vmm serving the guest after a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Moves done when it was taken.
    pub moves: u32,
    /// Where the guest runs.
    pub side: Side,
    /// How it got there.
    pub mode: Mode,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `RssAnon`, KiB: host-vmm's own memory.
    pub anon_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// What a soak saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Moves done.
    pub moves: u32,
    /// Moves that failed and kv sessions that saw a wrong or missing reply.
    pub failures: u32,
    /// What failed, in words.
    pub failed: Vec<String>,
    /// Every sample, one per move.
    pub samples: Vec<Sample>,
}

impl Report {
    /// The moves after which samples count as steady state.
    pub fn warm_up(&self) -> u32 {
        REPORT_EVERY.min(self.moves / 2)
    }

    /// Growth of `value` after the warm-up, the largest over the series (side and mode):
    /// the floor of a series' last samples against the floor of its first ones, [`FLOOR`]
    /// samples each (fewer in a short series). A leak raises the floor for good; a transient
    /// (an API connection the harness's `status` left open a moment, a buffer freed a little
    /// later) does not.
    fn growth(&self, value: impl Fn(&Sample) -> u64) -> u64 {
        let mut worst = 0;
        for side in [Side::Source, Side::Destination] {
            for mode in [Mode::PreCopy, Mode::ZeroCopy] {
                let series: Vec<u64> = self
                    .samples
                    .iter()
                    .filter(|s| s.side == side && s.mode == mode && s.moves > self.warm_up())
                    .map(&value)
                    .collect();
                let k = FLOOR.min(series.len() / 2).max(1);
                let floor = |part: &[u64]| part.iter().copied().min();
                let (Some(first), Some(last)) = (
                    floor(&series[..k.min(series.len())]),
                    floor(&series[series.len().saturating_sub(k)..]),
                ) else {
                    continue;
                };
                worst = worst.max(last.saturating_sub(first));
            }
        }
        worst
    }

    /// Growth of host-vmm's own memory (`RssAnon`), KiB.
    pub fn rss_growth_kib(&self) -> u64 {
        self.growth(|s| s.anon_kib)
    }

    /// Growth of the open fd count.
    pub fn fd_growth(&self) -> u64 {
        self.growth(|s| s.fds)
    }

    /// The closing JSON line.
    pub fn json(&self) -> String {
        // In the order the issue gives (serde_json would sort the keys).
        format!(
            r#"{{"moves":{},"failures":{},"rss_growth_kib":{},"fd_growth":{}}}"#,
            self.moves,
            self.failures,
            self.rss_growth_kib(),
            self.fd_growth()
        )
    }

    /// Why the soak fails, if it does.
    pub fn verdict(&self) -> Result<()> {
        let mut wrong = self.failed.clone();
        if self.rss_growth_kib() > MAX_RSS_GROWTH_KIB {
            wrong.push(format!(
                "host-vmm's own memory grew by {} KiB after the warm-up (at most {MAX_RSS_GROWTH_KIB})",
                self.rss_growth_kib()
            ));
        }
        if self.fd_growth() > MAX_FD_GROWTH {
            wrong.push(format!(
                "host-vmm's open fds grew by {} after the warm-up",
                self.fd_growth()
            ));
        }
        if !wrong.is_empty() {
            bail!("the soak failed:\n  {}", wrong.join("\n  "));
        }
        Ok(())
    }
}

/// The mode of move `n` (from 1): two pre-copy, two zero-copy, and again, so each host
/// receives both kinds.
pub fn mode_of(n: u32) -> Mode {
    if ((n - 1) / 2).is_multiple_of(2) {
        Mode::PreCopy
    } else {
        Mode::ZeroCopy
    }
}

/// A `key: N kB` line of `/proc/<pid>/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Samples process `pid`.
fn sample(pid: u32, moves: u32, side: Side, mode: Mode) -> Result<Sample> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(proc_dir.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let name = status.lines().next().unwrap_or_default();
    if !name.ends_with("host-vmm") {
        bail!("process {pid} is not host-vmm (`{name}`): the soak would measure the wrong one");
    }
    let field = |key: &str| {
        status_kib(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(proc_dir.join("fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok(Sample {
        moves,
        side,
        mode,
        rss_kib: field("VmRSS")?,
        anon_kib: field("RssAnon")?,
        fds,
    })
}

/// A kv client session in the client namespace, checking every reply until its stop file
/// appears.
struct KvSession {
    stop: PathBuf,
    run: std::thread::JoinHandle<Result<Watched>>,
}

impl KvSession {
    fn start(hosts: &TwoHosts, tag: &str) -> Result<KvSession> {
        let stop =
            std::env::temp_dir().join(format!("roam-soak-{}-{tag}.stop", std::process::id()));
        let _ = std::fs::remove_file(&stop);
        let mut cmd = hosts.client(crate::netprobe_path());
        cmd.args([
            "kv-for",
            &format!("{GUEST_IP}:6380"),
            &KV_SECONDS.to_string(),
        ])
        .arg(&stop);
        let bound = Duration::from_secs(u64::from(KV_SECONDS) + 30);
        let run = std::thread::spawn(move || proc::watch(&mut cmd, "", bound));
        // Connected and busy before the first move.
        std::thread::sleep(Duration::from_secs(1));
        Ok(KvSession { stop, run })
    }

    /// Stops it; its summary line, or why it failed.
    fn finish(self) -> Result<String, String> {
        let _ = std::fs::write(&self.stop, b"stop");
        let result = self.run.join();
        let _ = std::fs::remove_file(&self.stop);
        match result {
            Ok(Ok(w)) if w.status.success() => Ok(w.stdout.trim().to_string()),
            Ok(Ok(w)) => Err(format!("kv client {}: {}", w.status, w.stdout.trim())),
            Ok(Err(e)) => Err(format!("kv client: {e:#}")),
            Err(_) => Err("the kv client's thread panicked".into()),
        }
    }
}

/// Moves kv `moves` times (see the module docs), printing a line per move and a report every
/// [`REPORT_EVERY`] moves on stderr.
pub fn run(image: &Path, moves: u32) -> Result<Report> {
    let hosts = TwoHosts::up("sk")?;
    let mut guest = HostVmmGuest::boot(&hosts, image, MEM_MIB, "")?;
    guest.wait_settled(SETTLE)?;
    let mut report = Report {
        moves: 0,
        failures: 0,
        failed: Vec::new(),
        samples: Vec::new(),
    };
    let mut done = 0;
    while done < moves {
        let block = REPORT_EVERY.min(moves - done);
        let kv = KvSession::start(&hosts, &done.to_string())?;
        for _ in 0..block {
            done += 1;
            let mode = mode_of(done);
            guest.wait_settled(SETTLE)?;
            match guest.move_to_other(&hosts, mode, None) {
                Ok(m) => eprintln!(
                    "soak: move {done}/{moves} {} to the {} host: pause {:.1} ms, total {:.0} ms",
                    mode.key(),
                    m.to.key(),
                    m.summary.pause_ms,
                    m.summary.total_ms
                ),
                Err(e) => {
                    report.failures += 1;
                    report
                        .failed
                        .push(format!("move {done} ({}): {e:#}", mode.key()));
                    eprintln!("soak: move {done}/{moves} {} FAILED: {e:#}", mode.key());
                    if !guest.running() {
                        report.moves = done;
                        bail!(
                            "the guest is gone after move {done}: {}\n{}",
                            report.failed.join("\n"),
                            guest.console_tail(40)
                        );
                    }
                    continue;
                }
            }
            guest.wait_settled(SETTLE)?;
            report
                .samples
                .push(sample(guest.pid(), done, guest.side(), mode)?);
        }
        match kv.finish() {
            Ok(line) => eprintln!("soak: {line}"),
            Err(why) => {
                report.failures += 1;
                report
                    .failed
                    .push(format!("moves {}..={done}: {why}", done - block + 1));
                eprintln!("soak: FAILED: {why}");
            }
        }
        report.moves = done;
        eprintln!("{}", progress(&report));
    }
    Ok(report)
}

/// The report line every [`REPORT_EVERY`] moves: the latest sample of each host.
fn progress(report: &Report) -> String {
    let mut line = format!("soak: after {} moves:", report.moves);
    for side in [Side::Source, Side::Destination] {
        if let Some(s) = report.samples.iter().rev().find(|s| s.side == side) {
            line.push_str(&format!(
                " {} host (move {}, {}): RSS {} KiB, own {} KiB, {} fds;",
                side.key(),
                s.moves,
                s.mode.key(),
                s.rss_kib,
                s.anon_kib,
                s.fds
            ));
        }
    }
    line.push_str(&format!(" failures {}", report.failures));
    line
}

/// The closing table.
pub fn table(report: &Report) -> String {
    format!(
        "soak: {} moves, {} failures; after the first {} moves host-vmm's own memory grew by \
         {} KiB (at most {MAX_RSS_GROWTH_KIB}) and its open fds by {} (at most {MAX_FD_GROWTH})\n",
        report.moves,
        report.failures,
        report.warm_up(),
        report.rss_growth_kib(),
        report.fd_growth()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(moves: u32, side: Side, mode: Mode, anon_kib: u64, fds: u64) -> Sample {
        Sample {
            moves,
            side,
            mode,
            rss_kib: anon_kib + 100_000,
            anon_kib,
            fds,
        }
    }

    #[test]
    fn modes_alternate_in_pairs_so_each_host_gets_both() {
        let modes: Vec<_> = (1..=8).map(mode_of).collect();
        use Mode::{PreCopy as P, ZeroCopy as Z};
        assert_eq!(modes, [P, P, Z, Z, P, P, Z, Z]);
        // Odd moves land on the destination host, even ones back on the source host.
        assert!(modes.iter().step_by(2).any(|m| *m == P));
        assert!(modes.iter().step_by(2).any(|m| *m == Z));
    }

    #[test]
    fn growth_is_per_series_after_the_warm_up_and_ignores_transients() {
        let (a, b) = (Side::Source, Side::Destination);
        let (p, z) = (Mode::PreCopy, Mode::ZeroCopy);
        let series = |side, mode, first: u32, values: &[(u64, u64)]| -> Vec<Sample> {
            values
                .iter()
                .enumerate()
                .map(|(i, &(kib, fds))| s(first + 4 * i as u32, side, mode, kib, fds))
                .collect()
        };
        let mut samples = vec![s(1, b, p, 9_000, 90)]; // warm-up: ignored
        // Zero-copy runs bigger than pre-copy: another series, not growth.
        samples.extend(series(b, p, 11, &[(5_000, 30), (5_100, 30), (5_050, 30)]));
        samples.extend(series(b, p, 23, &[(5_300, 30), (5_400, 30), (5_350, 30)]));
        // Two fds held a moment (a transient) do not count.
        samples.extend(series(
            b,
            z,
            13,
            &[(8_000, 31), (8_000, 33), (8_000, 31), (8_000, 31)],
        ));
        let mut r = Report {
            moves: 40,
            failures: 0,
            failed: Vec::new(),
            samples,
        };
        assert_eq!(r.warm_up(), 10);
        assert_eq!(r.rss_growth_kib(), 300);
        assert_eq!(r.fd_growth(), 0);
        assert!(r.verdict().is_ok());
        assert_eq!(
            r.json(),
            r#"{"moves":40,"failures":0,"rss_growth_kib":300,"fd_growth":0}"#
        );
        // A leak raises the floor for good.
        let leak = [
            (5_000, 30),
            (5_000, 30),
            (5_000, 30),
            (7_000, 32),
            (7_100, 33),
            (7_200, 34),
        ];
        r.samples.extend(series(a, p, 12, &leak));
        assert_eq!(r.fd_growth(), 2);
        assert_eq!(r.rss_growth_kib(), 2_000);
        let err = r.verdict().unwrap_err().to_string();
        assert!(err.contains("memory grew by 2000 KiB") && err.contains("fds grew by 2"));
        r.failures = 1;
        r.failed.push("move 7: refused".into());
        assert!(r.verdict().unwrap_err().to_string().contains("move 7"));
    }

    #[test]
    fn proc_status_fields_are_read() {
        let text = "Name:\thost-vmm\nVmRSS:\t  151234 kB\nRssAnon:\t    8120 kB\n";
        assert_eq!(status_kib(text, "VmRSS"), Some(151_234));
        assert_eq!(status_kib(text, "RssAnon"), Some(8_120));
        assert_eq!(status_kib(text, "RssFile"), None);
        let err = sample(std::process::id(), 1, Side::Source, Mode::PreCopy).unwrap_err();
        assert!(err.to_string().contains("is not host-vmm"), "{err}");
    }
}
