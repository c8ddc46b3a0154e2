//! Prerequisites: Debian packages are installed when we are root, otherwise we stop with the
//! exact command to run. The Rust toolchain and guest target come from rust-toolchain.toml.

use crate::artifacts::GUEST_TARGET;
use crate::proc;
use anyhow::{Result, bail};
use std::path::Path;
use std::process::Command;

/// A Debian package and the program that tells us it is installed.
#[derive(Clone, Copy, Debug)]
pub struct Package {
    /// Debian package name.
    pub name: &'static str,
    /// A program the package installs.
    pub program: &'static str,
}

/// Stock QEMU, the peer every boot figure is compared with.
pub const QEMU: Package = Package {
    name: "qemu-system-x86",
    program: "qemu-system-x86_64",
};

/// What the network tests and commands use: namespaces, stock ping and iperf3, curl, which
/// drives host-vmm's API in the tests as users drive it, procps (`sysctl` sets forwarding
/// and rp_filter in the wide-area topology's namespaces, `kill` stops its delay line),
/// nftables (`host-vmm nat-edge` applies its translation with `nft -f -`) and conntrack
/// (the network-paging tests check that translated flows leave no conntrack entry).
pub const NET_TOOLS: [Package; 7] = [
    Package {
        name: "iproute2",
        program: "ip",
    },
    Package {
        name: "iputils-ping",
        program: "ping",
    },
    Package {
        name: "iperf3",
        program: "iperf3",
    },
    Package {
        name: "curl",
        program: "curl",
    },
    Package {
        name: "procps",
        program: "sysctl",
    },
    Package {
        name: "nftables",
        program: "nft",
    },
    Package {
        name: "conntrack",
        program: "conntrack",
    },
];

/// GNU objcopy, which narrows the kernel object of std images to its ABI symbols
/// (`stdimage`). Present wherever rustc links host programs (gcc depends on it).
pub const BINUTILS: Package = Package {
    name: "binutils",
    program: "objcopy",
};

/// What only `cargo xtask test` needs: tshark, Wireshark's dissectors as a decoder
/// independent of ours (proto/mip's `tests/tshark.rs` feeds it our Mobile IP messages).
pub const TEST_TOOLS: [Package; 1] = [Package {
    name: "tshark",
    program: "tshark",
}];

/// Whether `program` is found on PATH (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Whether this process runs as root (effective UID 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Fields: real, effective, saved, filesystem.
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Fails with a clear message unless this runs as root (`why` says what needs it).
pub fn ensure_root(why: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!("{why} and needs root: run it as root (e.g. sudo -E cargo xtask ...)")
}

/// Makes sure every package is installed: installs missing ones as root, else explains how.
pub fn ensure_packages(packages: &[Package]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| !on_path(p.program))
        .map(|p| p.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}\n  install them with: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {list}"
        );
    }
    eprintln!("Installing missing Debian packages: {list}");
    proc::run(Command::new("apt-get").args(["update", "-q"]))?;
    proc::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if let Some(p) = packages.iter().find(|p| !on_path(p.program)) {
        bail!(
            "installed {} but `{}` is still not on PATH",
            p.name,
            p.program
        );
    }
    Ok(())
}

/// The KVM device host-vmm and QEMU open.
const KVM_DEVICE: &str = "/dev/kvm";

/// What KVM_GET_API_VERSION answers on every KVM since Linux 2.6.22.
const KVM_API_VERSION: i32 = 12;

/// Why KVM cannot be used here and what to do about it (one line), or `None` when /dev/kvm
/// opens for reading and writing and answers KVM_GET_API_VERSION with 12.
pub fn kvm_unavailable() -> Option<String> {
    kvm_unavailable_at(KVM_DEVICE)
}

fn kvm_unavailable_at(device: &str) -> Option<String> {
    const LOAD: &str = "load the KVM module (`modprobe kvm_intel` or `modprobe kvm_amd`; in a VM, enable nested virtualization)";
    let Ok(path) = std::ffi::CString::new(device) else {
        return Some(format!("{device:?} is not a device path"));
    };
    let kvm = match kvm_ioctls::Kvm::new_with_path(&path) {
        Ok(kvm) => kvm,
        Err(e) => {
            return Some(match e.errno() {
                libc::ENOENT => format!("{device} not found: {LOAD}"),
                libc::EACCES | libc::EPERM => format!(
                    "cannot open {device} for reading and writing ({e}): add your user to the kvm group (`sudo usermod -aG kvm $USER`, then log in again) or run as root"
                ),
                libc::ENXIO | libc::ENODEV => {
                    format!("{device} exists but no KVM driver answers ({e}): {LOAD}")
                }
                _ => format!("cannot open {device} ({e})"),
            });
        }
    };
    match kvm.get_api_version() {
        KVM_API_VERSION => None,
        v if v < 0 => Some(format!(
            "{device} is not a KVM device (KVM_GET_API_VERSION failed: {}): {LOAD}",
            std::io::Error::last_os_error()
        )),
        v => Some(format!(
            "{device} reports KVM API version {v}, not {KVM_API_VERSION}: this kernel's KVM is not supported"
        )),
    }
}

/// Fails with a clear message when KVM is not usable.
pub fn ensure_kvm() -> Result<()> {
    match kvm_unavailable() {
        None => Ok(()),
        Some(why) => bail!("{why}"),
    }
}

/// Makes sure the guest target's standard library is installed for the pinned toolchain.
pub fn ensure_guest_target() -> Result<()> {
    install_pinned(
        &format!("the Rust standard library for {GUEST_TARGET}"),
        guest_target_installed,
    )
}

/// Unless `installed()`, runs `rustup toolchain install`, which installs what
/// rust-toolchain.toml pins, and fails if `missing` (what `installed` looks for) still is.
///
/// rustup installs what rust-toolchain.toml lists only when auto-install is on; with
/// `RUSTUP_AUTO_INSTALL=0` (as on our CI machines) `rustup toolchain install` does it. Cargo
/// runs us with `RUSTUP_TOOLCHAIN` set, which makes rustup ignore the file's `targets`, so
/// the variable is removed for that one command.
fn install_pinned(missing: &str, installed: fn() -> bool) -> Result<()> {
    if installed() {
        return Ok(());
    }
    if !on_path("rustup") {
        bail!(
            "{missing} is missing and rustup is not installed; install rustup, then run: \
             rustup toolchain install (in {})",
            crate::root().display()
        );
    }
    eprintln!("Installing what rust-toolchain.toml pins: {missing} is missing");
    proc::run(
        Command::new("rustup")
            .args(["toolchain", "install"])
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(crate::root()),
    )?;
    if !installed() {
        bail!("`rustup toolchain install` ran but {missing} is still missing");
    }
    Ok(())
}

fn guest_target_installed() -> bool {
    // `rustc` here is the pinned toolchain's, because we run inside the workspace.
    Command::new("rustc")
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .current_dir(crate::root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            std::fs::read_dir(dir)
                .map(|mut entries| {
                    entries.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
                    })
                })
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Makes sure the pinned toolchain has the `rust-src` component, from which std programs'
/// standard library is built (`stdimage`); installs it like [`ensure_guest_target`].
pub fn ensure_rust_src() -> Result<()> {
    install_pinned("the rust-src component", rust_src_installed)
}

fn rust_src_installed() -> bool {
    Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate::root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| {
            Path::new(String::from_utf8_lossy(&out.stdout).trim())
                .join("lib/rustlib/src/rust/library/Cargo.lock")
                .is_file()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_foreign_kvm_device_is_unusable_and_says_what_to_do() {
        let missing = kvm_unavailable_at("/nonexistent/roam-kvm").unwrap();
        assert!(
            missing.contains("not found") && missing.contains("modprobe"),
            "{missing}"
        );
        // /dev/null opens read-write but answers no KVM ioctl.
        let foreign = kvm_unavailable_at("/dev/null").unwrap();
        assert!(
            foreign.contains("not a KVM device") && foreign.contains("modprobe"),
            "{foreign}"
        );
    }
}
