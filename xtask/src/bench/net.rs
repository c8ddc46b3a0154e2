//! `cargo xtask bench net`: ping RTT and iperf3 throughput of the same guest image on
//! host-vmm's virtio-net and on stock QEMU's virtio-net-pci (no vhost), each on its own test
//! network, plus the guest's own cost per echoed ping.
//!
//! Directions are the guest's: `rx` is the client sending to the guest (`iperf3 -c`), `tx`
//! is the guest sending (`iperf3 -c -R`).

use crate::net::{GUEST_IP, NetGuest};
use crate::stats::Summary;
use crate::vm::Vmm;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

/// Pings per VMM (the issue asks for the median of 100).
pub const PINGS: u32 = 100;
/// Seconds per iperf3 run.
pub const IPERF_SECONDS: u32 = 5;
/// The image measured: it serves iperf3 on 5201, and the kernel answers ping.
pub const IMAGE: &str = "iperf3";

const VMMS: [Vmm; 2] = [Vmm::HostVmm, Vmm::QemuPc];

/// What one VMM achieved.
#[derive(Debug)]
pub struct NetFigures {
    /// Which VMM.
    pub vmm: Vmm,
    /// Ping round-trip times in ms.
    pub ping: Summary,
    /// Client → guest throughput, Mbit/s (the receiver's figure).
    pub rx_mbps: f64,
    /// Guest → client throughput, Mbit/s (the receiver's figure).
    pub tx_mbps: f64,
    /// Median busy guest TSC cycles per received frame during the ping phase, when the
    /// kernel reported it (`log=debug`).
    pub guest_cycles_per_echo: Option<u64>,
}

/// Measures every VMM in turn.
pub fn run(image: &Path) -> Result<Vec<NetFigures>> {
    VMMS.iter()
        .map(|&vmm| measure(vmm, image).with_context(|| format!("measuring {}", vmm.key())))
        .collect()
}

fn measure(vmm: Vmm, image: &Path) -> Result<NetFigures> {
    eprintln!("net bench: {}: booting {}", vmm.key(), image.display());
    // log=debug makes the kernel report its per-frame cost every 16 frames.
    let guest = NetGuest::start(vmm, image, "bn", "log=debug")?;
    let console_before = guest.vm.output().len();
    eprintln!("net bench: {}: {PINGS} pings", vmm.key());
    let ping = ping(&guest)?;
    let guest_cycles_per_echo = cycles_per_frame(&guest.vm.output()[console_before..]);
    eprintln!("net bench: {}: iperf3 -t {IPERF_SECONDS}", vmm.key());
    let rx_mbps = iperf3(&guest, false)?;
    eprintln!("net bench: {}: iperf3 -t {IPERF_SECONDS} -R", vmm.key());
    let tx_mbps = iperf3(&guest, true)?;
    Ok(NetFigures {
        vmm,
        ping,
        rx_mbps,
        tx_mbps,
        guest_cycles_per_echo,
    })
}

fn ping(guest: &NetGuest) -> Result<Summary> {
    let out = guest
        .client("ping")
        .args(["-c", &PINGS.to_string(), "-i", "0.02", "-W", "2", GUEST_IP])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts = ping_times(&text);
    if rtts.len() != PINGS as usize {
        bail!("{} of {PINGS} pings answered:\n{text}", rtts.len());
    }
    Summary::of(&rtts).context("no ping times")
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

fn figure(figures: &[NetFigures], vmm: Vmm) -> Option<&NetFigures> {
    figures.iter().find(|f| f.vmm == vmm)
}

/// (ping RTT qemu/host, rx host/qemu, tx host/qemu): above 1 means host-vmm is better.
pub fn ratios(figures: &[NetFigures]) -> (f64, f64, f64) {
    match (figure(figures, Vmm::HostVmm), figure(figures, Vmm::QemuPc)) {
        (Some(h), Some(q)) => (
            q.ping.median / h.ping.median,
            h.rx_mbps / q.rx_mbps,
            h.tx_mbps / q.tx_mbps,
        ),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// The `--json` object.
pub fn json(figures: &[NetFigures]) -> String {
    let mut out = format!(
        "{{\"bench\":\"net\",\"image\":\"{IMAGE}\",\"pings\":{PINGS},\"iperf3_seconds\":{IPERF_SECONDS}"
    );
    for f in figures {
        let cycles = f
            .guest_cycles_per_echo
            .map_or("null".to_string(), |c| c.to_string());
        out.push_str(&format!(
            ",\"{}\":{{\"ping_rtt_ms\":{},\"iperf3_rx_mbps\":{:.3},\"iperf3_tx_mbps\":{:.3},\"guest_cycles_per_echo\":{cycles}}}",
            f.vmm.key(),
            f.ping.json(),
            f.rx_mbps,
            f.tx_mbps
        ));
    }
    let (ping, rx, tx) = ratios(figures);
    out.push_str(&format!(
        ",\"ratio_ping_rtt\":{ping:.3},\"ratio_rx\":{rx:.3},\"ratio_tx\":{tx:.3}}}"
    ));
    out
}

/// The human-readable table.
pub fn table(figures: &[NetFigures]) -> String {
    let mut out = format!(
        "net benchmark: image {IMAGE}, {PINGS} pings 20 ms apart, iperf3 -t {IPERF_SECONDS} each way (rx: into the guest, tx: out of it)\n"
    );
    out.push_str(&format!(
        "{:<10} {:>10} {:>10} {:>10} {:>14} {:>14} {:>22}\n",
        "vmm", "ping min", "median", "max", "rx Mbit/s", "tx Mbit/s", "guest cycles/echo"
    ));
    for f in figures {
        out.push_str(&format!(
            "{:<10} {:>10.3} {:>10.3} {:>10.3} {:>14.3} {:>14.3} {:>22}\n",
            f.vmm.key(),
            f.ping.min,
            f.ping.median,
            f.ping.max,
            f.rx_mbps,
            f.tx_mbps,
            f.guest_cycles_per_echo
                .map_or("-".to_string(), |c| c.to_string())
        ));
    }
    let (ping, rx, tx) = ratios(figures);
    out.push_str(&format!(
        "ratios, above 1 = host-vmm better: ping RTT (qemu/host) {ping:.2}x, rx {rx:.2}x, tx {tx:.2}x\n"
    ));
    out.push_str("guest cycles/echo: median busy guest TSC cycles per received frame while pinging (kernel log=debug)\n");
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
    fn iperf3_receiver_figure() {
        let report = r#"{"end":{"sum_received":{"bits_per_second":2500000.0}}}"#;
        assert_eq!(receiver_mbps(report).unwrap(), 2.5);
        assert!(receiver_mbps("{}").is_err());
        assert!(receiver_mbps("not json").is_err());
    }
}
