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
//! 1.x PCI transport and the network device on it. [`state`] is what migration saves of
//! them (each model's `save_state`/`restore_state`).

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
