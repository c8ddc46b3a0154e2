//! Device models and the bus that routes guest port I/O (and, later, MMIO) to them.
//!
//! Devices never import the `kvm` modules: they see offsets into their own range, byte
//! slices, and plain handles (an [`vmm_sys_util::eventfd::EventFd`] for an interrupt line, an
//! [`debug_exit::ExitRequest`] to stop the VM). That keeps every model testable without
//! `/dev/kvm`. Guest-supplied values are validated here: a hostile guest gets all-ones reads
//! and ignored writes, never a host crash.

pub mod bus;
pub mod debug_exit;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
