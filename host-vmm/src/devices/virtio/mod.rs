//! Virtio 1.x devices: the [`VirtioDevice`] trait a device model implements, the modern PCI
//! transport that puts one on the PCI bus ([`pci`]), checked virtqueue access ([`queue`]),
//! the network device ([`net`]) and the console that carries the guest-agent channel
//! ([`console`]).
//!
//! Split of duties: the transport owns everything the specification puts in the common
//! configuration (feature negotiation, device status, queue registers, MSI-X vectors, the ISR)
//! and turns "queue N has used buffers" into an interrupt; a device owns its configuration
//! space and its queues once the driver sets DRIVER_OK. Whatever the guest put in memory is
//! checked on the way in: a violation is a [`GuestError`], after which the transport sets
//! DEVICE_NEEDS_RESET and the device stops until the driver resets it.
//!
//! Migration: the transport saves and restores what it owns
//! ([`pci::VirtioPciState`]: common configuration, queue registers, ring positions, MSI-X);
//! each device adds its own part ([`VirtioDeviceState`]) through
//! [`VirtioDevice::save_device_state`] and the check/apply pair.

pub mod console;
pub mod net;
pub mod pci;
pub mod queue;
#[cfg(test)]
pub mod test_driver;

use crate::devices::DeviceStateError;
use crate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;
use virtio_queue::{Queue, QueueState};

/// Feature bit: the device complies with virtio 1.x (no legacy interface here).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready; the device may use its queues.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error it cannot recover from without a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// "No MSI-X vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xFFFF;

/// A set of queue indexes (bit `n` = queue `n`), e.g. the queues that need an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSet(pub u32);

impl QueueSet {
    /// Adds queue `n` (queues past 31 are not representable and are ignored).
    pub fn insert(&mut self, n: usize) {
        if n < 32 {
            self.0 |= 1 << n;
        }
    }

    /// Whether queue `n` is in the set.
    pub fn contains(&self, n: usize) -> bool {
        n < 32 && self.0 & (1 << n) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// What the guest did wrong. Each is reported once, as one warning, and fails the device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// DRIVER_OK was set before FEATURES_OK.
    #[error("DRIVER_OK set before FEATURES_OK")]
    DriverOkTooEarly,
    /// A queue the device needs was not enabled at DRIVER_OK.
    #[error("queue {0} is not enabled at DRIVER_OK")]
    QueueNotEnabled(usize),
    /// The queue size is zero, not a power of two, or above the maximum.
    #[error("queue {queue}: size {size} is not a power of two between 1 and {max}")]
    QueueSize {
        /// Queue index.
        queue: usize,
        /// Size the driver chose.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address breaks the alignment the specification requires.
    #[error("queue {queue}: {area} at {addr:#x} is misaligned")]
    RingAlignment {
        /// Queue index.
        queue: usize,
        /// "descriptor table", "driver area" or "device area".
        area: &'static str,
        /// The address.
        addr: u64,
    },
    /// A ring does not lie inside guest RAM.
    #[error("queue {queue}: {area} at {addr:#x}+{len:#x} is outside guest RAM")]
    RingOutsideRam {
        /// Queue index.
        queue: usize,
        /// "descriptor table", "driver area" or "device area".
        area: &'static str,
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The available index moved further than the queue size since the last look.
    #[error("queue {queue}: available index {avail} is more than the queue size ahead of {next}")]
    AvailIndex {
        /// Queue index.
        queue: usize,
        /// The driver's index.
        avail: u16,
        /// The device's next index.
        next: u16,
    },
    /// A descriptor index (head or `next`) is not below the queue size.
    #[error("queue {queue}: descriptor index {index} is out of range (queue size {size})")]
    DescriptorIndex {
        /// Queue index.
        queue: usize,
        /// The index.
        index: u16,
        /// Queue size.
        size: u16,
    },
    /// A chain has more descriptors than the queue (a loop).
    #[error("queue {queue}: descriptor chain from {head} is longer than the queue (a loop?)")]
    ChainLoop {
        /// Queue index.
        queue: usize,
        /// Head of the chain.
        head: u16,
    },
    /// A descriptor has flags not allowed in this queue.
    #[error("queue {queue}: descriptor {index} has flags {flags:#x}, not allowed here")]
    DescriptorFlags {
        /// Queue index.
        queue: usize,
        /// Descriptor index.
        index: u16,
        /// Its flags.
        flags: u16,
    },
    /// A descriptor's buffer is not inside guest RAM.
    #[error("queue {queue}: descriptor {index} buffer {addr:#x}+{len:#x} is outside guest RAM")]
    BufferOutsideRam {
        /// Queue index.
        queue: usize,
        /// Descriptor index.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A chain's total length is below the minimum or above the maximum for this queue.
    #[error("queue {queue}: chain from {head} holds {len} bytes; {min}..={max} expected")]
    ChainLength {
        /// Queue index.
        queue: usize,
        /// Head of the chain.
        head: u16,
        /// Total length.
        len: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Guest memory could not be accessed where the rings said (validated before, so this
    /// means a ring moved under the device).
    #[error("queue {queue}: guest memory access failed: {what}")]
    Memory {
        /// Queue index.
        queue: usize,
        /// What failed.
        what: String,
    },
}

/// A virtio device's own part of its migration state (the transport saves the rest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// virtio-net.
    Net(net::NetState),
    /// virtio-console.
    Console(console::ConsoleState),
}

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// The device's own migration state (configuration, bytes or a frame it holds between
    /// batches).
    fn save_device_state(&self) -> VirtioDeviceState;
    /// Checks that `state` can be applied to this device (kind, MAC, bounds); changes
    /// nothing.
    fn check_device_state(&self, state: &VirtioDeviceState) -> Result<(), DeviceStateError>;
    /// Applies a state [`VirtioDevice::check_device_state`] accepted, after the transport
    /// activated the restored queues (if the driver was running).
    fn apply_device_state(&mut self, state: VirtioDeviceState);
    /// Ring positions of the queues in use, in queue order (empty while not active).
    fn queue_states(&self) -> Vec<QueueState>;
    /// Name in logs ("virtio-net").
    fn name(&self) -> &'static str;
    /// Virtio device ID (1 = network).
    fn device_type(&self) -> u16;
    /// The most each queue may hold; the number of queues is this slice's length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn features(&self) -> u64;
    /// Reads device-specific configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start using `queues` (`None` where the driver left a queue
    /// disabled; each `Some` was checked against guest RAM) with the negotiated `features`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Option<Queue>>,
    ) -> Result<(), GuestError>;
    /// Stops using the queues and forgets them (device reset, or after a failure).
    fn reset(&mut self);
    /// The driver notified queue `queue`. Returns the queues that need an interrupt.
    fn queue_notified(&mut self, queue: usize) -> Result<QueueSet, GuestError>;
    /// The device's own file descriptors the I/O thread should watch (edge-triggered), e.g.
    /// a network backend's. Index `n` comes back in [`VirtioDevice::device_event`].
    fn event_fds(&self) -> Vec<RawFd>;
    /// Device fd `index` is ready. Called whether or not the device is active (a network
    /// device drops frames that arrive while it is not).
    fn device_event(&mut self, index: usize) -> Result<QueueSet, GuestError>;
}
