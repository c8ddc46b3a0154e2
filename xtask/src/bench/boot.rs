//! `cargo xtask bench boot`: host-vmm against stock QEMU microvm on the same hello ELF.

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
    out.push_str(&format!(
        "{:<14} {:>26}   {:>26}\n",
        "", "spawn -> app ready", "spawn -> exit"
    ));
    out.push_str(&format!(
        "{:<14} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}\n",
        "vmm", "min", "median", "max", "min", "median", "max"
    ));
    for f in figures {
        out.push_str(&format!(
            "{:<14} {:>8.2} {:>8.2} {:>8.2}   {:>8.2} {:>8.2} {:>8.2}\n",
            f.vmm.key(),
            f.app_ready.min,
            f.app_ready.median,
            f.app_ready.max,
            f.exit.min,
            f.exit.median,
            f.exit.max
        ));
    }
    out.push_str(&format!(
        "ratio app ready (qemu_microvm median / host_vmm median): {:.1}x\n",
        ratio(figures)
    ));
    out
}
