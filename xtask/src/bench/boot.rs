//! `cargo xtask bench boot`: host-vmm against stock QEMU microvm on the same hello ELF,
//! and network-ready (spawn -> first ping reply from netecho) against stock QEMU microvm
//! (virtio-net-device on virtio-mmio), in the same run.

use crate::stats::Summary;
use crate::vm::{Boot, Vmm};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The line hello prints once all kernel initialisation is done.
pub const APP_READY: &str = "Hello from Roam";

/// How long one boot may take before it counts as hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The VMMs compared, host-vmm first.
const VMMS: [Vmm; 2] = [Vmm::HostVmm, Vmm::QemuMicrovm];

/// Per-VMM results of the boot benchmark.
#[derive(Debug)]
pub struct BootFigures {
    /// Which VMM.
    pub vmm: Vmm,
    /// Spawn → first app line.
    pub app_ready: Summary,
    /// Spawn → process exit.
    pub exit: Summary,
}

/// Boots `image` `runs` times under each VMM, alternating so drift hits both alike.
pub fn run(image: &Path, runs: usize) -> Result<Vec<BootFigures>> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut ready = vec![Vec::with_capacity(runs); VMMS.len()];
    let mut exit = vec![Vec::with_capacity(runs); VMMS.len()];
    let boot = Boot::new(image);
    for run in 1..=runs {
        eprint!("\rboot bench: run {run}/{runs}");
        let _ = std::io::stderr().flush();
        for (i, vmm) in VMMS.iter().enumerate() {
            let r = vmm
                .boot(&boot, APP_READY, BOOT_TIMEOUT)
                .with_context(|| format!("run {run} under {}", vmm.key()))?;
            if r.status != 0 {
                bail!(
                    "run {run} under {}: guest exited with status {}\n{}{}",
                    vmm.key(),
                    r.status,
                    r.watched.stdout,
                    r.watched.stderr
                );
            }
            let Some(at) = r.watched.ready else {
                bail!(
                    "run {run} under {}: the guest never printed `{APP_READY}`",
                    vmm.key()
                );
            };
            ready[i].push(at);
            exit[i].push(r.watched.exited);
        }
    }
    eprintln!();
    Ok(VMMS
        .iter()
        .enumerate()
        .map(|(i, &vmm)| BootFigures {
            vmm,
            app_ready: Summary::of(&ready[i]).expect("runs >= 1"),
            exit: Summary::of(&exit[i]).expect("runs >= 1"),
        })
        .collect())
}

/// QEMU's median app-ready time over host-vmm's.
pub fn ratio(figures: &[BootFigures]) -> f64 {
    let median = |vmm| {
        figures
            .iter()
            .find(|f| f.vmm == vmm)
            .map(|f| f.app_ready.median)
            .unwrap_or(f64::NAN)
    };
    median(Vmm::QemuMicrovm) / median(Vmm::HostVmm)
}

/// The `--json` object.
pub fn json(figures: &[BootFigures], runs: usize) -> String {
    let mut out = format!("{{\"bench\":\"boot\",\"runs\":{runs}");
    for f in figures {
        out.push_str(&format!(
            ",\"{}\":{{\"app_ready_ms\":{},\"exit_ms\":{}}}",
            f.vmm.key(),
            f.app_ready.json(),
            f.exit.json()
        ));
    }
    out.push_str(&format!(",\"ratio_app_ready\":{:.3}}}", ratio(figures)));
    out
}

/// The human-readable table.
pub fn table(figures: &[BootFigures], runs: usize, image: &Path) -> String {
    let mut out = format!(
        "boot benchmark: {} ({runs} runs per VMM, 128 MiB guest; times in ms from process spawn)\n",
        image.display()
    );
    out.push_str(&pair_table(
        ("spawn -> app ready", "spawn -> exit"),
        figures.iter().map(|f| (f.vmm, &f.app_ready, &f.exit)),
    ));
    out.push_str(&format!(
        "ratio app ready (qemu_microvm median / host_vmm median): {:.1}x\n",
        ratio(figures)
    ));
    out
}

/// The VMMs compared for network-ready: host-vmm (virtio-net on PCI) and QEMU microvm
/// (virtio-net on virtio-mmio, the NIC found from the command line), the same ELF. The
/// guest's own `network_init` figure compares the NIC bring-up alone.
const NET_VMMS: [Vmm; 2] = [Vmm::HostVmm, Vmm::QemuMicrovm];

/// How long one guest may take to answer its first ping.
const NET_READY_TIMEOUT_S: u32 = 30;

/// Per-VMM results of the network-ready benchmark.
#[derive(Debug)]
pub struct NetReadyFigures {
    /// Which VMM.
    pub vmm: Vmm,
    /// Spawn -> first ping reply in the client namespace.
    pub ready: Summary,
    /// The guest's own `network_init` time (netecho prints it), in ms.
    pub network_init: Summary,
}

/// The line netecho prints once its network is up and its sockets listen.
const NETECHO_LISTENING: &str = "netecho: listening";

/// Boots netecho `image` `runs` times under each of [`NET_VMMS`] (alternating) on one test
/// network and times spawn -> first ping reply. The client starts pinging (every 2 ms, the
/// guest's MAC in its neighbour table, so no ARP retry, 1 s apart, hides the guest's time)
/// as soon as netecho says it listens: pings sent earlier would queue on the TAP while
/// QEMU's firmware runs and land inside the guest's `network_init`, which is measured too.
pub fn net_ready(image: &Path, runs: usize) -> Result<Vec<NetReadyFigures>> {
    use crate::net::{self, Topology, TopologyGuard};
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let topo = TopologyGuard(Topology::unique("nr")?);
    topo.0.up()?;
    let client_ns = topo.0.client_ns();
    crate::proc::run(Topology::exec_in(&client_ns, "ip").args([
        "neigh",
        "replace",
        net::GUEST_IP,
        "lladdr",
        net::GUEST_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]))?;
    let host_ns = topo.0.host_ns(1);
    let cmdline = net::guest_cmdline();
    let boot = Boot {
        cmdline: &cmdline,
        net: Some(crate::vm::NetAttach::virtio(
            &host_ns,
            net::TAP,
            net::GUEST_MAC,
        )),
        ..Boot::new(image)
    };
    let mut ready = vec![Vec::with_capacity(runs); NET_VMMS.len()];
    let mut init = vec![Vec::with_capacity(runs); NET_VMMS.len()];
    for run in 1..=runs {
        eprint!("\rnetwork-ready bench: run {run}/{runs}");
        let _ = std::io::stderr().flush();
        for (i, vmm) in NET_VMMS.iter().enumerate() {
            let context = || format!("run {run} under {}", vmm.key());
            // Started before the VMM and waiting on its stdin, so that entering the
            // namespace and starting a shell are not part of the figure.
            let mut ping = Topology::exec_in(&client_ns, "sh")
                .arg("-c")
                .arg(format!(
                    "read go && exec ping -n -q -c 1 -i 0.002 -w {NET_READY_TIMEOUT_S} {}",
                    net::GUEST_IP
                ))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(context)?;
            let spawned = std::time::Instant::now();
            let mut vm =
                crate::proc::Background::spawn(&mut vmm.command(&boot)).with_context(context)?;
            while !vm.output().contains(NETECHO_LISTENING) {
                if !vm.running() || spawned.elapsed().as_secs() >= NET_READY_TIMEOUT_S.into() {
                    bail!("{}: netecho never listened\n{}", context(), vm.output());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            if let Some(mut go) = ping.stdin.take() {
                go.write_all(b"go\n").with_context(context)?;
            }
            let answered = ping.wait_with_output().with_context(context)?;
            let took = spawned.elapsed();
            if !answered.status.success() {
                bail!(
                    "{}: no ping reply within {NET_READY_TIMEOUT_S} s\n{}",
                    context(),
                    vm.output()
                );
            }
            let Some(us) = network_init_us(&vm.output()) else {
                bail!(
                    "{}: no `network_init took N us` line\n{}",
                    context(),
                    vm.output()
                );
            };
            ready[i].push(took);
            init[i].push(Duration::from_micros(us));
        }
    }
    eprintln!();
    Ok(NET_VMMS
        .iter()
        .enumerate()
        .map(|(i, &vmm)| NetReadyFigures {
            vmm,
            ready: Summary::of(&ready[i]).expect("runs >= 1"),
            network_init: Summary::of(&init[i]).expect("runs >= 1"),
        })
        .collect())
}

/// The microseconds in netecho's `network_init took N us`.
fn network_init_us(output: &str) -> Option<u64> {
    let rest = output.split("network_init took ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// QEMU's median over host-vmm's, for network-ready and for `network_init`.
pub fn net_ratios(figures: &[NetReadyFigures]) -> (f64, f64) {
    let median = |vmm, f: fn(&NetReadyFigures) -> f64| {
        figures
            .iter()
            .find(|x| x.vmm == vmm)
            .map(f)
            .unwrap_or(f64::NAN)
    };
    let ready = |x: &NetReadyFigures| x.ready.median;
    let init = |x: &NetReadyFigures| x.network_init.median;
    (
        median(NET_VMMS[1], ready) / median(Vmm::HostVmm, ready),
        median(NET_VMMS[1], init) / median(Vmm::HostVmm, init),
    )
}

/// The network-ready part of the `--json` object (a member, without braces).
pub fn net_json(figures: &[NetReadyFigures]) -> String {
    let mut out = String::from("\"network_ready\":{");
    for f in figures {
        out.push_str(&format!(
            "\"{}\":{{\"ready_ms\":{},\"network_init_ms\":{}}},",
            f.vmm.key(),
            f.ready.json(),
            f.network_init.json()
        ));
    }
    let (ready, init) = net_ratios(figures);
    out.push_str(&format!(
        "\"ratio_ready\":{ready:.3},\"ratio_network_init\":{init:.3}}}"
    ));
    out
}

/// The network-ready table.
pub fn net_table(figures: &[NetReadyFigures], runs: usize, image: &Path) -> String {
    let mut out = format!(
        "network-ready: {} ({runs} runs per VMM, virtio-net on a TAP; ms)\n",
        image.display()
    );
    out.push_str(&pair_table(
        ("spawn -> first ping reply", "guest network_init"),
        figures.iter().map(|f| (f.vmm, &f.ready, &f.network_init)),
    ));
    let (ready, init) = net_ratios(figures);
    out.push_str(&format!(
        "ratio ({} median / host_vmm median): network ready {ready:.1}x, network_init {init:.1}x\n",
        NET_VMMS[1].key()
    ));
    out
}

/// Two min/median/max column groups headed `heads`, one row per VMM.
fn pair_table<'a>(
    heads: (&str, &str),
    rows: impl Iterator<Item = (Vmm, &'a Summary, &'a Summary)>,
) -> String {
    let mut out = format!("{:<14} {:>26}   {:>26}\n", "", heads.0, heads.1);
    out.push_str(&format!(
        "{:<14} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}\n",
        "vmm", "min", "median", "max", "min", "median", "max"
    ));
    for (vmm, a, b) in rows {
        out.push_str(&format!(
            "{:<14} {:>8.2} {:>8.2} {:>8.2}   {:>8.2} {:>8.2} {:>8.2}\n",
            vmm.key(),
            a.min,
            a.median,
            a.max,
            b.min,
            b.median,
            b.max
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Summary, Vmm, network_init_us, pair_table};

    #[test]
    fn a_pair_table_has_both_heads_and_one_row_per_vmm() {
        let a = Summary {
            min: 1.0,
            median: 2.0,
            max: 3.0,
        };
        let b = Summary {
            min: 10.0,
            median: 20.5,
            max: 30.0,
        };
        let t = pair_table(("left", "right"), [(Vmm::HostVmm, &a, &b)].into_iter());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].contains("left") && lines[0].contains("right"),
            "{t}"
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row[1..],
            ["1.00", "2.00", "3.00", "10.00", "20.50", "30.00"],
            "{t}"
        );
    }

    #[test]
    fn network_init_is_read_from_netecho_s_line() {
        let out = "boot\nnetecho: listening on port 7 (TCP and UDP); network_init took 41234 us\n";
        assert_eq!(network_init_us(out), Some(41234));
        assert_eq!(network_init_us("netecho: network_init took"), None);
    }
}
