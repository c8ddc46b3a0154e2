//! Booting a guest image under host-vmm or stock QEMU, and reading back the guest's status.

use crate::{host_vmm_path, proc};
use anyhow::{Result, bail};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// Status host-vmm (and our QEMU mapping) reports when the guest stopped without a status.
pub const STATUS_NO_GUEST_STATUS: i32 = 124;

/// The VMMs an image can run under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// Roam's own VMM (release build).
    HostVmm,
    /// Stock `qemu-system-x86_64 -M microvm`, booting the same ELF through its PVH note.
    QemuMicrovm,
    /// Stock `qemu-system-x86_64 -M pc`: PCI at 0xCF8 and QEMU's own virtio-net-pci (no vhost),
    /// the peer for network tests and benchmarks. SeaBIOS makes it boot in ~2 s.
    QemuPc,
}

/// Where a guest's NIC attaches: a TAP inside a network namespace.
#[derive(Clone, Debug)]
pub struct NetAttach<'a> {
    /// The namespace the VMM runs in.
    pub netns: &'a str,
    /// The TAP device (in that namespace).
    pub tap: &'a str,
    /// The guest's MAC address.
    pub mac: &'a str,
}

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct Boot<'a> {
    /// The guest ELF.
    pub image: &'a Path,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// QEMU only: expose the TSC frequency leaf (0x40000010) as host-vmm does. Without it
    /// QEMU also gets a PIT, so the kernel's PIT calibration path runs.
    pub qemu_tsc_leaf: bool,
    /// A virtio-net NIC on a TAP, if any.
    pub net: Option<NetAttach<'a>>,
}

impl<'a> Boot<'a> {
    /// Boots `image` with 128 MiB and an empty command line.
    pub fn new(image: &'a Path) -> Self {
        Boot {
            image,
            mem_mib: 128,
            cmdline: "",
            qemu_tsc_leaf: true,
            net: None,
        }
    }
}

impl Vmm {
    /// Short name used in tables and JSON.
    pub fn key(self) -> &'static str {
        match self {
            Vmm::HostVmm => "host_vmm",
            Vmm::QemuMicrovm => "qemu_microvm",
            Vmm::QemuPc => "qemu_pc",
        }
    }

    /// The command that boots `boot` under this VMM, with the guest's serial on stdout; inside
    /// the NIC's namespace when it has one.
    pub fn command(self, boot: &Boot) -> Command {
        let program: std::ffi::OsString = match self {
            Vmm::HostVmm => host_vmm_path().into(),
            Vmm::QemuMicrovm | Vmm::QemuPc => crate::prereq::QEMU.program.into(),
        };
        let mut cmd = match &boot.net {
            Some(net) => crate::net::Topology::exec_in(net.netns, program),
            None => Command::new(program),
        };
        self.add_args(&mut cmd, boot);
        cmd
    }

    fn add_args(self, cmd: &mut Command, boot: &Boot) {
        if self == Vmm::HostVmm {
            cmd.arg("run")
                .arg(boot.image)
                .arg("--mem")
                .arg(format!("{}M", boot.mem_mib));
            if !boot.cmdline.is_empty() {
                cmd.arg("--cmdline").arg(boot.cmdline);
            }
            if let Some(net) = &boot.net {
                cmd.arg("--net")
                    .arg(format!("tap={},mac={}", net.tap, net.mac));
            }
            return;
        }
        // Both QEMU machines expose the TSC frequency leaf (0x40000010) as host-vmm does,
        // unless the test asks for the PIT calibration path.
        let cpu = if boot.qemu_tsc_leaf {
            "host,+invtsc,vmware-cpuid-freq=on"
        } else {
            "host,+invtsc,vmware-cpuid-freq=off"
        };
        let machine = match (self, boot.qemu_tsc_leaf) {
            (Vmm::QemuMicrovm, true) => "microvm,x-option-roms=off,rtc=off,pit=off,pic=off",
            (Vmm::QemuMicrovm, false) => "microvm,x-option-roms=off,rtc=off,pic=off",
            _ => "pc",
        };
        cmd.args([
            "-M", machine, "-accel", "kvm", "-cpu", cpu, "-smp", "1", "-m",
        ])
        .arg(format!("{}M", boot.mem_mib))
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
        ])
        .arg(boot.image)
        .arg("-append")
        .arg(boot.cmdline);
        if let Some(net) = &boot.net {
            cmd.arg("-netdev")
                .arg(format!(
                    "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
                    net.tap
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n0,disable-legacy=on,mac={}",
                    net.mac
                ));
        }
    }

    /// The guest's exit status from the VMM process's status.
    ///
    /// host-vmm exits with the guest's status. QEMU's isa-debug-exit exits with
    /// `(status << 1) | 1`, and with 0 when the guest stopped without writing a status; its own
    /// errors exit 1 too, which `stderr` tells apart.
    pub fn guest_status(self, status: ExitStatus, stderr: &str) -> Result<i32> {
        let Some(code) = status.code() else {
            bail!(
                "{} was killed by signal {}",
                self.key(),
                status.signal().unwrap_or(0)
            );
        };
        match self {
            Vmm::HostVmm => Ok(code),
            Vmm::QemuMicrovm | Vmm::QemuPc => {
                if code == 1 && stderr.contains("qemu-system-x86_64:") {
                    bail!("QEMU failed: {}", stderr.trim());
                }
                Ok(if code & 1 == 1 {
                    code >> 1
                } else {
                    STATUS_NO_GUEST_STATUS
                })
            }
        }
    }

    /// Boots and waits: the watched run plus the guest's status.
    pub fn boot(self, boot: &Boot, ready_text: &str, timeout: Duration) -> Result<GuestRun> {
        let watched = proc::watch(&mut self.command(boot), ready_text, timeout)?;
        let status = self.guest_status(watched.status, &watched.stderr)?;
        Ok(GuestRun { watched, status })
    }
}

/// One finished boot.
#[derive(Debug)]
pub struct GuestRun {
    /// Timings and output.
    pub watched: proc::Watched,
    /// The guest's exit status (see ARCHITECTURE.md).
    pub status: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn qemu_status_maps_back_to_the_guest_status() {
        let q = Vmm::QemuMicrovm;
        assert_eq!(q.guest_status(exit(1), "").unwrap(), 0);
        assert_eq!(q.guest_status(exit((101 << 1) | 1), "").unwrap(), 101);
        assert_eq!(q.guest_status(exit(0), "").unwrap(), STATUS_NO_GUEST_STATUS);
        assert!(
            q.guest_status(exit(1), "qemu-system-x86_64: -kernel x: No such file")
                .is_err()
        );
    }

    #[test]
    fn host_vmm_status_is_the_guest_status() {
        assert_eq!(Vmm::HostVmm.guest_status(exit(7), "").unwrap(), 7);
        assert!(
            Vmm::HostVmm
                .guest_status(ExitStatus::from_raw(9), "")
                .is_err()
        );
    }
}
