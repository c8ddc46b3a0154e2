//! `cargo xtask bench net`: ping RTT and iperf3 throughput of the same guest image on
//! host-vmm's virtio-net and on stock QEMU microvm's virtio-net-device (virtio-mmio, no
//! vhost), each on its own test network, plus the guest's own cost per echoed ping.
//!
//! The two VMMs take turns over `--runs` runs each (host-vmm, QEMU, host-vmm, QEMU, ...;
//! every run boots a fresh guest), so a change in the machine's load during the benchmark
//! falls on both rather than on whichever went second. The table gives min/median/max over
//! all pings of a VMM and over its runs' throughputs, and the ratio of the medians.
//!
//! Directions are the guest's: `rx` is the client sending to the guest (`iperf3 -c`), `tx`
//! is the guest sending (`iperf3 -c -R`).
//!
//! Then the guest's own cost, deterministic: one boot under QEMU microvm with TCG and
//! `-icount shift=0` ([`instructions`]), where a TSC tick is one guest instruction; the
//! kernel's per-frame cost report (`log=debug`) while pinging gives the instructions per ICMP
//! echo, and while iperf3 sends to the guest the instructions per received TCP segment
//! (everything the guest does per frame: driver, stack, the reply or ACK, the app).

use crate::net::{GUEST_IP, NetGuest};
use crate::stats::Summary;
use crate::vm::Vmm;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

/// Pings per run (the issue asks for the median of 100).
pub const PINGS: u32 = 100;
/// Seconds per iperf3 run.
pub const IPERF_SECONDS: u32 = 5;
/// The image measured: it serves iperf3 on 5201, and the kernel answers ping.
pub const IMAGE: &str = "iperf3";
/// Runs per VMM unless `--runs` says otherwise: enough for a min/median/max.
pub const DEFAULT_RUNS: u32 = 5;

/// host-vmm and the stock QEMU it is compared with: microvm, virtio-net-device on
/// virtio-mmio (no vhost).
const VMMS: [Vmm; 2] = [Vmm::HostVmm, QEMU];
const QEMU: Vmm = Vmm::QemuMicrovm;

/// What one run of one VMM measured.
#[derive(Debug)]
pub struct NetRun {
    /// Ping round-trip times.
    pub ping: Vec<Duration>,
    /// Client → guest throughput, Mbit/s (the receiver's figure).
    pub rx_mbps: f64,
    /// Guest → client throughput, Mbit/s (the receiver's figure).
    pub tx_mbps: f64,
    /// Median busy guest TSC cycles per received frame during the ping phase, when the
    /// kernel reported it (`log=debug`).
    pub guest_cycles_per_echo: Option<u64>,
}

/// What one VMM achieved over its runs.
#[derive(Debug)]
pub struct NetFigures {
    /// Which VMM.
    pub vmm: Vmm,
    /// Its runs, in order.
    pub runs: Vec<NetRun>,
}

impl NetFigures {
    /// Ping RTT over every ping of every run, ms.
    pub fn ping(&self) -> Option<Summary> {
        let all: Vec<Duration> = self.runs.iter().flat_map(|r| r.ping.clone()).collect();
        Summary::of(&all)
    }
    /// Client → guest Mbit/s over the runs.
    pub fn rx(&self) -> Option<Summary> {
        Summary::of_values(&self.runs.iter().map(|r| r.rx_mbps).collect::<Vec<_>>())
    }
    /// Guest → client Mbit/s over the runs.
    pub fn tx(&self) -> Option<Summary> {
        Summary::of_values(&self.runs.iter().map(|r| r.tx_mbps).collect::<Vec<_>>())
    }
    /// Median of the runs' guest cycles per echo.
    pub fn guest_cycles_per_echo(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.guest_cycles_per_echo.map(|c| c as f64))
            .collect();
        Summary::of_values(&v).map(|s| s.median)
    }
}

/// The order of the runs: the VMMs take turns, `runs` each.
pub fn schedule(runs: u32) -> Vec<Vmm> {
    (0..runs).flat_map(|_| VMMS).collect()
}

/// Measures the VMMs taking turns, `runs` runs each.
pub fn run(image: &Path, runs: u32) -> Result<Vec<NetFigures>> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut figures: Vec<NetFigures> = VMMS
        .iter()
        .map(|&vmm| NetFigures {
            vmm,
            runs: Vec::new(),
        })
        .collect();
    for (i, vmm) in schedule(runs).into_iter().enumerate() {
        let n = i as u32 / VMMS.len() as u32 + 1;
        let r = measure(vmm, image, n, runs)
            .with_context(|| format!("measuring {} (run {n} of {runs})", vmm.key()))?;
        if let Some(f) = figures.iter_mut().find(|f| f.vmm == vmm) {
            f.runs.push(r);
        }
    }
    Ok(figures)
}

fn measure(vmm: Vmm, image: &Path, n: u32, runs: u32) -> Result<NetRun> {
    let who = format!("net bench: {} run {n}/{runs}", vmm.key());
    eprintln!("{who}: booting {}", image.display());
    // log=debug makes the kernel report its per-frame cost every 16 frames.
    let guest = NetGuest::start(vmm, image, "bn", "log=debug")?;
    let console_before = guest.vm.output().len();
    eprintln!("{who}: {PINGS} pings");
    let ping = ping(&guest)?;
    let guest_cycles_per_echo = cycles_per_frame(&guest.vm.output()[console_before..]);
    eprintln!("{who}: iperf3 -t {IPERF_SECONDS}");
    let rx_mbps = iperf3(&guest, false)?;
    eprintln!("{who}: iperf3 -t {IPERF_SECONDS} -R");
    let tx_mbps = iperf3(&guest, true)?;
    eprintln!("{who}: rx {rx_mbps:.1} Mbit/s, tx {tx_mbps:.1} Mbit/s");
    Ok(NetRun {
        ping,
        rx_mbps,
        tx_mbps,
        guest_cycles_per_echo,
    })
}

fn ping(guest: &NetGuest) -> Result<Vec<Duration>> {
    let out = guest
        .client("ping")
        .args(["-c", &PINGS.to_string(), "-i", "0.02", "-W", "2", GUEST_IP])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts = ping_times(&text);
    if rtts.len() != PINGS as usize {
        bail!("{} of {PINGS} pings answered:\n{text}", rtts.len());
    }
    Ok(rtts)
}

/// The `time=X ms` of every reply line of `ping`'s output.
pub fn ping_times(output: &str) -> Vec<Duration> {
    output
        .lines()
        .filter_map(|line| line.split("time=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect()
}

/// The median of the kernel's "all busy N" per-frame figures in `console`.
pub fn cycles_per_frame(console: &str) -> Option<u64> {
    let mut figures: Vec<u64> = console
        .lines()
        .filter_map(|line| line.split("all busy ").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    figures.sort_unstable();
    figures.get(figures.len() / 2).copied()
}

/// Runs `iperf3 -c` (with `-R` when `reverse`) and returns the receiver's Mbit/s.
fn iperf3(guest: &NetGuest, reverse: bool) -> Result<f64> {
    let mut cmd = guest.client("timeout");
    // iperf3 has its own timeouts, but a wedged run must not hang the benchmark.
    cmd.args([&(IPERF_SECONDS + 30).to_string(), "iperf3", "-c", GUEST_IP])
        .args(["-t", &IPERF_SECONDS.to_string(), "--json"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3{} failed ({}):\n{text}{}",
            if reverse { " -R" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    receiver_mbps(&text)
}

/// `end.sum_received.bits_per_second` of an iperf3 `--json` report, in Mbit/s.
pub fn receiver_mbps(report: &str) -> Result<f64> {
    let json: serde_json::Value = serde_json::from_str(report).context("iperf3 JSON")?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e6)
}

/// Guest instructions per received frame, counted under QEMU TCG with `-icount shift=0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instructions {
    /// While pinging: per ICMP echo request answered.
    pub per_icmp_echo: Option<u64>,
    /// While iperf3 sends to the guest: per TCP segment received.
    pub per_tcp_segment: Option<u64>,
}

/// Boots `image` once under QEMU TCG with `-icount shift=0` and reads the kernel's per-frame
/// cost while pinging and while receiving iperf3's stream.
pub fn instructions(image: &Path) -> Result<Instructions> {
    let who = "net bench: qemu_microvm TCG -icount";
    eprintln!("{who}: booting {}", image.display());
    let guest = NetGuest::start_qemu_icount(image, "bi", "log=debug")?;
    let start = guest.vm.output().len();
    eprintln!("{who}: {PINGS} pings");
    ping(&guest)?;
    let after_ping = guest.vm.output().len();
    eprintln!("{who}: iperf3 -t {IPERF_SECONDS}");
    iperf3(&guest, false)?;
    let console = guest.vm.output();
    let figures = Instructions {
        per_icmp_echo: cycles_per_frame(&console[start..after_ping]),
        per_tcp_segment: cycles_per_frame(&console[after_ping..]),
    };
    eprintln!("{who}: {figures:?}");
    Ok(figures)
}

fn figure(figures: &[NetFigures], vmm: Vmm) -> Option<&NetFigures> {
    figures.iter().find(|f| f.vmm == vmm)
}

/// Ratios of the medians (ping RTT qemu/host, rx host/qemu, tx host/qemu): above 1 means
/// host-vmm is better; NaN when a VMM has no figure.
pub fn ratios(figures: &[NetFigures]) -> (f64, f64, f64) {
    let med = |vmm, f: fn(&NetFigures) -> Option<Summary>| {
        figure(figures, vmm)
            .and_then(f)
            .map_or(f64::NAN, |s| s.median)
    };
    let (h, q) = (Vmm::HostVmm, QEMU);
    (
        med(q, NetFigures::ping) / med(h, NetFigures::ping),
        med(h, NetFigures::rx) / med(q, NetFigures::rx),
        med(h, NetFigures::tx) / med(q, NetFigures::tx),
    )
}

fn json_summary(s: Option<Summary>) -> String {
    s.map_or("null".to_string(), |s| s.json())
}

/// A ratio for JSON: a number, or null when it could not be computed.
fn json_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.3}")
    } else {
        "null".to_string()
    }
}

/// A count for JSON: a number, or null.
fn json_count(n: Option<u64>) -> String {
    n.map_or("null".to_string(), |n| n.to_string())
}

/// The `--json` object.
pub fn json(figures: &[NetFigures], instructions: &Instructions) -> String {
    let runs = figures.iter().map(|f| f.runs.len()).max().unwrap_or(0);
    let mut out = format!(
        "{{\"bench\":\"net\",\"image\":\"{IMAGE}\",\"runs_per_vmm\":{runs},\"order\":\"alternating\",\"pings_per_run\":{PINGS},\"iperf3_seconds\":{IPERF_SECONDS}"
    );
    for f in figures {
        let cycles = f
            .guest_cycles_per_echo()
            .map_or("null".to_string(), |c| format!("{c:.0}"));
        let per_run: Vec<String> = f
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{{\"ping_rtt_ms\":{},\"iperf3_rx_mbps\":{:.3},\"iperf3_tx_mbps\":{:.3}}}",
                    json_summary(Summary::of(&r.ping)),
                    r.rx_mbps,
                    r.tx_mbps
                )
            })
            .collect();
        out.push_str(&format!(
            ",\"{}\":{{\"ping_rtt_ms\":{},\"iperf3_rx_mbps\":{},\"iperf3_tx_mbps\":{},\"guest_cycles_per_echo\":{cycles},\"runs\":[{}]}}",
            f.vmm.key(),
            json_summary(f.ping()),
            json_summary(f.rx()),
            json_summary(f.tx()),
            per_run.join(",")
        ));
    }
    let (ping, rx, tx) = ratios(figures);
    out.push_str(&format!(
        ",\"ratio_ping_rtt\":{},\"ratio_rx\":{},\"ratio_tx\":{},\"guest_instructions_per_icmp_echo\":{},\"guest_instructions_per_tcp_segment\":{}}}",
        json_ratio(ping),
        json_ratio(rx),
        json_ratio(tx),
        json_count(instructions.per_icmp_echo),
        json_count(instructions.per_tcp_segment)
    ));
    out
}

/// `min/median/max` with `decimals`, or `-`.
fn mmm(s: Option<Summary>, decimals: usize) -> String {
    s.map_or("-".to_string(), |s| {
        format!(
            "{:.decimals$}/{:.decimals$}/{:.decimals$}",
            s.min, s.median, s.max
        )
    })
}

/// The human-readable table.
pub fn table(figures: &[NetFigures], instructions: &Instructions) -> String {
    let runs = figures.iter().map(|f| f.runs.len()).max().unwrap_or(0);
    let mut out = format!(
        "net benchmark: image {IMAGE}, {runs} runs per VMM taking turns (host-vmm, QEMU, host-vmm, ...), each a fresh boot, {PINGS} pings 20 ms apart and iperf3 -t {IPERF_SECONDS} each way (rx: into the guest, tx: out of it)\n\
         min/median/max: ping over all pings of a VMM, throughput over its runs\n"
    );
    out.push_str(&format!(
        "{:<10} {:>22} {:>26} {:>26} {:>18}\n",
        "vmm", "ping ms", "rx Mbit/s", "tx Mbit/s", "guest cycles/echo"
    ));
    for f in figures {
        out.push_str(&format!(
            "{:<10} {:>22} {:>26} {:>26} {:>18}\n",
            f.vmm.key(),
            mmm(f.ping(), 3),
            mmm(f.rx(), 1),
            mmm(f.tx(), 1),
            f.guest_cycles_per_echo()
                .map_or("-".to_string(), |c| format!("{c:.0}"))
        ));
    }
    let (ping, rx, tx) = ratios(figures);
    out.push_str(&format!(
        "ratios of the medians, above 1 = host-vmm better: ping RTT (qemu/host) {ping:.2}x, rx {rx:.2}x, tx {tx:.2}x\n"
    ));
    out.push_str("guest cycles/echo: median over runs of the median busy guest TSC cycles per received frame while pinging (kernel log=debug)\n");
    let count = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    out.push_str(&format!(
        "guest instructions (QEMU TCG -icount shift=0, median per received frame): per ICMP echo {}, per received TCP segment {}\n",
        count(instructions.per_icmp_echo),
        count(instructions.per_tcp_segment)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_lines_are_parsed() {
        let out = "PING 198.18.0.10 (198.18.0.10) 56(84) bytes of data.\n\
                   64 bytes from 198.18.0.10: icmp_seq=1 ttl=64 time=1.25 ms\n\
                   64 bytes from 198.18.0.10: icmp_seq=2 ttl=64 time=0.875 ms\n\
                   rtt min/avg/max/mdev = 0.875/1.062/1.250/0.187 ms\n";
        let t = ping_times(out);
        assert_eq!(t.len(), 2);
        assert!((t[0].as_secs_f64() - 0.00125).abs() < 1e-9);
    }

    #[test]
    fn kernel_cost_lines_are_parsed() {
        let console = "[DEBUG kernel::net] net: 16 frames in, 16 out; TSC ticks per frame in: service avg 9 min 1 max 20, all busy 3000; device rx 1\n\
                       [DEBUG kernel::net] net: 16 frames in, 16 out; TSC ticks per frame in: service avg 9 min 1 max 20, all busy 1000; device rx 1\n\
                       [DEBUG kernel::net] net: 16 frames in, 16 out; TSC ticks per frame in: service avg 9 min 1 max 20, all busy 2000; device rx 1\n";
        assert_eq!(cycles_per_frame(console), Some(2000));
        assert_eq!(cycles_per_frame("nothing"), None);
    }

    #[test]
    fn the_vmms_take_turns() {
        assert_eq!(
            schedule(3),
            [Vmm::HostVmm, QEMU, Vmm::HostVmm, QEMU, Vmm::HostVmm, QEMU]
        );
    }

    #[test]
    fn figures_over_runs_and_ratio_of_medians() {
        let run = |rtt_ms: &[u64], rx, tx| NetRun {
            ping: rtt_ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            rx_mbps: rx,
            tx_mbps: tx,
            guest_cycles_per_echo: Some(1000),
        };
        let host = NetFigures {
            vmm: Vmm::HostVmm,
            runs: vec![
                run(&[1, 2], 100.0, 50.0),
                run(&[3], 300.0, 70.0),
                run(&[9], 200.0, 60.0),
            ],
        };
        let qemu = NetFigures {
            vmm: QEMU,
            runs: vec![
                run(&[4, 4], 50.0, 20.0),
                run(&[6], 100.0, 30.0),
                run(&[8], 400.0, 40.0),
            ],
        };
        let p = host.ping().unwrap();
        assert_eq!((p.min, p.median, p.max), (1.0, 2.5, 9.0));
        let rx = host.rx().unwrap();
        assert_eq!((rx.min, rx.median, rx.max), (100.0, 200.0, 300.0));
        let all = [host, qemu];
        let (ping, rx, tx) = ratios(&all);
        assert_eq!((ping, rx, tx), (2.0, 2.0, 2.0));
        let counted = Instructions {
            per_icmp_echo: Some(2400),
            per_tcp_segment: None,
        };
        let t = table(&all, &counted);
        assert!(t.contains("100.0/200.0/300.0"), "{t}");
        assert!(t.contains("3 runs per VMM"), "{t}");
        assert!(
            t.contains("per ICMP echo 2400, per received TCP segment -"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&all, &counted)).unwrap();
        assert_eq!(v["host_vmm"]["iperf3_rx_mbps"]["median"], 200.0);
        assert_eq!(v[QEMU.key()]["runs"].as_array().unwrap().len(), 3);
        assert_eq!(v["ratio_tx"], 2.0);
        assert_eq!(v["guest_instructions_per_icmp_echo"], 2400);
        assert!(v["guest_instructions_per_tcp_segment"].is_null());
        let lone: serde_json::Value =
            serde_json::from_str(&json(&all[..1], &Instructions::default())).unwrap();
        assert!(lone["ratio_rx"].is_null());
    }

    #[test]
    fn iperf3_receiver_figure() {
        let report = r#"{"end":{"sum_received":{"bits_per_second":2500000.0}}}"#;
        assert_eq!(receiver_mbps(report).unwrap(), 2.5);
        assert!(receiver_mbps("{}").is_err());
        assert!(receiver_mbps("not json").is_err());
    }
}
