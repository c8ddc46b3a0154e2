//! What a std program costs against its `no_std` counterpart, measured in the runs of
//! `bench boot` and `bench net` (issue 13's goal: at most 1 ms more to app ready, at most
//! 10 % on ping RTT and TCP echo throughput).
//!
//! - Boot: spawn -> app ready of `hello` and `std-hello`, under host-vmm and QEMU microvm,
//!   the two images taking turns in every run.
//! - Network: ping RTT and the throughput of a 1 MiB TCP echo (netprobe: sent and read
//!   back through one connection) of `netecho` and `std-echo` under host-vmm, taking turns,
//!   each run a fresh boot on its own test network.

use crate::net::{GUEST_IP, NetGuest};
use crate::stats::Summary;
use crate::vm::{Boot, Vmm};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

/// The `no_std` image and its std counterpart for the boot figure.
pub const BOOT_IMAGES: [&str; 2] = ["hello", "std-hello"];
/// The `no_std` image and its std counterpart for the network figures.
pub const NET_IMAGES: [&str; 2] = ["netecho", "std-echo"];

/// The line each boot image prints first.
const BOOT_LINES: [&str; 2] = [super::boot::APP_READY, "Hello from std on Roam"];
/// The command line of every boot of both images: std-hello checks its arguments and
/// environment (and exits 1 without them); hello gets the same, which it ignores, so that
/// turning the command line into argv and environment (a cost of the kernel, ~1-2 ms of
/// emulated code here) is in both figures and the difference is std's alone.
const BOOT_CMDLINE: &str = "env=ROAM_GREETING=hi -- alpha beta";
/// The line each network image prints once it listens.
const NET_READY: [&str; 2] = [
    "netecho: listening on port 7",
    "std-echo: listening on port 7",
];
/// The VMMs of the boot figure.
const BOOT_VMMS: [Vmm; 2] = [Vmm::HostVmm, Vmm::QemuMicrovm];
/// How long one boot may take before it counts as hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pings per network run.
const PINGS: u32 = 100;
/// Bytes of the TCP echo per network run.
const ECHO_BYTES: u64 = 1 << 20;

/// Spawn -> app ready of the `no_std` image and of the std one, under one VMM.
#[derive(Debug)]
pub struct BootPair {
    /// Which VMM.
    pub vmm: Vmm,
    /// [`BOOT_IMAGES`]' figures, in order.
    pub ready: [Summary; 2],
}

impl BootPair {
    /// How much later the std program is ready, in ms (difference of the medians).
    pub fn extra_ms(&self) -> f64 {
        self.ready[1].median - self.ready[0].median
    }
}

/// Boots `images` (paths of [`BOOT_IMAGES`]) `runs` times under each of [`BOOT_VMMS`],
/// the images and VMMs taking turns in every run.
pub fn boot(images: [&Path; 2], runs: usize) -> Result<Vec<BootPair>> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut ready = vec![[Vec::new(), Vec::new()]; BOOT_VMMS.len()];
    for run in 1..=runs {
        eprint!("\rstd boot bench: run {run}/{runs}");
        for (v, vmm) in BOOT_VMMS.iter().enumerate() {
            for (i, image) in images.iter().enumerate() {
                let line = BOOT_LINES[i];
                let boot = Boot {
                    cmdline: BOOT_CMDLINE,
                    ..Boot::new(image)
                };
                let context = || format!("{} run {run} under {}", BOOT_IMAGES[i], vmm.key());
                let r = vmm.boot(&boot, line, BOOT_TIMEOUT).with_context(context)?;
                if r.status != 0 {
                    bail!(
                        "{}: exited with status {}\n{}{}",
                        context(),
                        r.status,
                        r.watched.stdout,
                        r.watched.stderr
                    );
                }
                let Some(at) = r.watched.ready else {
                    bail!("{}: never printed `{line}`", context());
                };
                ready[v][i].push(at);
            }
        }
    }
    eprintln!();
    Ok(BOOT_VMMS
        .iter()
        .zip(ready)
        .map(|(&vmm, [a, b])| BootPair {
            vmm,
            ready: [
                Summary::of(&a).expect("runs >= 1"),
                Summary::of(&b).expect("runs >= 1"),
            ],
        })
        .collect())
}

/// The boot comparison's table.
pub fn boot_table(pairs: &[BootPair], runs: usize) -> String {
    let mut out = format!(
        "std vs no_std to app ready: {} vs {} ({runs} runs each, taking turns; ms from process spawn, min/median/max)\n",
        BOOT_IMAGES[1], BOOT_IMAGES[0]
    );
    out.push_str(&format!(
        "{:<14} {:>24} {:>24} {:>16}\n",
        "vmm", BOOT_IMAGES[0], BOOT_IMAGES[1], "std extra (ms)"
    ));
    for p in pairs {
        out.push_str(&format!(
            "{:<14} {:>24} {:>24} {:>16.2}\n",
            p.vmm.key(),
            mmm(Some(p.ready[0]), 2),
            mmm(Some(p.ready[1]), 2),
            p.extra_ms()
        ));
    }
    out.push_str("goal: std extra <= 1 ms (difference of the medians)\n");
    out
}

/// The boot comparison as a JSON member (no braces).
pub fn boot_json(pairs: &[BootPair]) -> String {
    let rows: Vec<String> = pairs
        .iter()
        .map(|p| {
            format!(
                "\"{}\":{{\"{}_ms\":{},\"{}_ms\":{},\"std_extra_ms\":{:.3}}}",
                p.vmm.key(),
                BOOT_IMAGES[0],
                p.ready[0].json(),
                BOOT_IMAGES[1],
                p.ready[1].json(),
                p.extra_ms()
            )
        })
        .collect();
    format!("\"std_app_ready\":{{{}}}", rows.join(","))
}

/// One image's network figures over its runs.
#[derive(Debug, Default)]
pub struct NetImage {
    /// Every ping's RTT.
    pub ping: Vec<Duration>,
    /// Each run's TCP echo throughput, MB/s (bytes echoed over the echo's wall time).
    pub echo_mbs: Vec<f64>,
}

/// [`NET_IMAGES`]' network figures under host-vmm, in order.
#[derive(Debug)]
pub struct NetPair(pub [NetImage; 2]);

impl NetPair {
    /// std over `no_std`: median ping RTT (above 1: std slower) and median echo
    /// throughput (below 1: std slower).
    pub fn ratios(&self) -> (f64, f64) {
        let ping = |i: usize| Summary::of(&self.0[i].ping).map_or(f64::NAN, |s| s.median);
        let echo =
            |i: usize| Summary::of_values(&self.0[i].echo_mbs).map_or(f64::NAN, |s| s.median);
        (ping(1) / ping(0), echo(1) / echo(0))
    }
}

/// Measures `images` (paths of [`NET_IMAGES`]) `runs` times each under host-vmm, taking
/// turns; `netprobe` is the echo client.
pub fn net(images: [&Path; 2], netprobe: &Path, runs: u32) -> Result<NetPair> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut figures = NetPair([NetImage::default(), NetImage::default()]);
    for run in 1..=runs {
        for (i, image) in images.iter().enumerate() {
            let who = format!("std net bench: {} run {run}/{runs}", NET_IMAGES[i]);
            eprintln!("{who}");
            let mut guest =
                NetGuest::start(Vmm::HostVmm, image, "bs", "").with_context(|| who.clone())?;
            guest
                .vm
                .wait_for(NET_READY[i], BOOT_TIMEOUT)
                .with_context(|| who.clone())?;
            let ping = guest
                .client("ping")
                .args(["-c", &PINGS.to_string(), "-i", "0.02", "-W", "2", GUEST_IP])
                .output()?;
            let text = String::from_utf8_lossy(&ping.stdout);
            let rtts = super::net::ping_times(&text);
            if rtts.len() != PINGS as usize {
                bail!("{who}: {} of {PINGS} pings answered:\n{text}", rtts.len());
            }
            figures.0[i].ping.extend(rtts);
            let echo = guest
                .client(netprobe)
                .args([
                    "tcp-echo",
                    &format!("{GUEST_IP}:7"),
                    &ECHO_BYTES.to_string(),
                    &run.to_string(),
                ])
                .output()?;
            let said = String::from_utf8_lossy(&echo.stdout);
            let Some(secs) = echo_seconds(&said).filter(|_| echo.status.success()) else {
                bail!(
                    "{who}: the TCP echo failed ({}): {said}{}",
                    echo.status,
                    String::from_utf8_lossy(&echo.stderr)
                );
            };
            figures.0[i].echo_mbs.push(ECHO_BYTES as f64 / 1e6 / secs);
        }
    }
    Ok(figures)
}

/// The seconds of netprobe's `tcp-echo N bytes identical (hash H) in S s`.
fn echo_seconds(summary: &str) -> Option<f64> {
    let rest = summary.split(" in ").last()?;
    rest.split_whitespace().next()?.parse().ok()
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

/// The network comparison's table.
pub fn net_table(pair: &NetPair, runs: u32) -> String {
    let mut out = format!(
        "std vs no_std on the network: {} vs {} under host_vmm ({runs} runs each, taking turns, each a fresh boot; {PINGS} pings 20 ms apart and a {} MiB TCP echo per run; min/median/max)\n",
        NET_IMAGES[1],
        NET_IMAGES[0],
        ECHO_BYTES >> 20
    );
    out.push_str(&format!(
        "{:<10} {:>22} {:>26}\n",
        "image", "ping ms", "TCP echo MB/s"
    ));
    for (name, f) in NET_IMAGES.iter().zip(&pair.0) {
        out.push_str(&format!(
            "{:<10} {:>22} {:>26}\n",
            name,
            mmm(Summary::of(&f.ping), 3),
            mmm(Summary::of_values(&f.echo_mbs), 3)
        ));
    }
    let (ping, echo) = pair.ratios();
    out.push_str(&format!(
        "std/no_std medians: ping RTT {ping:.2}x, TCP echo throughput {echo:.2}x (goal: RTT <= 1.10x, throughput >= 0.90x)\n"
    ));
    out
}

/// The network comparison as a JSON member (no braces).
pub fn net_json(pair: &NetPair) -> String {
    let rows: Vec<String> = NET_IMAGES
        .iter()
        .zip(&pair.0)
        .map(|(name, f)| {
            let s = |x: Option<Summary>| x.map_or("null".to_string(), |s| s.json());
            format!(
                "\"{name}\":{{\"ping_rtt_ms\":{},\"tcp_echo_mbs\":{}}}",
                s(Summary::of(&f.ping)),
                s(Summary::of_values(&f.echo_mbs))
            )
        })
        .collect();
    let (ping, echo) = pair.ratios();
    let num = |r: f64| {
        if r.is_finite() {
            format!("{r:.3}")
        } else {
            "null".to_string()
        }
    };
    format!(
        "\"std_net\":{{{},\"ratio_ping_rtt\":{},\"ratio_tcp_echo\":{}}}",
        rows.join(","),
        num(ping),
        num(echo)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_seconds_come_from_netprobe_s_summary() {
        let said =
            "netprobe: ok: tcp-echo 1048576 bytes identical (hash a7c95b492ea81f93) in 4.84 s\n";
        assert_eq!(echo_seconds(said), Some(4.84));
        assert_eq!(echo_seconds("netprobe: FAILED: connect"), None);
    }

    #[test]
    fn ratios_and_tables() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect();
        let pair = NetPair([
            NetImage {
                ping: ms(&[1, 2, 3]),
                echo_mbs: vec![0.2, 0.4],
            },
            NetImage {
                ping: ms(&[2, 4, 6]),
                echo_mbs: vec![0.1, 0.2],
            },
        ]);
        assert_eq!(pair.ratios(), (2.0, 0.5));
        let t = net_table(&pair, 2);
        assert!(
            t.contains("ping RTT 2.00x, TCP echo throughput 0.50x"),
            "{t}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", net_json(&pair))).unwrap();
        assert_eq!(v["std_net"]["ratio_tcp_echo"], 0.5);
        assert_eq!(v["std_net"]["std-echo"]["ping_rtt_ms"]["median"], 4.0);

        let s = |m| Summary {
            min: m,
            median: m,
            max: m,
        };
        let boots = [BootPair {
            vmm: Vmm::HostVmm,
            ready: [s(10.0), s(10.5)],
        }];
        assert_eq!(boots[0].extra_ms(), 0.5);
        assert!(boot_table(&boots, 3).contains("0.50"));
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", boot_json(&boots))).unwrap();
        assert_eq!(v["std_app_ready"]["host_vmm"]["std_extra_ms"], 0.5);
    }
}
