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
    /// Stock `qemu-system-x86_64 -M microvm,acpi=off`, booting the same ELF through its PVH
    /// note; a NIC is QEMU's `virtio-net-device` (virtio-mmio, modern unless
    /// [`Boot::qemu_legacy_virtio`]; no vhost), which QEMU announces by appending
    /// `virtio_mmio.device=` to the command line (only without ACPI). The peer for network
    /// tests and benchmarks.
    QemuMicrovm,
    /// Stock `qemu-system-x86_64 -M pc`: PCI at 0xCF8 and QEMU's own virtio-net-pci (no
    /// vhost). SeaBIOS makes it boot in ~2 s; kept where a case needs PCI: our PCI driver
    /// against QEMU's device (tests/net.rs), and the QEMU migration peer.
    QemuPc,
}

/// Where a guest's NICs attach: TAPs inside a network namespace.
#[derive(Clone, Debug)]
pub struct NetAttach<'a> {
    /// The namespace the VMM runs in.
    pub netns: &'a str,
    /// The virtio-net NIC's TAP (in that namespace), if the guest gets one.
    pub tap: Option<&'a str>,
    /// The emulated 82599 VF's TAP (host-vmm only), if the guest gets one. It shares the
    /// guest's MAC with virtio-net.
    pub vf_tap: Option<&'a str>,
    /// The guest's MAC address.
    pub mac: &'a str,
}

impl<'a> NetAttach<'a> {
    /// A virtio-net NIC on `tap` in `netns`, and no VF.
    pub fn virtio(netns: &'a str, tap: &'a str, mac: &'a str) -> Self {
        NetAttach {
            netns,
            tap: Some(tap),
            vf_tap: None,
            mac,
        }
    }
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
    /// QEMU microvm only: the NIC's virtio-mmio transport in its legacy (version 1) form,
    /// QEMU 7.2's default, instead of the modern one.
    pub qemu_legacy_virtio: bool,
    /// QEMU only: TCG with `-icount shift=0` instead of KVM, so the guest's TSC counts its
    /// instructions (deterministic; one tick per nanosecond of virtual time, the 1 GHz the
    /// kernel assumes without a TSC frequency leaf).
    pub qemu_tcg_icount: bool,
    /// NICs on TAPs, if any.
    pub net: Option<NetAttach<'a>>,
    /// host-vmm only: listen for `host-vmm ctl` on a Unix socket at this path (`--api-socket`).
    pub control: Option<&'a Path>,
}

impl<'a> Boot<'a> {
    /// Boots `image` with 128 MiB and an empty command line.
    pub fn new(image: &'a Path) -> Self {
        Boot {
            image,
            mem_mib: 128,
            cmdline: "",
            qemu_tsc_leaf: true,
            qemu_legacy_virtio: false,
            qemu_tcg_icount: false,
            net: None,
            control: None,
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
                if let Some(tap) = net.tap {
                    cmd.arg("--net").arg(format!("tap={tap},mac={}", net.mac));
                }
                if let Some(tap) = net.vf_tap {
                    cmd.arg("--vf").arg(format!("tap={tap},mac={}", net.mac));
                }
            }
            if let Some(path) = boot.control {
                cmd.arg("--api-socket").arg(path);
            }
            return;
        }
        // QEMU has no model of the 82599 VF and no `host-vmm ctl` socket: a boot asking for
        // them is a mistake in the caller, not something to drop silently.
        assert!(
            boot.net.as_ref().is_none_or(|n| n.vf_tap.is_none()) && boot.control.is_none(),
            "the VF and the control socket exist only under host-vmm"
        );
        // Both QEMU machines expose the TSC frequency leaf (0x40000010) as host-vmm does,
        // unless the test asks for the PIT calibration path.
        // `-arch-capabilities`: some nested KVM hosts list IA32_ARCH_CAPABILITIES (0x10a) as
        // supported yet refuse QEMU's write of it, and QEMU aborts on that assertion
        // (measured on Linux 6.18 kvm_pvm: "failed to set MSR 0x10a to 0x69"). Our guest
        // never reads that MSR.
        let cpu = match (boot.qemu_tcg_icount, boot.qemu_tsc_leaf) {
            // TCG has no host CPU to copy and no TSC frequency leaf: the kernel then assumes
            // 1 GHz, which is right under icount (a tick is a virtual nanosecond).
            (true, _) => "max",
            (false, true) => "host,+invtsc,vmware-cpuid-freq=on,-arch-capabilities",
            (false, false) => "host,+invtsc,vmware-cpuid-freq=off,-arch-capabilities",
        };
        // microvm: `acpi=off`, because only then does QEMU append its virtio-mmio devices to
        // the command line (with ACPI it describes them in tables the kernel does not read).
        let machine = match (self, boot.qemu_tsc_leaf) {
            (Vmm::QemuMicrovm, true) => {
                "microvm,acpi=off,x-option-roms=off,rtc=off,pit=off,pic=off"
            }
            (Vmm::QemuMicrovm, false) => "microvm,acpi=off,x-option-roms=off,rtc=off,pic=off",
            _ => "pc",
        };
        if boot.qemu_tcg_icount {
            cmd.args(["-accel", "tcg", "-icount", "shift=0"]);
        } else {
            cmd.args(["-accel", "kvm"]);
        }
        cmd.args(["-M", machine, "-cpu", cpu, "-smp", "1", "-m"])
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
        if let Some((net, tap)) = boot.net.as_ref().and_then(|n| Some((n, n.tap?))) {
            cmd.arg("-netdev")
                .arg(format!(
                    "tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"
                ))
                .arg("-device");
            if self == Vmm::QemuMicrovm {
                cmd.arg(format!("virtio-net-device,netdev=n0,mac={}", net.mac));
                if !boot.qemu_legacy_virtio {
                    cmd.args(["-global", "virtio-mmio.force-legacy=false"]);
                }
            } else {
                cmd.arg(format!(
                    "virtio-net-pci,netdev=n0,disable-legacy=on,mac={}",
                    net.mac
                ));
            }
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

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn host_vmm_gets_each_nic_and_the_control_socket_asked_for() {
        let image = Path::new("/images/netecho.elf");
        let sock = Path::new("/tmp/roam-ctl-x.sock");
        let mac = "52:54:00:12:34:56";
        let both = Boot {
            net: Some(NetAttach {
                netns: "ns-h1",
                tap: Some("tap0"),
                vf_tap: Some("tap1"),
                mac,
            }),
            control: Some(sock),
            ..Boot::new(image)
        };
        let cmd = Vmm::HostVmm.command(&both);
        assert_eq!(cmd.get_program(), "ip", "runs inside the namespace");
        let a = args(&cmd);
        assert!(has_pair(&a, "exec", "ns-h1"), "{a:?}");
        assert!(
            has_pair(&a, "--net", &format!("tap=tap0,mac={mac}")),
            "{a:?}"
        );
        assert!(
            has_pair(&a, "--vf", &format!("tap=tap1,mac={mac}")),
            "{a:?}"
        );
        assert!(
            has_pair(&a, "--api-socket", "/tmp/roam-ctl-x.sock"),
            "{a:?}"
        );

        let vf_only = Boot {
            net: Some(NetAttach {
                tap: None,
                ..both.net.clone().unwrap()
            }),
            control: None,
            ..both.clone()
        };
        let a = args(&Vmm::HostVmm.command(&vf_only));
        assert!(
            !a.iter().any(|x| x == "--net" || x == "--api-socket"),
            "{a:?}"
        );
        assert!(
            has_pair(&a, "--vf", &format!("tap=tap1,mac={mac}")),
            "{a:?}"
        );

        let virtio = Boot {
            net: Some(NetAttach::virtio("ns-h1", "tap0", mac)),
            ..Boot::new(image)
        };
        let a = args(&Vmm::HostVmm.command(&virtio));
        assert!(!a.iter().any(|x| x == "--vf"), "{a:?}");
        let a = args(&Vmm::QemuPc.command(&virtio));
        assert!(
            a.iter().any(|x| x.starts_with("tap,id=n0,ifname=tap0,")),
            "{a:?}"
        );
        let a = args(&Vmm::QemuMicrovm.command(&virtio));
        assert!(
            has_pair(
                &a,
                "-device",
                &format!("virtio-net-device,netdev=n0,mac={mac}")
            ),
            "{a:?}"
        );
        assert!(
            has_pair(&a, "-global", "virtio-mmio.force-legacy=false"),
            "{a:?}"
        );
        assert!(
            a.iter().any(|x| x.starts_with("microvm,acpi=off,")),
            "QEMU appends virtio_mmio.device= only without ACPI: {a:?}"
        );
        let legacy = Boot {
            qemu_legacy_virtio: true,
            ..virtio.clone()
        };
        let a = args(&Vmm::QemuMicrovm.command(&legacy));
        assert!(!a.iter().any(|x| x == "-global"), "{a:?}");
    }

    #[test]
    #[should_panic(expected = "only under host-vmm")]
    fn qemu_refuses_a_vf() {
        let image = Path::new("/images/netecho.elf");
        let boot = Boot {
            net: Some(NetAttach {
                vf_tap: Some("tap1"),
                ..NetAttach::virtio("ns", "tap0", "52:54:00:12:34:56")
            }),
            ..Boot::new(image)
        };
        let _ = Vmm::QemuPc.command(&boot);
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
