//! `cargo xtask bench migrate`: what a live move costs a guest, per VMM, mode and size.
//!
//! For every mode (pre-copy over TCP, zero-copy between co-located VMMs) and every size
//! (64 MiB, 256 MiB, 1 GiB), and for each [`Mover`] in turn (host-vmm's [`HostVmmMover`],
//! then stock QEMU's [`QemuMover`]), one guest boots on the source host of a fresh [`TwoHosts`] topology and
//! moves back and forth `--moves` times (default 5) while the client namespace runs
//! `ping -D` every 10 ms at it. Per move: the pause by one definition for both VMMs (source
//! vCPU stopped to destination about to run, from their own wall-clock records;
//! docs/measuring.md §3), the VMM's own pause figure beside it, total time and bytes sent,
//! and from ping the requests lost and the longest silence between replies (the network
//! gap). The table gives min/median/max over the moves and, where host-vmm and QEMU both
//! ran a case, the ratio of their medians; an SVG plots ping RTT around each case's first
//! move.

use super::hostvmm_migrate::HostVmmMover;
use super::qemu_migrate::QemuMover;
use crate::net::{GUEST_IP, Side, TwoHosts};
use crate::pingd::{PingLog, Pinger};
use crate::stats::Summary;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The image moved: the kernel answers ping, and it serves TCP/UDP echo.
pub const IMAGE: &str = "netecho";
/// Moves per case unless `--moves` says otherwise (alternating direction): enough for a
/// min/median/max (docs/measuring.md §4).
pub const DEFAULT_MOVES: u32 = 5;
/// Guest sizes, MiB.
pub const SIZES_MIB: [u32; 3] = [64, 256, 1024];
/// Ping interval: 10 ms, not 1 ms, because guest code is emulated here (one echo costs the
/// guest ~1 ms), as docs/measuring.md §1 says to do and to say.
pub const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Pinging before a move starts (seconds).
const LEAD: f64 = 1.0;
/// Pinging after a move ends (seconds).
const TAIL: f64 = 1.5;
/// Bound on one move, for ping's own count.
const MOVE_BOUND: f64 = 150.0;

/// How the guest's memory crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Copied over TCP between the hosts' migration addresses, while the guest runs.
    PreCopy,
    /// Shared between two co-located VMMs: only CPU and device state cross (a Unix socket).
    ZeroCopy,
}

impl Mode {
    /// Both modes, in table order.
    pub const ALL: [Mode; 2] = [Mode::PreCopy, Mode::ZeroCopy];

    /// Its name in tables and JSON.
    pub fn key(self) -> &'static str {
        match self {
            Mode::PreCopy => "pre-copy",
            Mode::ZeroCopy => "zero-copy",
        }
    }
}

/// One benchmark case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Case {
    /// How memory crosses.
    pub mode: Mode,
    /// Guest RAM, MiB.
    pub mem_mib: u32,
}

impl Case {
    /// Every case: each mode at each size.
    pub fn all() -> Vec<Case> {
        Mode::ALL
            .iter()
            .flat_map(|&mode| SIZES_MIB.iter().map(move |&mem_mib| Case { mode, mem_mib }))
            .collect()
    }

    /// `pre-copy 256M`.
    pub fn label(&self) -> String {
        format!("{} {}", self.mode.key(), size_label(self.mem_mib))
    }
}

fn size_label(mib: u32) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

/// What the VMMs report about one move (`None`: they do not say).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MoveReport {
    /// The pause, one definition for every VMM (docs/measuring.md §3): the source's record
    /// of its vCPU stopping to the destination's record of starting to run it, both on the
    /// wall clock (the VMMs share one host), ms. See [`pause_between`].
    pub pause_ms: Option<f64>,
    /// The VMM's own pause figure, which each VMM defines its own way (host-vmm: `pause_ms`,
    /// I/O parked to Running back at the source; QEMU: `downtime`, vCPU stop to the end of
    /// the stream on the source), ms.
    pub vmm_pause_ms: Option<f64>,
    /// QEMU: bytes of the RAM blocks it migrates besides guest RAM (firmware, ROMs, ACPI
    /// tables), which host-vmm's guest does not have.
    pub ram_blocks_bytes: Option<u64>,
    /// The whole move as the VMM counts it, ms.
    pub total_ms: Option<f64>,
    /// Bytes sent on the migration stream.
    pub bytes: Option<u64>,
    /// Bytes of guest memory copied (whole pages sent; 0 for a true zero-copy move).
    pub memory_copied_bytes: Option<u64>,
    /// Memory passes (first pass plus dirty passes).
    pub passes: Option<u64>,
    /// When the move was started (seconds since the epoch, `pingd::now`).
    pub started: f64,
    /// When the source reported it done.
    pub ended: f64,
}

/// A VMM that can move a guest between the two hosts of a [`TwoHosts`] topology.
///
/// QEMU's is [`QemuMover`]; host-vmm's is [`HostVmmMover`] (booting with `host-vmm run`,
/// receiving with `host-vmm receive --listen ...` on the other host, moving with
/// `host-vmm ctl <socket> migrate ... [--zero-copy]`).
pub trait Mover {
    /// Its name in tables and JSON: `host_vmm` or `qemu` (ratios are host_vmm / qemu).
    fn key(&self) -> &'static str;

    /// Boots `image` for `case` on the source host ([`Side::Source`]) and returns once the
    /// guest answers ping from the client namespace.
    fn boot(&self, hosts: &TwoHosts, image: &Path, case: Case) -> Result<Box<dyn Moving>>;
}

/// A guest booted by a [`Mover`]: every process it started ends when it is dropped.
pub trait Moving {
    /// The host the guest runs on now.
    fn side(&self) -> Side;

    /// Moves the guest to the other host; returns when the destination runs it and the
    /// source has let go of it.
    fn move_once(&mut self, hosts: &TwoHosts) -> Result<MoveReport>;

    /// What the VMMs printed (for error messages).
    fn console(&self) -> String;
}

/// The VMMs measured, host-vmm first when it is there.
pub fn movers() -> Vec<Box<dyn Mover>> {
    vec![Box::new(HostVmmMover), Box::new(QemuMover)]
}

/// One move as measured.
#[derive(Clone, Debug, PartialEq)]
pub struct MoveFigures {
    /// Where it went.
    pub to: Side,
    /// The VMM's own figures.
    pub report: MoveReport,
    /// Pings sent in the move's window (from `LEAD` / 2 before it to `TAIL` after).
    pub sent: u64,
    /// Of those, unanswered.
    pub lost: u64,
    /// The longest silence between replies touching the window, ms.
    pub longest_gap_ms: Option<f64>,
}

impl MoveFigures {
    /// The network gap: the longest silence less one ping interval (docs/measuring.md §1).
    pub fn gap_ms(&self) -> Option<f64> {
        self.longest_gap_ms
            .map(|g| (g - PING_INTERVAL.as_secs_f64() * 1e3).max(0.0))
    }
}

/// Ping around one move, relative to its start, for the plot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// `(seconds from the move's start the request left, RTT ms)` per reply.
    pub replies: Vec<(f64, f64)>,
    /// When each lost request left, seconds from the move's start.
    pub lost: Vec<f64>,
    /// The move's length as the harness saw it (start to the source's "done"), seconds.
    pub move_s: f64,
    /// The VMM's pause, seconds, drawn at the move's end.
    pub pause_s: Option<f64>,
}

/// One VMM's figures for one case.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseFigures {
    /// Which VMM ([`Mover::key`]).
    pub vmm: &'static str,
    /// The case.
    pub case: Case,
    /// Every move, in order.
    pub moves: Vec<MoveFigures>,
    /// Ping around the first move.
    pub trace: Trace,
}

/// The pause from the source's stamp `stopped` to the destination's `resumed` (seconds since
/// the epoch), ms; both must fall in the move, `started` to `ended` as the harness saw it.
pub fn pause_between(stopped: f64, resumed: f64, started: f64, ended: f64) -> Result<f64> {
    // The harness's own stamps are taken around the VMMs' (and a reader thread may see a
    // line late), so allow a little slack at the end.
    const SLACK: f64 = 0.5;
    if !(started <= stopped && stopped <= resumed && resumed <= ended + SLACK) {
        bail!(
            "inconsistent pause stamps: move {started:.6}..{ended:.6}, source stopped at {stopped:.6}, destination resumed at {resumed:.6} (seconds since the epoch)"
        );
    }
    Ok((resumed - stopped) * 1e3)
}

/// Min/median/max of the values present.
pub fn summary(values: impl IntoIterator<Item = Option<f64>>) -> Option<Summary> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    Summary::of_values(&v)
}

/// Median of the values present.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    summary(values).map(|s| s.median)
}

impl CaseFigures {
    /// Pause (one definition for both VMMs), ms.
    pub fn pause(&self) -> Option<Summary> {
        summary(self.moves.iter().map(|m| m.report.pause_ms))
    }
    /// The VMM's own pause figure, ms.
    pub fn vmm_pause(&self) -> Option<Summary> {
        summary(self.moves.iter().map(|m| m.report.vmm_pause_ms))
    }
    /// Network gap, ms.
    pub fn gap(&self) -> Option<Summary> {
        summary(self.moves.iter().map(|m| m.gap_ms()))
    }
    /// Total time, ms.
    pub fn total(&self) -> Option<Summary> {
        summary(self.moves.iter().map(|m| m.report.total_ms))
    }
    /// Bytes sent.
    pub fn sent(&self) -> Option<Summary> {
        summary(self.moves.iter().map(|m| m.report.bytes.map(|b| b as f64)))
    }
    /// Median pause, ms.
    pub fn pause_ms(&self) -> Option<f64> {
        self.pause().map(|s| s.median)
    }
    /// Median network gap, ms.
    pub fn gap_ms(&self) -> Option<f64> {
        self.gap().map(|s| s.median)
    }
    /// Median total time, ms.
    pub fn total_ms(&self) -> Option<f64> {
        self.total().map(|s| s.median)
    }
    /// Median bytes sent.
    pub fn bytes(&self) -> Option<f64> {
        self.sent().map(|s| s.median)
    }
    /// Median guest-memory bytes copied.
    pub fn memory_copied(&self) -> Option<f64> {
        median(
            self.moves
                .iter()
                .map(|m| m.report.memory_copied_bytes.map(|b| b as f64)),
        )
    }
    /// Median bytes of RAM blocks besides guest RAM (QEMU).
    pub fn ram_blocks(&self) -> Option<f64> {
        median(
            self.moves
                .iter()
                .map(|m| m.report.ram_blocks_bytes.map(|b| b as f64)),
        )
    }
    /// Pings lost over all moves.
    pub fn lost(&self) -> u64 {
        self.moves.iter().map(|m| m.lost).sum()
    }
}

/// Runs every case under every mover; progress goes to stderr. A failing case is an error
/// that names it.
pub fn run(image: &Path, moves: u32, sizes: &[u32]) -> Result<Vec<CaseFigures>> {
    if moves == 0 {
        bail!("--moves must be at least 1");
    }
    if moves < DEFAULT_MOVES {
        eprintln!(
            "migrate bench: warning: {moves} moves per case; min/median/max need at least {DEFAULT_MOVES} to mean much"
        );
    }
    if let Some(bad) = sizes.iter().find(|s| !SIZES_MIB.contains(s)) {
        bail!("--sizes: {bad} is not one of the benchmark's sizes {SIZES_MIB:?} (MiB)");
    }
    let mut out = Vec::new();
    // Case by case, each VMM in turn: a change in the machine's load while the benchmark
    // runs falls on both VMMs of a case, not on whichever would have gone second.
    for case in Case::all()
        .into_iter()
        .filter(|c| sizes.is_empty() || sizes.contains(&c.mem_mib))
    {
        for mover in movers() {
            let f = run_case(mover.as_ref(), image, case, moves)
                .with_context(|| format!("{} {}", mover.key(), case.label()))?;
            out.push(f);
        }
    }
    Ok(out)
}

fn run_case(mover: &dyn Mover, image: &Path, case: Case, moves: u32) -> Result<CaseFigures> {
    eprintln!("migrate bench: {} {}: booting", mover.key(), case.label());
    let hosts = TwoHosts::up("bm")?;
    let mut guest = mover.boot(&hosts, image, case)?;
    let mut figures = CaseFigures {
        vmm: mover.key(),
        case,
        moves: Vec::new(),
        trace: Trace::default(),
    };
    for i in 0..moves {
        let (m, log) = one_move(&hosts, guest.as_mut()).map_err(|e| {
            let out = guest.console();
            let lines: Vec<&str> = out.lines().collect();
            e.context(format!(
                "move {} of {moves}; VMM output (last lines):\n{}",
                i + 1,
                lines[lines.len().saturating_sub(30)..].join("\n")
            ))
        })?;
        eprintln!(
            "migrate bench: {} {}: move {}/{moves} to {}: pause {} ms (VMM's own {} ms), gap {} ms, lost {}, total {} ms, {} bytes",
            mover.key(),
            case.label(),
            i + 1,
            m.to.key(),
            opt(m.report.pause_ms, 1),
            opt(m.report.vmm_pause_ms, 1),
            opt(m.gap_ms(), 1),
            m.lost,
            opt(m.report.total_ms, 0),
            m.report.bytes.map_or("-".to_string(), |b| b.to_string())
        );
        if i == 0 {
            figures.trace = trace(&log, &m.report);
        }
        figures.moves.push(m);
    }
    Ok(figures)
}

/// One move with ping running around it; the guest must answer after it.
fn one_move(hosts: &TwoHosts, guest: &mut dyn Moving) -> Result<(MoveFigures, PingLog)> {
    let to = guest.side().other();
    let count = ((LEAD + MOVE_BOUND + TAIL) / PING_INTERVAL.as_secs_f64()) as u32;
    let pinger = Pinger::start(hosts.client("ping"), GUEST_IP, PING_INTERVAL, count)?;
    std::thread::sleep(Duration::from_secs_f64(LEAD));
    let report = guest.move_once(hosts)?;
    std::thread::sleep(Duration::from_secs_f64(TAIL));
    let log = pinger.stop()?;
    let m = move_figures(&log, report, to)?;
    Ok((m, log))
}

/// The ping figures of one move from the log of a ping that ran around it.
pub fn move_figures(log: &PingLog, report: MoveReport, to: Side) -> Result<MoveFigures> {
    let last = log.replies.iter().map(|r| r.at).fold(f64::MIN, f64::max);
    if last < report.ended {
        bail!(
            "the guest did not answer ping after the move ({} replies, the last {:.3} s before the move ended)",
            log.replies.len(),
            report.ended - last
        );
    }
    let w = log.window(report.started - LEAD / 2.0, report.ended + TAIL);
    Ok(MoveFigures {
        to,
        report,
        sent: w.sent,
        lost: w.lost.len() as u64,
        longest_gap_ms: w.longest_gap.map(|g| g.secs() * 1e3),
    })
}

/// The plot's data for one move.
pub fn trace(log: &PingLog, report: &MoveReport) -> Trace {
    let t0 = report.started;
    let mut t = Trace {
        move_s: report.ended - t0,
        pause_s: report.pause_ms.map(|p| p / 1e3),
        ..Trace::default()
    };
    t.replies = log
        .replies
        .iter()
        .map(|r| (r.sent_at() - t0, r.rtt_ms))
        .collect();
    t.replies.sort_by(|a, b| a.0.total_cmp(&b.0));
    t.lost = log
        .requests()
        .iter()
        .filter(|r| !r.answered)
        .filter_map(|r| r.sent_at.map(|s| s - t0))
        .collect();
    t
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

/// host_vmm / qemu of `f` for `case`, when both ran it.
fn ratio(all: &[CaseFigures], case: Case, f: impl Fn(&CaseFigures) -> Option<f64>) -> Option<f64> {
    let of = |vmm: &str| {
        all.iter()
            .find(|c| c.vmm == vmm && c.case == case)
            .and_then(&f)
    };
    let (ours, theirs) = (of("host_vmm")?, of("qemu")?);
    (theirs > 0.0).then(|| ours / theirs)
}

/// Three decimals.
fn round(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

fn mib(bytes: f64) -> f64 {
    bytes / f64::from(1u32 << 20)
}

/// `min/median/max` of `s`, or `-`.
fn mmm(s: Option<Summary>, decimals: usize) -> String {
    s.map_or("-".to_string(), |s| {
        format!(
            "{:.decimals$}/{:.decimals$}/{:.decimals$}",
            s.min, s.median, s.max
        )
    })
}

/// `{"min":..,"median":..,"max":..}`, rounded to three decimals, or null.
fn json_summary(s: Option<Summary>) -> serde_json::Value {
    s.map_or(
        serde_json::Value::Null,
        |s| json!({ "min": round(s.min), "median": round(s.median), "max": round(s.max) }),
    )
}

/// How the figures are defined, for the table's head and the JSON.
pub const DEFINITIONS: [(&str, &str); 4] = [
    (
        "pause",
        "source vCPU stopped -> destination about to run it, from the two VMMs' own wall-clock (CLOCK_REALTIME) records on this one host: host-vmm's source log line `migration: guest paused` (env_logger stamp) and its receiver's `running (resumed at EPOCH)`; QEMU's QMP STOP event on the source and RESUME event on the destination (event timestamps)",
    ),
    (
        "vmm_pause",
        "each VMM's own figure, defined its own way: host-vmm's summary pause_ms (I/O parked -> Running back at the source), QEMU's query-migrate downtime (vCPU stop -> end of the stream, on the source)",
    ),
    (
        "bytes",
        "host-vmm: every byte of its migration stream; QEMU 7.2 has no such figure: query-migrate ram.transferred counts its RAM sections (pages and their headers), not the device state and the JSON description ending the stream (~156 KiB for this guest, docs/measuring.md 4.1), and includes QEMU's RAM blocks besides guest RAM (ram_blocks: SeaBIOS, pc.rom, ACPI tables; host-vmm's guest has none). The NIC's option ROM is off (virtio-net-pci romfile=)",
    ),
    (
        "gap",
        "longest silence between ping replies around the move, less one ping interval",
    ),
];

/// The human-readable table.
pub fn table(all: &[CaseFigures], moves: u32, svg: Option<&Path>) -> String {
    let mut out = format!(
        "migrate benchmark: image {IMAGE}, min/median/max of {moves} moves per case (back and forth between two host namespaces on one L2)\n\
         ping -D every {} ms from the client namespace (10 ms, not 1 ms, because guest code is emulated here)\n\
         host-vmm: virtio-net + emulated VF on one MAC (the agent moves traffic off the VF for the move), default --downtime-ms 300, no bandwidth cap (auto-converge never throttles netecho, which dirties little); zero-copy = the guest-RAM memfd over a Unix socket\n\
         QEMU: -M pc, virtio-net-pci on a TAP without option ROM, max-bandwidth {} GiB/s, downtime-limit 300 ms; zero-copy = shared /dev/shm RAM + x-ignore-shared over a Unix socket\n",
        PING_INTERVAL.as_millis(),
        super::qemu_migrate::MAX_BANDWIDTH >> 30
    );
    for (name, text) in DEFINITIONS {
        out.push_str(&format!("{name}: {text}\n"));
    }
    out.push_str("lost*: pings lost over all moves; own: median vmm_pause; copied: median guest-memory MiB copied; ram_blocks: median KiB of QEMU's RAM blocks besides guest RAM\n\n");
    out.push_str(&format!(
        "{:<10} {:>5} {:<9} {:>20} {:>8} {:>20} {:>5} {:>20} {:>24} {:>8} {:>10}\n",
        "mode",
        "size",
        "vmm",
        "pause ms",
        "own ms",
        "gap ms",
        "lost*",
        "total ms",
        "sent MiB",
        "copied",
        "ram_blocks"
    ));
    for c in all {
        out.push_str(&format!(
            "{:<10} {:>5} {:<9} {:>20} {:>8} {:>20} {:>5} {:>20} {:>24} {:>8} {:>10}\n",
            c.case.mode.key(),
            size_label(c.case.mem_mib),
            c.vmm,
            mmm(c.pause(), 1),
            opt(c.vmm_pause().map(|s| s.median), 1),
            mmm(c.gap(), 1),
            c.lost(),
            mmm(c.total(), 0),
            mmm(c.sent().map(|s| s.map(mib)), 2),
            opt(c.memory_copied().map(mib), 2),
            opt(c.ram_blocks().map(|b| b / 1024.0), 0),
        ));
    }
    let mut ratios = String::new();
    for case in Case::all() {
        let r = [
            ratio(all, case, CaseFigures::pause_ms),
            ratio(all, case, CaseFigures::gap_ms),
            ratio(all, case, CaseFigures::total_ms),
            ratio(all, case, CaseFigures::bytes),
        ];
        if r.iter().any(Option::is_some) {
            ratios.push_str(&format!(
                "{:<16} {:>9} {:>8} {:>10} {:>11}\n",
                case.label(),
                opt(r[0], 2),
                opt(r[1], 2),
                opt(r[2], 2),
                opt(r[3], 2)
            ));
        }
    }
    if ratios.is_empty() {
        out.push_str("\nratios host_vmm/qemu: none yet (host-vmm's mover is not in this run)\n");
    } else {
        out.push_str(&format!(
            "\nratios host_vmm/qemu of the medians (lower is better)\n{:<16} {:>9} {:>8} {:>10} {:>11}\n{ratios}",
            "case", "pause", "gap", "total", "bytes"
        ));
    }
    if let Some(p) = svg {
        out.push_str(&format!(
            "\nping RTT around each case's first move: {}\n",
            p.display()
        ));
    }
    out
}

/// The `--json` object.
pub fn json(all: &[CaseFigures], moves: u32) -> String {
    let cases: Vec<_> = all
        .iter()
        .map(|c| {
            let per_move: Vec<_> = c
                .moves
                .iter()
                .map(|m| {
                    json!({
                        "to": m.to.key(),
                        "pause_ms": m.report.pause_ms.map(round),
                        "vmm_pause_ms": m.report.vmm_pause_ms.map(round),
                        "total_ms": m.report.total_ms.map(round),
                        "bytes": m.report.bytes,
                        "memory_copied_bytes": m.report.memory_copied_bytes,
                        "ram_blocks_bytes": m.report.ram_blocks_bytes,
                        "passes": m.report.passes,
                        "ping_sent": m.sent,
                        "ping_lost": m.lost,
                        "longest_gap_ms": m.longest_gap_ms.map(round),
                        "gap_ms": m.gap_ms().map(round),
                    })
                })
                .collect();
            json!({
                "vmm": c.vmm,
                "mode": c.case.mode.key(),
                "mem_mib": c.case.mem_mib,
                "pause_ms": json_summary(c.pause()),
                "vmm_pause_ms": json_summary(c.vmm_pause()),
                "gap_ms": json_summary(c.gap()),
                "total_ms": json_summary(c.total()),
                "bytes": json_summary(c.sent()),
                "median_pause_ms": c.pause_ms().map(round),
                "median_gap_ms": c.gap_ms().map(round),
                "median_total_ms": c.total_ms().map(round),
                "median_bytes": c.bytes().map(|b| b.round()),
                "median_memory_copied_bytes": c.memory_copied().map(|b| b.round()),
                "median_ram_blocks_bytes": c.ram_blocks().map(|b| b.round()),
                "ping_lost": c.lost(),
                "moves": per_move,
            })
        })
        .collect();
    let ratios: Vec<_> = Case::all()
        .into_iter()
        .filter_map(|case| {
            let pause = ratio(all, case, CaseFigures::pause_ms);
            let gap = ratio(all, case, CaseFigures::gap_ms);
            let total = ratio(all, case, CaseFigures::total_ms);
            let bytes = ratio(all, case, CaseFigures::bytes);
            [pause, gap, total, bytes]
                .iter()
                .any(Option::is_some)
                .then(|| {
                    json!({
                        "mode": case.mode.key(), "mem_mib": case.mem_mib,
                        "pause": pause.map(round), "gap": gap.map(round),
                        "total": total.map(round), "bytes": bytes.map(round),
                    })
                })
        })
        .collect();
    let definitions: serde_json::Map<String, serde_json::Value> = DEFINITIONS
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "bench": "migrate",
        "image": IMAGE,
        "moves_per_case": moves,
        "ping_interval_ms": PING_INTERVAL.as_millis() as u64,
        "ping_interval_note": "10 ms because guest code is emulated here",
        "qemu_max_bandwidth_bytes_per_s": super::qemu_migrate::MAX_BANDWIDTH,
        "definitions": definitions,
        "cases": cases,
        "ratios_host_vmm_over_qemu": ratios,
    })
    .to_string()
}

/// Colour of a VMM's line in the plot.
fn colour(vmm: &str) -> &'static str {
    match vmm {
        "host_vmm" => "#1f77b4",
        "qemu" => "#e6550d",
        _ => "#555555",
    }
}

/// A hand-written SVG: one panel per case (modes in rows, sizes in columns), ping RTT over
/// time from each VMM's first move of that case, the move shaded, the VMM's pause darker at
/// its end, lost requests as crosses along the top.
pub fn svg(all: &[CaseFigures]) -> String {
    const PW: f64 = 360.0; // panel width
    const PH: f64 = 220.0;
    const ML: f64 = 50.0; // margins inside a panel
    const MR: f64 = 10.0;
    const MT: f64 = 28.0;
    const MB: f64 = 34.0;
    let cols = SIZES_MIB.len() as f64;
    let rows = Mode::ALL.len() as f64;
    let (w, h) = (PW * cols + 20.0, PH * rows + 60.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">Ping RTT around a live move (ping -D every {} ms from the client; shaded: the move, dark: the VMM's pause; x: lost)</text>\n",
        PING_INTERVAL.as_millis()
    );
    let mut legend_x = 10.0;
    let mut vmms: Vec<&str> = Vec::new();
    for c in all {
        if !vmms.contains(&c.vmm) {
            vmms.push(c.vmm);
        }
    }
    for v in &vmms {
        s.push_str(&format!(
            "<rect x=\"{legend_x}\" y=\"28\" width=\"12\" height=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"34\">{v}</text>\n",
            colour(v),
            legend_x + 16.0
        ));
        legend_x += 90.0;
    }
    for (row, mode) in Mode::ALL.iter().enumerate() {
        for (col, &mem_mib) in SIZES_MIB.iter().enumerate() {
            let case = Case {
                mode: *mode,
                mem_mib,
            };
            let here: Vec<&CaseFigures> = all.iter().filter(|c| c.case == case).collect();
            let (x0, y0) = (10.0 + col as f64 * PW, 44.0 + row as f64 * PH);
            let (px, py, pw, ph) = (x0 + ML, y0 + MT, PW - ML - MR, PH - MT - MB);
            let tmin = -LEAD;
            let tmax = here
                .iter()
                .map(|c| c.trace.move_s + TAIL)
                .fold(TAIL, f64::max);
            let ymax = here
                .iter()
                .flat_map(|c| c.trace.replies.iter().map(|r| r.1))
                .fold(2.0, f64::max)
                * 1.1;
            let sx = |t: f64| px + (t - tmin) / (tmax - tmin) * pw;
            let sy = |rtt: f64| py + ph - rtt.min(ymax) / ymax * ph;
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n<rect x=\"{px}\" y=\"{py}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n",
                px,
                y0 + 18.0,
                case.label()
            ));
            for c in &here {
                let col = colour(c.vmm);
                let (a, b) = (sx(0.0), sx(c.trace.move_s));
                s.push_str(&format!(
                    "<rect x=\"{a:.1}\" y=\"{py}\" width=\"{:.1}\" height=\"{ph}\" fill=\"{col}\" fill-opacity=\"0.12\"/>\n",
                    (b - a).max(0.5)
                ));
                if let Some(p) = c.trace.pause_s {
                    let pa = sx(c.trace.move_s - p);
                    s.push_str(&format!(
                        "<rect x=\"{pa:.1}\" y=\"{py}\" width=\"{:.1}\" height=\"{ph}\" fill=\"{col}\" fill-opacity=\"0.45\"/>\n",
                        (b - pa).max(1.0)
                    ));
                }
                let points: Vec<String> = c
                    .trace
                    .replies
                    .iter()
                    .filter(|r| r.0 >= tmin && r.0 <= tmax)
                    .map(|r| format!("{:.1},{:.1}", sx(r.0), sy(r.1)))
                    .collect();
                s.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"1\" points=\"{}\"/>\n",
                    points.join(" ")
                ));
                for &t in c.trace.lost.iter().filter(|&&t| t >= tmin && t <= tmax) {
                    let x = sx(t);
                    s.push_str(&format!(
                        "<path d=\"M{:.1},{:.1}l6,6m0,-6l-6,6\" stroke=\"{col}\" stroke-width=\"1.2\"/>\n",
                        x - 3.0,
                        py + 2.0
                    ));
                }
            }
            // Axes: seconds from the move's start, RTT in ms.
            for k in 0..=4 {
                let t = tmin + (tmax - tmin) * f64::from(k) / 4.0;
                s.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.2}</text>\n",
                    sx(t),
                    py + ph + 14.0
                ));
                let r = ymax * f64::from(k) / 4.0;
                s.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{r:.1}</text>\n",
                    px - 4.0,
                    sy(r) + 4.0
                ));
            }
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">s from the move's start</text>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" transform=\"rotate(-90 {:.1} {:.1})\" text-anchor=\"middle\">RTT ms</text>\n",
                px + pw / 2.0,
                py + ph + 28.0,
                x0 + 12.0,
                py + ph / 2.0,
                x0 + 12.0,
                py + ph / 2.0
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(started: f64, ended: f64, pause: f64) -> MoveReport {
        MoveReport {
            pause_ms: Some(pause),
            vmm_pause_ms: Some(pause / 2.0),
            ram_blocks_bytes: None,
            total_ms: Some((ended - started) * 1e3),
            bytes: Some(1 << 20),
            memory_copied_bytes: Some(1 << 19),
            passes: Some(2),
            started,
            ended,
        }
    }

    /// Replies every 10 ms from t=100 (RTT 1 ms), none for requests `hole`.
    fn log(last_seq: u32, hole: std::ops::RangeInclusive<u32>) -> PingLog {
        let mut text = String::new();
        for seq in 1..=last_seq {
            if hole.contains(&seq) {
                continue;
            }
            let at = 100.0 + f64::from(seq - 1) * 0.01 + 0.001;
            text.push_str(&format!(
                "[{at:.6}] 64 bytes from 198.18.0.10: icmp_seq={seq} ttl=64 time=1.00 ms\n"
            ));
        }
        text.push_str(&format!(
            "{last_seq} packets transmitted, 1 received, 0% packet loss, time 1ms\n"
        ));
        PingLog::parse(&text)
    }

    #[test]
    fn a_move_is_charged_its_lost_pings_and_gap() {
        // The move runs 101.0..101.5; requests 140..=149 (sent 101.39..101.48) are lost.
        let l = log(400, 140..=149);
        let m = move_figures(&l, report(101.0, 101.5, 30.0), Side::Destination).unwrap();
        assert_eq!(m.lost, 10);
        assert!((m.longest_gap_ms.unwrap() - 110.0).abs() < 1e-6);
        assert!((m.gap_ms().unwrap() - 100.0).abs() < 1e-6);
        let t = trace(&l, &m.report);
        assert_eq!(t.lost.len(), 10);
        assert!((t.lost[0] - 0.39).abs() < 1e-3, "{:?}", t.lost);
        assert!((t.move_s - 0.5).abs() < 1e-9);
        assert_eq!(t.pause_s, Some(0.03));
    }

    #[test]
    fn a_guest_silent_after_the_move_is_an_error() {
        // Last reply at ~101.0, the move ends at 102.
        let l = log(100, 0..=0);
        let err = move_figures(&l, report(100.5, 102.0, 10.0), Side::Source).unwrap_err();
        assert!(format!("{err}").contains("did not answer"), "{err}");
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(1.0), Some(2.0)]), Some(1.5));
        assert_eq!(median([None]), None);
        let case = Case {
            mode: Mode::ZeroCopy,
            mem_mib: 256,
        };
        let l = log(400, 140..=141);
        let mk = |vmm, pause| CaseFigures {
            vmm,
            case,
            moves: vec![move_figures(&l, report(101.0, 101.5, pause), Side::Destination).unwrap()],
            trace: trace(&l, &report(101.0, 101.5, pause)),
        };
        let qemu_only = vec![mk("qemu", 40.0)];
        assert_eq!(ratio(&qemu_only, case, CaseFigures::pause_ms), None);
        let t = table(&qemu_only, 1, None);
        assert!(t.contains("none yet"), "{t}");
        let both = vec![mk("host_vmm", 1.0), mk("qemu", 40.0)];
        assert_eq!(ratio(&both, case, CaseFigures::pause_ms), Some(0.025));
        let t = table(&both, 1, None);
        assert!(t.contains("zero-copy 256M"), "{t}");
        assert!(t.contains("0.03"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&json(&both, 1)).unwrap();
        assert_eq!(v["cases"][1]["median_pause_ms"], 40.0);
        assert_eq!(v["cases"][0]["ping_lost"], 2);
        assert_eq!(v["ratios_host_vmm_over_qemu"][0]["pause"], 0.025);
        let plot = svg(&both);
        assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
        assert_eq!(plot.matches("<polyline").count(), 2);
        assert_eq!(plot.matches("<path").count(), 4, "two crosses per VMM");
    }

    #[test]
    fn the_pause_runs_from_the_source_stop_to_the_destination_run() {
        let p = pause_between(100.25, 100.3, 100.0, 101.0).unwrap();
        assert!((p - 50.0).abs() < 1e-6, "{p}");
        // Stamps out of order or outside the move are refused, not turned into a figure.
        assert!(pause_between(100.3, 100.25, 100.0, 101.0).is_err());
        assert!(pause_between(99.0, 100.3, 100.0, 101.0).is_err());
        assert!(pause_between(100.25, 103.0, 100.0, 101.0).is_err());
    }

    #[test]
    fn several_moves_give_min_median_max() {
        let case = Case {
            mode: Mode::PreCopy,
            mem_mib: 64,
        };
        let l = log(400, 140..=141);
        let moves = [5.0, 1.0, 3.0, 9.0, 2.0]
            .iter()
            .map(|&p| move_figures(&l, report(101.0, 101.5, p), Side::Destination).unwrap())
            .collect();
        let c = CaseFigures {
            vmm: "host_vmm",
            case,
            moves,
            trace: Trace::default(),
        };
        let p = c.pause().unwrap();
        assert_eq!((p.min, p.median, p.max), (1.0, 3.0, 9.0));
        assert_eq!(c.vmm_pause().unwrap().median, 1.5);
        let t = table(std::slice::from_ref(&c), 5, None);
        assert!(t.contains("1.0/3.0/9.0"), "{t}");
        assert!(t.contains("1.00/1.00/1.00"), "sent MiB: {t}");
        let v: serde_json::Value = serde_json::from_str(&json(&[c], 5)).unwrap();
        assert_eq!(v["cases"][0]["pause_ms"]["max"], 9.0);
        assert_eq!(v["cases"][0]["bytes"]["median"], 1_048_576.0);
        assert_eq!(v["cases"][0]["gap_ms"]["min"], 20.0);
        assert!(
            v["definitions"]["pause"]
                .as_str()
                .unwrap()
                .contains("RESUME")
        );
    }

    #[test]
    fn there_are_six_cases() {
        let all = Case::all();
        assert_eq!(all.len(), 6);
        assert_eq!(all[2].label(), "pre-copy 1G");
        assert_eq!(all[4].label(), "zero-copy 256M");
    }
}
