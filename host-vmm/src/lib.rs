//! host-vmm: the KVM VMM that boots a Roam unikernel.
//!
//! `host-vmm run <image.elf>` is [`vmm::run`]: check the ELF ([`loader`]) against the guest
//! RAM size and command line ([`config`]), back guest RAM with a memfd ([`memory`]), create
//! the VM and its vCPU through KVM ([`kvm`]), write the boot state of ARCHITECTURE.md's Boot
//! ABI ([`arch::x86_64`]), then run the vCPU, serving port I/O from a [`devices::Bus`] with
//! COM1 (to stdout) and the debug-exit port (the guest's exit status).
//!
//! Layering: `devices`, `arch`, `config` and `loader` never call KVM and are tested without
//! it; `unsafe` lives only in `kvm` (ioctls) and `memory` (memfd).

#![deny(unsafe_code)]

pub mod arch;
pub mod config;
pub mod devices;
#[allow(unsafe_code)]
pub mod kvm;
pub mod loader;
#[allow(unsafe_code)]
pub mod memory;
pub mod vmm;

#[cfg(test)]
mod test_utils;

pub use config::{Cmdline, MemSize, RunConfig};
pub use vmm::{EXIT_NO_GUEST_STATUS, EXIT_VMM_FAILED, Error, Outcome, run};
