//! `cargo xtask bench switch`: what a switch between the emulated 82599 VF and virtio-net
//! costs a guest's traffic, measured with stock tools from the client namespace.
//!
//! One guest (image `iperf3`: its iperf3 server, and the kernel answers ping) boots with both
//! NICs on one MAC and a control socket. Then:
//! 1. `ping -D` every 10 ms while `host-vmm ctl switch` flips the active NIC N times, ~1 s
//!    apart: per switch, the requests lost and the longest silence between replies in the
//!    window around it (from 0.3 s before the switch to 0.3 s before the next one).
//! 2. For each direction, one `iperf3 -c -i 0.1 --json` run: 3 s pinned on the VF, 3 s pinned
//!    on virtio-net (their throughput and the ratio, in the same run), then the N switches
//!    again: the 100 ms interval throughput just before, at and after each switch.
//!
//! Directions are the guest's: `rx` is the client sending (`iperf3 -c`; the client's
//! intervals count what its socket accepted, so its send buffer smooths short stalls), `tx`
//! the guest sending (`iperf3 -c -R`; the client's intervals count what arrived).
//!
//! iperf3's JSON stamps its intervals from the test's start, which it reports only to the
//! second; the start is placed halfway through the client's set-up and tear-down time, and
//! the report gives that half as the alignment's uncertainty.

use crate::ctl::{Control, Nic, Status};
use crate::net::{GUEST_IP, NetGuest, Nics};
use crate::pingd::{self, PingLog, Pinger};
use crate::vm::Vmm;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The image measured.
pub const IMAGE: &str = "iperf3";
/// Switches per phase unless `--switches` says otherwise.
pub const DEFAULT_SWITCHES: u32 = 10;
/// Ping interval. The issue's figure; guest code is emulated here (~0.4 µs per instruction,
/// ~1 ms per echo), so a tighter interval would measure the emulation, not the switch.
pub const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Time between two switches.
pub const SPACING: Duration = Duration::from_secs(1);
/// Time pinned on each NIC at the start of an iperf3 run.
pub const PINNED: Duration = Duration::from_secs(3);
/// iperf3's interval (`-i`).
pub const IPERF_INTERVAL: f64 = 0.1;
/// Start of a switch's window before the switch (seconds).
const WINDOW_LEAD: f64 = 0.3;
/// What is left out at the start of a pinned phase (slow start, the switch's own effect).
const SETTLE: f64 = 1.0;

/// One switch as it happened.
#[derive(Clone, Copy, Debug)]
pub struct Switch {
    /// The NIC switched to.
    pub to: Nic,
    /// When `host-vmm ctl switch` started (seconds since the epoch).
    pub started: f64,
    /// When it returned.
    pub ended: f64,
}

impl Switch {
    /// How long the `ctl switch` call took, in ms (the guest agent's answer included).
    pub fn ctl_ms(&self) -> f64 {
        (self.ended - self.started) * 1e3
    }
}

/// Ping figures for one switch.
#[derive(Clone, Debug)]
pub struct PingAtSwitch {
    /// The switch.
    pub switch: Switch,
    /// Requests sent in its window.
    pub sent: u64,
    /// Of those, unanswered.
    pub lost: u64,
    /// The longest silence between replies touching the window, ms.
    pub longest_gap_ms: Option<f64>,
}

impl PingAtSwitch {
    /// The longest gap less one ping interval: the time the switch itself added.
    pub fn gap_over_interval_ms(&self) -> Option<f64> {
        self.longest_gap_ms
            .map(|g| g - PING_INTERVAL.as_secs_f64() * 1e3)
    }
}

/// The ping phase.
#[derive(Clone, Debug)]
pub struct PingPhase {
    /// Requests sent (ping's summary).
    pub sent: u64,
    /// Lost on the way (before the last reply).
    pub lost: u64,
    /// Sent after the last reply, still in flight when ping was stopped.
    pub unanswered_at_end: u64,
    /// Median round trip, ms: the guest's echo time plus the path.
    pub median_rtt_ms: f64,
    /// Per switch.
    pub per_switch: Vec<PingAtSwitch>,
}

/// One interval of an iperf3 `--json` report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Start, seconds from the test's start.
    pub start: f64,
    /// End.
    pub end: f64,
    /// Throughput, Mbit/s.
    pub mbps: f64,
}

/// iperf3's interval throughput around one switch, Mbit/s.
#[derive(Clone, Debug)]
pub struct IperfAtSwitch {
    /// The switch.
    pub switch: Switch,
    /// The interval before the one the switch started in.
    pub before: Option<f64>,
    /// The interval the switch started in.
    pub at: Option<f64>,
    /// The interval after the one the switch ended in.
    pub after: Option<f64>,
    /// The lowest interval from the switch's start to 0.3 s after its end.
    pub min: Option<f64>,
}

/// One direction's iperf3 run.
#[derive(Clone, Debug)]
pub struct IperfPhase {
    /// `rx` (into the guest) or `tx` (out of it).
    pub direction: &'static str,
    /// Mean over the pinned VF phase (after settling), Mbit/s.
    pub pinned_vf_mbps: Option<f64>,
    /// Mean over the pinned virtio-net phase, Mbit/s.
    pub pinned_virtio_mbps: Option<f64>,
    /// The receiver's figure for the whole run (iperf3's `end.sum_received`), Mbit/s.
    pub whole_run_mbps: f64,
    /// Half the client's set-up and tear-down time: how far interval times may be off, ms.
    pub alignment_ms: f64,
    /// Per switch after the pinned phases.
    pub per_switch: Vec<IperfAtSwitch>,
}

impl IperfPhase {
    /// VF over virtio-net throughput, pinned phases of the same run.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.pinned_vf_mbps? / self.pinned_virtio_mbps?)
    }
}

/// Everything the benchmark measured.
#[derive(Clone, Debug)]
pub struct SwitchFigures {
    /// Switches per phase.
    pub switches: u32,
    /// The ping phase.
    pub ping: PingPhase,
    /// The iperf3 runs, `rx` then `tx`.
    pub iperf: Vec<IperfPhase>,
    /// The guest's `status` at the end.
    pub final_status: Status,
}

/// Boots the guest and runs both phases; progress goes to stderr.
pub fn run(image: &Path, switches: u32) -> Result<SwitchFigures> {
    if switches == 0 {
        bail!("--switches must be at least 1");
    }
    eprintln!(
        "switch bench: booting {} with the VF and virtio-net on one MAC",
        image.display()
    );
    let guest = NetGuest::start_with(Vmm::HostVmm, image, "bw", "", Nics::Both, true)?;
    let with_console = |e: anyhow::Error| {
        let console = guest.vm.output();
        let lines: Vec<&str> = console.lines().collect();
        e.context(format!(
            "guest console (last lines):\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        ))
    };
    let ctl = guest.ctl()?;
    let figures = (|| {
        let ping = ping_phase(&guest, ctl, switches)?;
        let mut iperf = Vec::new();
        for reverse in [false, true] {
            iperf.push(iperf_phase(&guest, ctl, switches, reverse)?);
        }
        let final_status = ctl.status()?;
        Ok(SwitchFigures {
            switches,
            ping,
            iperf,
            final_status,
        })
    })()
    .map_err(with_console)?;
    Ok(figures)
}

/// Makes `nic` the active NIC if it is not already.
fn make_active(ctl: &Control, nic: Nic) -> Result<()> {
    if ctl.status()?.active != Some(nic) {
        ctl.switch(nic)?;
    }
    let status = ctl.status()?;
    if status.active != Some(nic) {
        bail!("after `switch {}` status says {status:?}", nic.name());
    }
    Ok(())
}

/// One timed `switch`, then `status` must name the new NIC.
fn switch(ctl: &Control, to: Nic) -> Result<Switch> {
    let started = pingd::now();
    ctl.switch(to)?;
    let ended = pingd::now();
    let status = ctl.status()?;
    if status.active != Some(to) {
        bail!("after `switch {}` status says {status:?}", to.name());
    }
    Ok(Switch { to, started, ended })
}

/// `count` switches alternating from `first`, the first at `first_at` and then every
/// [`SPACING`]; a switch that runs late starts the next one late, never early.
fn switch_series(
    ctl: &Control,
    first: Nic,
    first_at: Instant,
    count: u32,
    what: &str,
) -> Result<Vec<Switch>> {
    let mut done = Vec::new();
    let mut to = first;
    for i in 0..count {
        sleep_until(first_at + SPACING * i);
        let s = switch(ctl, to).with_context(|| format!("switch {} of {count}", i + 1))?;
        eprintln!(
            "switch bench: {what}: switch {}/{count} to {} took {:.1} ms",
            i + 1,
            to.name(),
            s.ctl_ms()
        );
        done.push(s);
        to = to.other();
    }
    Ok(done)
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

fn ping_phase(guest: &NetGuest, ctl: &Control, switches: u32) -> Result<PingPhase> {
    make_active(ctl, Nic::Vf)?;
    // Enough requests for a late run; ping is stopped once the switches are done.
    let planned = SPACING * (switches + 2);
    let count = (4 * planned.as_millis() / PING_INTERVAL.as_millis()) as u32;
    eprintln!(
        "switch bench: ping -D every {} ms, {switches} switches {} s apart",
        PING_INTERVAL.as_millis(),
        SPACING.as_secs_f64()
    );
    let pinger = Pinger::start(guest.client("ping"), GUEST_IP, PING_INTERVAL, count)?;
    let start = Instant::now();
    let done = switch_series(ctl, Nic::Virtio, start + SPACING, switches, "ping")?;
    sleep_until(Instant::now() + SPACING);
    let log = pinger.stop()?;
    Ok(ping_figures(&log, &done))
}

/// Per-switch and overall ping figures from one log.
pub fn ping_figures(log: &PingLog, done: &[Switch]) -> PingPhase {
    let mut per_switch = Vec::new();
    for (i, s) in done.iter().enumerate() {
        let from = s.started - WINDOW_LEAD;
        let to = done
            .get(i + 1)
            .map_or(f64::INFINITY, |next| next.started - WINDOW_LEAD);
        let w = log.window(from, to);
        per_switch.push(PingAtSwitch {
            switch: *s,
            sent: w.sent,
            lost: w.lost.len() as u64,
            longest_gap_ms: w.longest_gap.map(|g| g.secs() * 1e3),
        });
    }
    let mut rtts: Vec<f64> = log.replies.iter().map(|r| r.rtt_ms).collect();
    rtts.sort_by(f64::total_cmp);
    PingPhase {
        sent: log.transmitted.unwrap_or(0),
        lost: log.lost().len() as u64,
        unanswered_at_end: log.unanswered_at_end(),
        median_rtt_ms: rtts.get(rtts.len() / 2).copied().unwrap_or(f64::NAN),
        per_switch,
    }
}

fn iperf_phase(
    guest: &NetGuest,
    ctl: &Control,
    switches: u32,
    reverse: bool,
) -> Result<IperfPhase> {
    let direction = if reverse { "tx" } else { "rx" };
    make_active(ctl, Nic::Vf)?;
    // Whole seconds: iperf3 3.12 spins forever on a fractional -t.
    let seconds = (PINNED * 2 + SPACING * switches).as_secs() + 1;
    eprintln!(
        "switch bench: iperf3 {direction}: {}s on the VF, {}s on virtio-net, then {switches} switches ({seconds} s)",
        PINNED.as_secs(),
        PINNED.as_secs()
    );
    let mut cmd = guest.client("timeout");
    cmd.args([&(seconds + 30).to_string(), "iperf3", "-c", GUEST_IP])
        .args(["-t", &seconds.to_string()])
        .args(["-i", &IPERF_INTERVAL.to_string(), "--json"]);
    if reverse {
        cmd.arg("-R");
    }
    let bound = Duration::from_secs(seconds + 40);
    let spawned = pingd::now();
    let start = Instant::now();
    // proc::watch bounds the client and keeps its exit status; it runs beside the switches.
    let client = std::thread::spawn(move || crate::proc::watch(&mut cmd, "", bound));
    sleep_until(start + PINNED);
    let switched = switch(ctl, Nic::Virtio).and_then(|to_virtio| {
        let done = switch_series(ctl, Nic::Vf, start + PINNED * 2, switches, direction)?;
        Ok((to_virtio, done))
    });
    let run = client
        .join()
        .map_err(|_| anyhow::anyhow!("the iperf3 thread panicked"))??;
    let (to_virtio, done) = switched?;
    let exited = spawned + run.exited.as_secs_f64();
    let report = run.stdout;
    if !run.status.success() {
        bail!(
            "iperf3 {direction} failed ({}):\n{report}{}",
            run.status,
            run.stderr
        );
    }
    let json: serde_json::Value = serde_json::from_str(&report)
        .with_context(|| format!("iperf3 {direction} printed no JSON report:\n{report}"))?;
    let intervals = intervals(&json)?;
    let duration = intervals.last().map_or(0.0, |i| i.end);
    let setup = ((exited - spawned) - duration).max(0.0) / 2.0;
    let t0 = spawned + setup;
    let rel = |t: f64| t - t0;
    let pinned_vf_mbps = mean_mbps(&intervals, SETTLE, rel(to_virtio.started) - 0.1);
    let pinned_virtio_mbps = mean_mbps(
        &intervals,
        rel(to_virtio.ended) + SETTLE,
        done.first().map_or(duration, |s| rel(s.started)) - 0.1,
    );
    let per_switch = done
        .iter()
        .map(|s| around(&intervals, *s, rel(s.started), rel(s.ended)))
        .collect();
    Ok(IperfPhase {
        direction,
        pinned_vf_mbps,
        pinned_virtio_mbps,
        whole_run_mbps: crate::bench::net::receiver_mbps(&report)?,
        alignment_ms: setup * 1e3,
        per_switch,
    })
}

/// The `intervals[].sum` of an iperf3 `--json` report.
pub fn intervals(report: &serde_json::Value) -> Result<Vec<Interval>> {
    let list = report["intervals"]
        .as_array()
        .context("iperf3 report has no intervals")?;
    list.iter()
        .map(|i| {
            let sum = &i["sum"];
            Ok(Interval {
                start: sum["start"].as_f64().context("interval without start")?,
                end: sum["end"].as_f64().context("interval without end")?,
                mbps: sum["bits_per_second"]
                    .as_f64()
                    .context("interval without bits_per_second")?
                    / 1e6,
            })
        })
        .collect()
}

/// Time-weighted mean throughput of the intervals wholly inside `[from, to]`.
pub fn mean_mbps(intervals: &[Interval], from: f64, to: f64) -> Option<f64> {
    let inside: Vec<&Interval> = intervals
        .iter()
        .filter(|i| i.start >= from && i.end <= to)
        .collect();
    let secs: f64 = inside.iter().map(|i| i.end - i.start).sum();
    (secs > 0.0).then(|| {
        inside
            .iter()
            .map(|i| i.mbps * (i.end - i.start))
            .sum::<f64>()
            / secs
    })
}

/// The intervals around a switch that ran from `start` to `end` (seconds from the test's start).
pub fn around(intervals: &[Interval], switch: Switch, start: f64, end: f64) -> IperfAtSwitch {
    let containing = |t: f64| intervals.iter().position(|i| i.start <= t && t < i.end);
    let at = containing(start);
    let after = containing(end).and_then(|i| intervals.get(i + 1));
    let min = intervals
        .iter()
        .filter(|i| i.end > start && i.start < end + 0.3)
        .map(|i| i.mbps)
        .min_by(f64::total_cmp);
    IperfAtSwitch {
        switch,
        before: at.and_then(|i| i.checked_sub(1)).map(|i| intervals[i].mbps),
        at: at.map(|i| intervals[i].mbps),
        after: after.map(|i| i.mbps),
        min,
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The `--json` object.
pub fn json(f: &SwitchFigures) -> String {
    let ping_switches: Vec<_> = f
        .ping
        .per_switch
        .iter()
        .map(|p| {
            json!({
                "to": p.switch.to.name(),
                "ctl_ms": round(p.switch.ctl_ms()),
                "sent": p.sent,
                "lost": p.lost,
                "longest_gap_ms": p.longest_gap_ms.map(round),
                "gap_over_interval_ms": p.gap_over_interval_ms().map(round),
            })
        })
        .collect();
    let mut out = json!({
        "bench": "switch",
        "image": IMAGE,
        "switches": f.switches,
        "spacing_s": SPACING.as_secs_f64(),
        "ping_interval_ms": PING_INTERVAL.as_millis() as u64,
        "ping_interval_note": "10 ms because guest code is emulated here",
        "ping": {
            "sent": f.ping.sent,
            "lost": f.ping.lost,
            "unanswered_at_end": f.ping.unanswered_at_end,
            "median_rtt_ms": round(f.ping.median_rtt_ms),
            "max_lost_at_a_switch": f.ping.per_switch.iter().map(|p| p.lost).max(),
            "max_gap_ms": max_gap(&f.ping).map(round),
            "per_switch": ping_switches,
        },
        "final_status": {
            "active": f.final_status.active.map(|n| n.name()),
            "switches": f.final_status.switches,
            "vf": {"rx": f.final_status.vf.rx, "tx": f.final_status.vf.tx,
                   "rx_errors": f.final_status.vf.rx_errors, "tx_dropped": f.final_status.vf.tx_dropped},
            "virtio": {"rx": f.final_status.virtio.rx, "tx": f.final_status.virtio.tx,
                       "rx_errors": f.final_status.virtio.rx_errors, "tx_dropped": f.final_status.virtio.tx_dropped},
        },
    });
    for p in &f.iperf {
        let per_switch: Vec<_> = p
            .per_switch
            .iter()
            .map(|s| {
                json!({
                    "to": s.switch.to.name(),
                    "before_mbps": s.before.map(round),
                    "at_mbps": s.at.map(round),
                    "after_mbps": s.after.map(round),
                    "min_mbps": s.min.map(round),
                })
            })
            .collect();
        out[format!("iperf3_{}", p.direction)] = json!({
            "pinned_vf_mbps": p.pinned_vf_mbps.map(round),
            "pinned_virtio_mbps": p.pinned_virtio_mbps.map(round),
            "ratio_vf_virtio": p.ratio().map(round),
            "whole_run_mbps": round(p.whole_run_mbps),
            "interval_s": IPERF_INTERVAL,
            "alignment_ms": round(p.alignment_ms),
            "per_switch": per_switch,
        });
    }
    out.to_string()
}

/// Three decimals, as the other benchmarks print.
fn round(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

fn max_gap(p: &PingPhase) -> Option<f64> {
    p.per_switch
        .iter()
        .filter_map(|s| s.longest_gap_ms)
        .max_by(f64::total_cmp)
}

/// The human-readable table.
pub fn table(f: &SwitchFigures) -> String {
    let interval_ms = PING_INTERVAL.as_secs_f64() * 1e3;
    let mut out = format!(
        "switch benchmark: image {IMAGE} on host-vmm, emulated 82599 VF and virtio-net on one MAC, {} switches {:.0} s apart per phase\n\
         ping -D every {interval_ms:.0} ms (10 ms, not less, because guest code is emulated here: one echo costs the guest ~1 ms)\n\n",
        f.switches,
        SPACING.as_secs_f64()
    );
    out.push_str(&format!(
        "{:>3} {:<7} {:>8} {:>6} {:>6} {:>16} {:>18}\n",
        "#", "to", "ctl ms", "sent", "lost", "longest gap ms", "gap - interval ms"
    ));
    for (i, p) in f.ping.per_switch.iter().enumerate() {
        out.push_str(&format!(
            "{:>3} {:<7} {:>8.1} {:>6} {:>6} {:>16} {:>18}\n",
            i + 1,
            p.switch.to.name(),
            p.switch.ctl_ms(),
            p.sent,
            p.lost,
            opt(p.longest_gap_ms, 1),
            opt(p.gap_over_interval_ms(), 1)
        ));
    }
    out.push_str(&format!(
        "ping: {} sent, {} lost, {} unanswered when stopped; median RTT (the guest's echo time) {:.2} ms\n",
        f.ping.sent, f.ping.lost, f.ping.unanswered_at_end, f.ping.median_rtt_ms
    ));
    out.push_str(&format!(
        "goal: 0 lost and every gap <= {interval_ms:.0} ms + echo time ({:.1} ms): {}\n",
        interval_ms + f.ping.median_rtt_ms,
        if f.ping.lost == 0
            && max_gap(&f.ping).is_some_and(|g| g <= interval_ms + f.ping.median_rtt_ms)
        {
            "met"
        } else {
            "not met"
        }
    ));
    for p in &f.iperf {
        let what = if p.direction == "rx" {
            "into the guest, iperf3 -c; client-side sender intervals"
        } else {
            "out of the guest, iperf3 -c -R; client-side receiver intervals"
        };
        out.push_str(&format!(
            "\niperf3 {} ({what}), -i {IPERF_INTERVAL}, Mbit/s; interval times +-{:.0} ms\n",
            p.direction, p.alignment_ms
        ));
        out.push_str(&format!(
            "{:>3} {:<7} {:>9} {:>9} {:>9} {:>12}\n",
            "#", "to", "before", "at", "after", "min around"
        ));
        for (i, s) in p.per_switch.iter().enumerate() {
            out.push_str(&format!(
                "{:>3} {:<7} {:>9} {:>9} {:>9} {:>12}\n",
                i + 1,
                s.switch.to.name(),
                opt(s.before, 2),
                opt(s.at, 2),
                opt(s.after, 2),
                opt(s.min, 2)
            ));
        }
        out.push_str(&format!(
            "pinned {:.0} s each in the same run: VF {} Mbit/s, virtio-net {} Mbit/s, VF/virtio {}x; whole run {:.2} Mbit/s\n",
            PINNED.as_secs_f64() - SETTLE,
            opt(p.pinned_vf_mbps, 2),
            opt(p.pinned_virtio_mbps, 2),
            opt(p.ratio(), 2),
            p.whole_run_mbps
        ));
    }
    let s = &f.final_status;
    out.push_str(&format!(
        "\nguest status at the end: active={} switches={}; vf rx={} tx={}; virtio rx={} tx={}\n",
        s.active.map_or("none", |n| n.name()),
        s.switches,
        s.vf.rx,
        s.vf.tx,
        s.virtio.rx,
        s.virtio.tx
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(start: f64, mbps: f64) -> Interval {
        Interval {
            start,
            end: start + 0.1,
            mbps,
        }
    }

    fn sw(to: Nic, started: f64, ended: f64) -> Switch {
        Switch { to, started, ended }
    }

    #[test]
    fn intervals_are_read_from_the_report() {
        let report: serde_json::Value = serde_json::from_str(
            r#"{"intervals":[{"sum":{"start":0,"end":0.1,"bits_per_second":5000000.0}},
                             {"sum":{"start":0.1,"end":0.2,"bits_per_second":2500000.0}}]}"#,
        )
        .unwrap();
        let i = intervals(&report).unwrap();
        assert_eq!(
            i,
            vec![
                iv(0.0, 5.0),
                Interval {
                    start: 0.1,
                    end: 0.2,
                    mbps: 2.5
                }
            ]
        );
        assert!(intervals(&serde_json::json!({})).is_err());
        assert!(intervals(&serde_json::json!({"intervals":[{"sum":{}}]})).is_err());
    }

    #[test]
    fn pinned_mean_uses_whole_intervals_inside_the_phase() {
        let list: Vec<Interval> = (0..10).map(|k| iv(k as f64 * 0.1, k as f64)).collect();
        // 0.3..0.6 holds intervals 3, 4, 5 (the one ending at 0.6 is in, 0.6..0.7 is not).
        let m = mean_mbps(&list, 0.3, 0.6 + 1e-9).unwrap();
        assert!((m - 4.0).abs() < 1e-9, "{m}");
        assert_eq!(mean_mbps(&list, 5.0, 6.0), None);
    }

    #[test]
    fn the_intervals_around_a_switch() {
        let mbps = [5.0, 5.0, 4.0, 1.0, 3.0, 5.0, 5.0];
        let list: Vec<Interval> = mbps
            .iter()
            .enumerate()
            .map(|(k, &m)| iv(k as f64 * 0.1, m))
            .collect();
        let s = around(&list, sw(Nic::Virtio, 0.0, 0.0), 0.25, 0.31);
        assert_eq!(s.before, Some(5.0));
        assert_eq!(s.at, Some(4.0));
        assert_eq!(s.after, Some(3.0), "the interval after the one it ended in");
        assert_eq!(s.min, Some(1.0));
        // A switch outside the run has no figures.
        let s = around(&list, sw(Nic::Vf, 0.0, 0.0), 9.0, 9.1);
        assert_eq!((s.before, s.at, s.after, s.min), (None, None, None, None));
    }

    #[test]
    fn ping_losses_and_gaps_are_charged_to_the_switch_they_follow() {
        // Replies every 10 ms from t=100.000 (RTT 1 ms), except 4 lost ones after 101.0.
        let mut text = String::new();
        for seq in 1..=300u32 {
            if (102..=105).contains(&seq) {
                continue;
            }
            let at = 100.0 + f64::from(seq - 1) * 0.01 + 0.001;
            text.push_str(&format!(
                "[{at:.6}] 64 bytes from 198.18.0.10: icmp_seq={seq} ttl=64 time=1.00 ms\n"
            ));
        }
        text.push_str("300 packets transmitted, 296 received, 1% packet loss, time 2990ms\n");
        let log = PingLog::parse(&text);
        let done = [sw(Nic::Virtio, 101.0, 101.02), sw(Nic::Vf, 102.0, 102.02)];
        let p = ping_figures(&log, &done);
        assert_eq!((p.sent, p.lost, p.unanswered_at_end), (300, 4, 0));
        assert!((p.median_rtt_ms - 1.0).abs() < 1e-9);
        let first = &p.per_switch[0];
        assert_eq!(first.lost, 4);
        assert_eq!(first.sent, 100, "100.7 ..< 101.7");
        assert!((first.longest_gap_ms.unwrap() - 50.0).abs() < 1e-6);
        assert!((first.gap_over_interval_ms().unwrap() - 40.0).abs() < 1e-6);
        let second = &p.per_switch[1];
        assert_eq!(second.lost, 0);
        assert!((second.longest_gap_ms.unwrap() - 10.0).abs() < 1e-6);
    }

    fn figures() -> SwitchFigures {
        let s = sw(Nic::Virtio, 101.0, 101.02);
        SwitchFigures {
            switches: 1,
            ping: PingPhase {
                sent: 300,
                lost: 0,
                unanswered_at_end: 1,
                median_rtt_ms: 1.2,
                per_switch: vec![PingAtSwitch {
                    switch: s,
                    sent: 100,
                    lost: 0,
                    longest_gap_ms: Some(11.0),
                }],
            },
            iperf: vec![IperfPhase {
                direction: "rx",
                pinned_vf_mbps: Some(6.0),
                pinned_virtio_mbps: Some(4.0),
                whole_run_mbps: 5.0,
                alignment_ms: 12.0,
                per_switch: vec![IperfAtSwitch {
                    switch: s,
                    before: Some(5.0),
                    at: Some(4.5),
                    after: None,
                    min: Some(4.5),
                }],
            }],
            final_status: crate::ctl::parse_status(
                "active=vf\nvf present=yes link=up rx=1 tx=2 rx_errors=0 tx_dropped=0\n\
                 virtio present=yes link=up rx=3 tx=4 rx_errors=0 tx_dropped=0\nswitches=2\n",
            )
            .unwrap(),
        }
    }

    #[test]
    fn json_is_one_object_with_the_figures() {
        let v: serde_json::Value = serde_json::from_str(&json(&figures())).unwrap();
        assert_eq!(v["bench"], "switch");
        assert_eq!(v["ping_interval_ms"], 10);
        assert_eq!(v["ping"]["per_switch"][0]["to"], "virtio");
        assert_eq!(v["ping"]["per_switch"][0]["gap_over_interval_ms"], 1.0);
        assert_eq!(v["iperf3_rx"]["ratio_vf_virtio"], 1.5);
        assert!(v["iperf3_rx"]["per_switch"][0]["after_mbps"].is_null());
        assert_eq!(v["final_status"]["virtio"]["tx"], 4);
    }

    #[test]
    fn table_says_why_the_interval_is_10_ms_and_whether_the_goal_is_met() {
        let t = table(&figures());
        assert!(t.contains("guest code is emulated here"), "{t}");
        assert!(
            t.contains("goal: 0 lost and every gap <= 10 ms + echo time (11.2 ms): met"),
            "{t}"
        );
        assert!(t.contains("VF/virtio 1.50x"), "{t}");
    }
}
