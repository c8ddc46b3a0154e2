//! The memtouch cases of `cargo xtask bench migrate`: pre-copy of a guest that dirties memory
//! faster than the migration link carries it, where plain pre-copy cannot converge.
//!
//! `memtouch` (images/memtouch) populates 256 MiB or 1 GiB and rewrites [`DIRTY_MIB_S`]
//! MiB/s of it, checking its pattern all the time; the hosts' migration link is capped at
//! [`LINK_MBIT`] Mbit/s (a `tbf` qdisc on `mig0`, the same for both VMMs), below that rate.
//! Each case boots the guest and moves it once, under three movers in turn: host-vmm (whose
//! pre-copy auto-converges by throttling the vCPU, docs/migration.md §4.1), QEMU's plain
//! pre-copy (cancelled, and counted as not converging, after [`PLAIN_BOUND_PASSES`] times
//! the first pass's expected time), and QEMU with its `auto-converge` capability on (its
//! defaults, the rule host-vmm follows), so the comparison is like for like. Both pause
//! targets are 300 ms (host-vmm's `--downtime-ms` and QEMU's `downtime-limit` defaults).
//! After a move the guest must run at the destination for two more full checks of its
//! memory with nothing wrong (`memtouch: sweep N clean`).
//!
//! The pause is measured as in the other cases (docs/measuring.md §3): source vCPU stopped
//! to destination about to run, from each VMM's own wall-clock records. No ping runs here:
//! these cases are about convergence and the pause.

use super::hostvmm_migrate::pause_stamps;
use super::migrate::{Mode, pause_between};
use super::qemu_migrate::QemuMigration;
use crate::migrate::HostVmmGuest;
use crate::net::TwoHosts;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The image.
pub const IMAGE: &str = "memtouch";
/// What memtouch populates, MiB.
pub const POPULATED_MIB: [u32; 2] = [256, 1024];
/// How fast it dirties, MiB/s (33.5 MB/s).
pub const DIRTY_MIB_S: u32 = 32;
/// The migration link, Mbit/s (25 MB/s: below the dirtying rate).
pub const LINK_MBIT: u32 = 200;
/// Guest RAM beyond what memtouch populates (kernel, heap, its generation table), MiB.
const HEADROOM_MIB: u32 = 64;
/// QEMU's plain pre-copy counts as not converging after this many first passes' time.
pub const PLAIN_BOUND_PASSES: u32 = 4;
/// Bound for a move that converges (a few minutes at 1 GiB over this link).
const MOVE_BOUND: Duration = Duration::from_secs(900);
/// Bound for memtouch's first full check after boot, and for two after a move.
const SWEEP_BOUND: Duration = Duration::from_secs(180);

/// Who moved the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// host-vmm (auto-converge built in).
    HostVmm,
    /// QEMU, plain pre-copy.
    QemuPlain,
    /// QEMU with `auto-converge`.
    QemuAutoConverge,
}

impl Vmm {
    /// All three, in table order.
    pub const ALL: [Vmm; 3] = [Vmm::HostVmm, Vmm::QemuPlain, Vmm::QemuAutoConverge];

    /// Its name in the table and JSON.
    pub fn key(self) -> &'static str {
        match self {
            Vmm::HostVmm => "host_vmm",
            Vmm::QemuPlain => "qemu",
            Vmm::QemuAutoConverge => "qemu+auto-converge",
        }
    }
}

/// One move of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadFigures {
    /// Who moved it.
    pub vmm: Vmm,
    /// What memtouch populated, MiB.
    pub populated_mib: u32,
    /// Whether the move finished (else it was cancelled after `total_ms`).
    pub converged: bool,
    /// Source vCPU stopped to destination about to run, ms.
    pub pause_ms: Option<f64>,
    /// The VMM's own pause figure, ms.
    pub vmm_pause_ms: Option<f64>,
    /// The whole move (or until it was cancelled), ms.
    pub total_ms: f64,
    /// Memory passes.
    pub passes: Option<u64>,
    /// The highest vCPU throttle, percent.
    pub throttle_percent: Option<u64>,
    /// Full checks memtouch finished clean at the destination.
    pub sweeps_after: u64,
    /// For a move that did not converge: what was still to send when it was cancelled, MiB.
    pub remaining_mib: Option<f64>,
    /// Of the pages memtouch should have dirtied before the move, the share it did, percent
    /// (its last sweep line: `dirtied / (dirtied + behind)`): how close it came to its rate.
    pub kept_up_percent: Option<f64>,
}

/// The last `memtouch: sweep N` in `console`, and how many sweep lines it has.
fn sweeps(console: &str) -> (u64, u64) {
    let numbers: Vec<u64> = console
        .lines()
        .filter_map(|l| {
            let rest = l.split("memtouch: sweep ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (
        numbers.iter().copied().max().unwrap_or(0),
        numbers.len() as u64,
    )
}

/// `dirtied / (dirtied + behind)` of the last sweep line in `console`, percent.
fn kept_up(console: &str) -> Option<f64> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains("memtouch: sweep "))?;
    let field = |name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))?
            .parse()
            .ok()
    };
    let (done, behind) = (field("dirtied=")?, field("behind=")?);
    (done + behind > 0.0).then(|| done * 100.0 / (done + behind))
}

/// Waits until `done(console)`; fails at a corruption or when the guest stops.
fn wait_for(
    what: &str,
    mut console: impl FnMut() -> (String, bool),
    done: impl Fn(&str) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + SWEEP_BOUND;
    loop {
        let (out, running) = console();
        if let Some(line) = out.lines().find(|l| l.contains("memtouch: CORRUPT")) {
            bail!("memtouch found its memory wrong: {line}");
        }
        if done(&out) {
            return Ok(());
        }
        if !running || Instant::now() >= deadline {
            let lines: Vec<&str> = out.lines().collect();
            bail!(
                "memtouch: no {what} within {SWEEP_BOUND:?} (guest running: {running}):\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cmdline(populated_mib: u32) -> String {
    format!("-- {populated_mib} {DIRTY_MIB_S}")
}

/// Runs every memtouch case (of `populated`, or all) under the three movers.
pub fn run(image: &Path, populated: &[u32]) -> Result<Vec<LoadFigures>> {
    if let Some(bad) = populated.iter().find(|s| !POPULATED_MIB.contains(s)) {
        bail!("memtouch sizes: {bad} is not one of {POPULATED_MIB:?} (MiB)");
    }
    let mut out = Vec::new();
    for mib in POPULATED_MIB
        .into_iter()
        .filter(|m| populated.is_empty() || populated.contains(m))
    {
        for vmm in Vmm::ALL {
            eprintln!(
                "migrate bench: memtouch {mib} MiB at {DIRTY_MIB_S} MiB/s over {LINK_MBIT} Mbit/s: {}",
                vmm.key()
            );
            let f = match vmm {
                Vmm::HostVmm => host_vmm(image, mib),
                _ => qemu(image, mib, vmm),
            }
            .with_context(|| format!("{} memtouch {mib} MiB", vmm.key()))?;
            eprintln!("migrate bench: {f:?}");
            out.push(f);
        }
    }
    Ok(out)
}

fn host_vmm(image: &Path, mib: u32) -> Result<LoadFigures> {
    let hosts = TwoHosts::up("bl")?;
    let mut guest = HostVmmGuest::boot(&hosts, image, mib + HEADROOM_MIB, &cmdline(mib))?;
    guest.set_move_timeout(MOVE_BOUND);
    wait_for(
        "first sweep",
        || (guest.console(), guest.running()),
        |o| sweeps(o).0 >= 1,
    )?;
    hosts.limit_migration_link(LINK_MBIT)?;
    let kept_up_percent = kept_up(&guest.console());
    let m = guest.move_to_other(&hosts, Mode::PreCopy, None)?;
    let (stopped, resumed) = pause_stamps(&guest, m.started)?;
    let throttle = m
        .progress
        .lines()
        .filter_map(|l| {
            let p = l.split("vCPU throttled ").nth(1)?;
            p.trim_end_matches('%').trim().parse::<u64>().ok()
        })
        .max();
    let after = sweeps(&guest.console()).0;
    wait_for(
        "two full checks after the move",
        || (guest.console(), guest.running()),
        |o| sweeps(o).0 >= after + 2,
    )?;
    Ok(LoadFigures {
        vmm: Vmm::HostVmm,
        populated_mib: mib,
        converged: true,
        pause_ms: Some(pause_between(stopped, resumed, m.started, m.ended)?),
        vmm_pause_ms: Some(m.summary.pause_ms),
        total_ms: m.summary.total_ms,
        passes: Some(m.summary.passes),
        throttle_percent: Some(throttle.unwrap_or(0)),
        sweeps_after: sweeps(&guest.console()).0 - after,
        remaining_mib: None,
        kept_up_percent,
    })
}

fn qemu(image: &Path, mib: u32, vmm: Vmm) -> Result<LoadFigures> {
    let hosts = TwoHosts::up("bl")?;
    let mut m = QemuMigration::boot(
        &hosts,
        image,
        mib + HEADROOM_MIB,
        &cmdline(mib),
        Mode::PreCopy,
    )?;
    wait_for(
        "first sweep",
        || {
            let vm = &mut m.current().vm;
            (vm.output(), vm.running())
        },
        |o| sweeps(o).0 >= 1,
    )?;
    hosts.limit_migration_link(LINK_MBIT)?;
    m.set_auto_converge(vmm == Vmm::QemuAutoConverge);
    // One first pass at the link's rate is `mib` MiB at LINK_MBIT / 8 MB/s.
    let first_pass =
        Duration::from_secs_f64(f64::from(mib) * 1.048_576 * 8.0 / f64::from(LINK_MBIT));
    let bound = match vmm {
        Vmm::QemuPlain => first_pass * PLAIN_BOUND_PASSES,
        _ => MOVE_BOUND,
    };
    m.set_move_bound(bound);
    let kept_up_percent = kept_up(&m.current().vm.output());
    let started = Instant::now();
    let moved = match m.move_to_other(&hosts) {
        Ok(moved) => moved,
        Err(e) if vmm == Vmm::QemuPlain => {
            let info = m.cancelled().cloned().unwrap_or_default();
            eprintln!("migrate bench: QEMU's plain pre-copy did not converge: {e:#}");
            return Ok(LoadFigures {
                vmm,
                populated_mib: mib,
                converged: false,
                pause_ms: None,
                vmm_pause_ms: None,
                total_ms: started.elapsed().as_secs_f64() * 1e3,
                passes: info.dirty_sync_count,
                throttle_percent: None,
                sweeps_after: 0,
                remaining_mib: info
                    .remaining_bytes
                    .map(|b| b as f64 / f64::from(1u32 << 20)),
                kept_up_percent,
            });
        }
        Err(e) => return Err(e),
    };
    // The destination's output starts at the move: two sweep lines are one whole check there.
    wait_for(
        "two full checks after the move",
        || {
            let vm = &mut m.current().vm;
            (vm.output(), vm.running())
        },
        |o| sweeps(o).1 >= 2,
    )?;
    let sweeps_after = sweeps(&m.current().vm.output()).1;
    Ok(LoadFigures {
        vmm,
        populated_mib: mib,
        converged: true,
        pause_ms: Some(pause_between(
            moved.stopped_at,
            moved.resumed_at,
            moved.started,
            moved.running_at,
        )?),
        // QEMU 7.2 was seen to report 0 for both after a long throttled move: no figure.
        vmm_pause_ms: moved.info.downtime_ms.filter(|&d| d > 0).map(|d| d as f64),
        total_ms: moved
            .info
            .total_time_ms
            .filter(|&t| t > 0)
            .map_or((moved.ended - moved.started) * 1e3, |t| t as f64),
        passes: moved.info.dirty_sync_count,
        throttle_percent: Some(moved.info.cpu_throttle_percentage.unwrap_or(0)),
        sweeps_after,
        remaining_mib: None,
        kept_up_percent,
    })
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The table.
pub fn table(all: &[LoadFigures]) -> String {
    let mut out = format!(
        "\nmemtouch cases: one pre-copy move each of a guest dirtying {DIRTY_MIB_S} MiB/s ({:.1} MB/s) over a migration link capped at {LINK_MBIT} Mbit/s ({:.1} MB/s, tbf on mig0 for both VMMs), where plain pre-copy cannot converge; pause target 300 ms on both\n\
         host_vmm: auto-converge (throttles the vCPU 20%, +10% every two passes that dirty over half what they sent, docs/migration.md 4.1); qemu: plain pre-copy, cancelled after {PLAIN_BOUND_PASSES}x the first pass's time; qemu+auto-converge: QEMU's auto-converge capability on (its defaults, the same rule), for a fair comparison\n\
         kept up: of the pages memtouch should have dirtied before the move, the share it did; pause: source vCPU stopped -> destination about to run (as above); own: the VMM's own pause; check: full memtouch checks clean at the destination after the move\n\n",
        f64::from(DIRTY_MIB_S) * 1.048_576,
        f64::from(LINK_MBIT) / 8.0
    );
    out.push_str(&format!(
        "{:>9} {:<19} {:>8} {:>10} {:>9} {:>8} {:>9} {:>7} {:>10} {:>6}\n",
        "populated",
        "vmm",
        "kept up%",
        "converged",
        "pause ms",
        "own ms",
        "total s",
        "passes",
        "throttle%",
        "check"
    ));
    for f in all {
        out.push_str(&format!(
            "{:>9} {:<19} {:>8} {:>10} {:>9} {:>8} {:>9.1} {:>7} {:>10} {:>6}\n",
            format!("{}M", f.populated_mib),
            f.vmm.key(),
            opt(f.kept_up_percent, 0),
            if f.converged { "yes" } else { "no" },
            opt(f.pause_ms, 1),
            opt(f.vmm_pause_ms, 1),
            f.total_ms / 1e3,
            f.passes.map_or("-".to_string(), |p| p.to_string()),
            f.throttle_percent
                .map_or("-".to_string(), |p| p.to_string()),
            if f.converged {
                format!("{} ok", f.sweeps_after)
            } else {
                format!("- (cancelled, {} MiB left)", opt(f.remaining_mib, 0))
            },
        ));
    }
    out
}

/// The JSON array.
pub fn json(all: &[LoadFigures]) -> serde_json::Value {
    json!({
        "image": IMAGE,
        "dirty_mib_per_s": DIRTY_MIB_S,
        "link_mbit_per_s": LINK_MBIT,
        "downtime_target_ms": 300,
        "qemu_plain_bound_first_passes": PLAIN_BOUND_PASSES,
        "cases": all.iter().map(|f| json!({
            "vmm": f.vmm.key(),
            "populated_mib": f.populated_mib,
            "converged": f.converged,
            "pause_ms": f.pause_ms,
            "vmm_pause_ms": f.vmm_pause_ms,
            "total_ms": f.total_ms,
            "passes": f.passes,
            "max_throttle_percent": f.throttle_percent,
            "clean_sweeps_after": f.sweeps_after,
            "remaining_mib_at_cancel": f.remaining_mib,
            "kept_up_percent": f.kept_up_percent,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_lines_are_counted() {
        let out = "memtouch: ready mib=256 rate=32\nmemtouch: sweep 3 clean dirtied=1 checked=2 behind=0\nnoise\nmemtouch: sweep 4 clean dirtied=1 checked=2 behind=0\n";
        assert_eq!(sweeps(out), (4, 2));
        let behind = "memtouch: sweep 9 clean dirtied=300 checked=2 behind=100\n";
        assert_eq!(kept_up(behind), Some(75.0));
        assert_eq!(sweeps(""), (0, 0));
    }

    #[test]
    fn the_table_says_who_did_not_converge() {
        let f = LoadFigures {
            vmm: Vmm::QemuPlain,
            populated_mib: 256,
            converged: false,
            pause_ms: None,
            vmm_pause_ms: None,
            total_ms: 43_000.0,
            passes: Some(5),
            throttle_percent: None,
            sweeps_after: 0,
            remaining_mib: Some(200.0),
            kept_up_percent: Some(99.0),
        };
        let t = table(&[f]);
        assert!(t.contains("qemu") && t.contains(" no "), "{t}");
        assert_eq!(
            json(&[]).get("cases").map(|c| c.as_array().map(Vec::len)),
            Some(Some(0))
        );
    }
}
