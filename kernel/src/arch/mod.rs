//! Everything that touches the CPU directly: entry code, descriptor tables, page tables,
//! port I/O, MSRs, the local APIC and IOAPIC, PCI configuration space, the PIT and KVM's
//! paravirtual clock.
//!
//! This is one of the few places `unsafe` may live (ARCHITECTURE.md). Each submodule wraps
//! its instructions in small functions whose safety argument is local, so the rest of the
//! kernel calls safe code.

pub mod apic;
pub mod bootmem;
pub mod cpu;
pub mod cpuid;
mod entry;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod msr;
pub mod paging;
pub mod pci;
pub mod pit;
pub mod port;
pub mod pvclock;
pub mod switch;
pub mod tls;
pub mod uart;
pub use entry::entry_tsc;
