//! Device models and the buses that route guest port I/O and MMIO to them.
//!
//! Devices never import the `kvm` modules: they see offsets into their own range, byte
//! slices, and plain handles (an [`vmm_sys_util::eventfd::EventFd`] for an interrupt line, an
//! [`debug_exit::ExitRequest`] to stop the VM, a [`VmOps`] for MSI routes, INTx levels and
//! ioeventfds, guest memory as vm-memory's `GuestMemoryMmap`). That keeps every model
//! testable without `/dev/kvm`. Guest-supplied values are validated here: a hostile guest
//! gets all-ones reads, ignored writes or a failed device, never a host crash.
//!
//! [`pci`] is the PCI bus (host bridge, configuration space, MSI-X); [`virtio`] the virtio
//! 1.x PCI transport and the network and console devices on it; [`ixgbevf`] the emulated
//! 82599 VF; [`serial`] COM1 and [`debug_exit`] the exit port. What migration saves of a
//! model is its [`Persist`] state.
//!
//! Adding a device: a folder of its own here, laid out as the others: `mod.rs` the model,
//! `state.rs` its saved state as plain data (the serde structs, re-exported from `mod.rs`),
//! `tests.rs` its unit tests (`#[cfg(test)] mod tests;`), and topic files as it grows. The
//! model implements [`Persist`], and [`BusDevice`] if it sits on the port or MMIO bus or
//! [`pci::PciDevice`] if it is a PCI function (a virtio device implements
//! [`virtio::VirtioDevice`] and goes behind [`virtio::pci::VirtioPci`]). Then one `add_*`
//! method in [`crate::device_manager`], called from
//! [`DeviceManager::build`](crate::device_manager::DeviceManager::build), attaches it (a PCI
//! slot, or a range on a bus), gives it its interrupts (MSI-X vectors on irqfds, an INTx
//! line), hands its handler to the I/O thread and registers it for migration under an id;
//! saving and restoring need nothing more.

pub mod bus;
pub mod debug_exit;
pub mod ixgbevf;
pub mod pci;
pub mod persist;
pub mod serial;
pub mod virtio;
pub mod vm_ops;

pub use bus::{Bus, BusDevice, BusError};
pub use persist::{DeviceStateError, Persist};
pub use vm_ops::{MsiMessage, VmOps};
