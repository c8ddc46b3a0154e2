//! host-vmm: the KVM VMM that boots a Roam unikernel.
//!
//! `host-vmm run <image.elf>` is [`vmm::run`]: check the ELF ([`loader`]) against the guest
//! RAM size, command line and network card ([`config`]), back guest RAM with a memfd
//! ([`memory`]), create the VM and its vCPU through KVM ([`kvm`]), write the boot state of
//! ARCHITECTURE.md's Boot ABI ([`arch::x86_64`]), then run the vCPU, serving port I/O and
//! MMIO from [`devices::Bus`]es: COM1 (to stdout), the debug-exit port (the guest's exit
//! status) and the PCI host bridge ([`devices::pci`]). With `--net`, a virtio-net card
//! ([`devices::virtio`]) sits on the PCI bus over a TAP ([`tap`]); its queues are served by
//! an I/O thread ([`io_thread`]), kicked through ioeventfds and interrupting through irqfds,
//! so packets never cost the vCPU thread anything.
//!
//! Layering: `devices`, `io_thread`, `arch`, `config` and `loader` never call KVM and are
//! tested without it (devices reach the VM only through [`devices::VmOps`]); `unsafe` lives
//! only in `kvm` (ioctls), `memory` (memfd) and `tap` (two interface ioctls).

#![deny(unsafe_code)]

pub mod api;
pub mod arch;
pub mod config;
pub mod control;
pub mod devices;
pub mod events;
pub mod io_thread;
#[allow(unsafe_code)]
pub mod kvm;
pub mod loader;
#[allow(unsafe_code)]
pub mod memory;
pub mod migration;
#[allow(unsafe_code)]
pub mod tap;
pub mod vmm;

#[cfg(test)]
mod test_utils;

pub use config::{Cmdline, MemSize, RunConfig};
pub use vmm::{EXIT_NO_GUEST_STATUS, EXIT_VMM_FAILED, Error, Outcome, run};
