//! [`RoamTransport`]: one virtio transport for both buses, virtio-drivers' `PciTransport`
//! (with the things it leaves out, below) or its `MmioTransport` (virtio-mmio, legacy or
//! modern, as QEMU microvm offers it) unchanged. virtio-net and the console drive either
//! through the same queue code; only a `match` per call tells them apart.
//!
//! What PCI gets on top of virtio-drivers:
//! - MSI-X vectors: it never writes `msix_config` or `queue_msix_vector`, so a device with
//!   MSI-X enabled would signal nothing. They are written here at the points the virtio spec
//!   (4.1.5.1.2) asks: the configuration vector after the reset that starts initialisation,
//!   each queue's vector before the queue is enabled.
//! - A cheaper notify: `PciTransport::notify` selects the queue and reads its notify offset
//!   on every call (three exits); here the address is computed once per queue, so a notify
//!   is one write. (virtio-mmio's notify is one write already.)
//!
//! Both buses:
//! - Batched receive kicks ([`HeldKicks`]): virtio-drivers decides per buffer whether to
//!   notify, and with event indices its test (`avail_idx > avail_event`) says yes for every
//!   buffer once the device has passed `avail_event`, which host-vmm's device moves only when
//!   it waits for buffers: every receive buffer posted again cost a kick (an exit). While the
//!   queue owner holds the receive queue's kicks, they are recorded, and it sends one at the
//!   end of the batch if any was asked for: never fewer kicks than the device wanted (the
//!   batch's last index is published before that one kick), at most one per batch.
//!
//! - Features virtio-drivers does not know ([`RoamTransport::also_negotiate`]): its
//!   `VirtIONetRaw` negotiates a fixed set, without checksum offloads. Initialisation here
//!   is the same sequence (virtio 1.1, 3.1.1) with those features added when the device
//!   offers them; what was agreed is readable afterwards ([`RoamTransport::negotiated`]).
//!
//! Everything else is delegated unchanged.

use crate::hal::{Mmio, RegisterIo};
use alloc::sync::Arc;
use core::fmt::Debug;
use core::ops::BitAnd;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PAGE_SIZE, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `virtio_pci_common_cfg` offsets (virtio 1.1, 4.1.4.3).
pub mod common {
    /// Selects which half of the device features `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    /// The selected 32 bits of device features.
    pub const DEVICE_FEATURE: usize = 0x04;
    /// MSI-X vector for configuration changes.
    pub const MSIX_CONFIG: usize = 0x10;
    /// Selects the queue the `QUEUE_*` registers describe.
    pub const QUEUE_SELECT: usize = 0x16;
    /// MSI-X vector of the selected queue.
    pub const QUEUE_MSIX_VECTOR: usize = 0x1A;
    /// Notify offset of the selected queue (in units of the notify multiplier).
    pub const QUEUE_NOTIFY_OFF: usize = 0x1E;
    /// Length of the structure.
    pub const LEN: usize = 0x38;
}

/// "No MSI-X vector" for `msix_config` and `queue_msix_vector`.
pub const NO_VECTOR: u16 = 0xFFFF;

/// MSI-X table entries for each interrupt source, or `NO_VECTOR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vectors {
    /// Configuration changes (link status).
    pub config: u16,
    /// Each queue, by index (receiveq1, transmitq1).
    pub queues: [u16; 2],
}

impl Vectors {
    /// No MSI-X: everything through the ISR and INTx.
    pub const NONE: Vectors = Vectors {
        config: NO_VECTOR,
        queues: [NO_VECTOR; 2],
    };
}

/// The notify region: where queue notifications are written.
#[derive(Debug)]
pub struct Notify {
    /// The region from the notify capability.
    pub io: Mmio,
    /// `notify_off_multiplier` from the capability.
    pub multiplier: u32,
}

/// The receive queue's index (receiveq1 for virtio-net, receiveq0 for the console).
pub const RECEIVE_QUEUE: u16 = 0;

/// Kicks of the receive queue held back while its owner posts a batch of buffers: shared by
/// the transport, which records them, and the owner, which sends one when the batch is in.
#[derive(Debug, Default)]
pub struct HeldKicks {
    holding: AtomicBool,
    wanted: AtomicBool,
}

impl HeldKicks {
    /// From now on kicks are recorded, not sent.
    pub fn hold(&self) {
        self.wanted.store(false, Ordering::Relaxed);
        self.holding.store(true, Ordering::Relaxed);
    }

    /// Stops holding; whether a kick was asked for meanwhile (the caller sends one).
    pub fn release(&self) -> bool {
        self.holding.store(false, Ordering::Relaxed);
        self.wanted.swap(false, Ordering::Relaxed)
    }

    /// Records a kick if they are held; whether it was.
    fn record(&self) -> bool {
        let held = self.holding.load(Ordering::Relaxed);
        if held {
            self.wanted.store(true, Ordering::Relaxed);
        }
        held
    }
}

/// virtio-drivers' PCI transport with MSI-X vector setup and one-write notifies, or its
/// virtio-mmio transport; receive kicks held in batches on both.
pub struct RoamTransport {
    bus: Bus,
    /// The receive queue's kicks, when its owner batches them.
    rx_kicks: Arc<HeldKicks>,
    /// Features to accept beyond the driver's own, when offered.
    extra_features: u64,
    /// The features agreed at initialisation.
    negotiated: Arc<AtomicU64>,
}

/// The transport proper.
enum Bus {
    Pci(Pci),
    Mmio(MmioTransport<'static>),
}

/// PCI: virtio-drivers' transport and the registers it does not write.
struct Pci {
    inner: PciTransport,
    common: Mmio,
    notify: Notify,
    /// Offset of each queue's notify register in `notify.io`, once known.
    notify_offset: [Option<usize>; 2],
    vectors: Vectors,
}

/// Calls `$method` on whichever transport `$bus` holds.
macro_rules! delegate {
    ($bus:expr, $t:ident => $call:expr) => {
        match $bus {
            Bus::Pci(Pci { inner: $t, .. }) => $call,
            Bus::Mmio($t) => $call,
        }
    };
}

impl RoamTransport {
    /// Wraps `inner`, whose common configuration and notify regions are `common` and
    /// `notify` (the same registers, for the writes `inner` does not do).
    pub fn new(
        inner: PciTransport,
        common: Mmio,
        notify: Notify,
        vectors: Vectors,
    ) -> RoamTransport {
        RoamTransport {
            bus: Bus::Pci(Pci {
                inner,
                common,
                notify,
                notify_offset: [None; 2],
                vectors,
            }),
            rx_kicks: Arc::new(HeldKicks::default()),
            extra_features: 0,
            negotiated: Arc::default(),
        }
    }

    /// Wraps a virtio-mmio transport (it signals on one interrupt line; no vectors).
    pub fn mmio(inner: MmioTransport<'static>) -> RoamTransport {
        RoamTransport {
            bus: Bus::Mmio(inner),
            rx_kicks: Arc::new(HeldKicks::default()),
            extra_features: 0,
            negotiated: Arc::default(),
        }
    }

    /// Accepts `features` too at initialisation, where the device offers them (bits the
    /// device type defines and the queue owner handles itself, e.g. virtio-net's checksum
    /// offloads).
    pub fn also_negotiate(&mut self, features: u64) {
        self.extra_features |= features;
    }

    /// The features agreed at initialisation (0 before), readable after the driver took
    /// the transport.
    pub fn negotiated(&self) -> Arc<AtomicU64> {
        self.negotiated.clone()
    }

    /// The receive queue's kick switch, for the queue's owner to batch kicks.
    pub fn rx_kicks(&self) -> Arc<HeldKicks> {
        self.rx_kicks.clone()
    }
}

impl Pci {
    fn write_vector(&mut self, register: usize, vector: u16) {
        if vector == NO_VECTOR && self.vectors == Vectors::NONE {
            return;
        }
        // The probe reads the vectors back once the device is up and falls back to INTx if
        // they did not stick.
        self.common.write16(register, vector);
    }

    fn notify(&mut self, queue: u16) {
        match self
            .notify_offset
            .get(usize::from(queue))
            .copied()
            .flatten()
        {
            Some(offset) => self.notify.io.write16(offset, queue),
            None => self.inner.notify(queue),
        }
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        // The vector goes in before `inner` enables the queue.
        self.common.write16(common::QUEUE_SELECT, queue);
        let vector = self
            .vectors
            .queues
            .get(usize::from(queue))
            .copied()
            .unwrap_or(NO_VECTOR);
        self.write_vector(common::QUEUE_MSIX_VECTOR, vector);
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
        // `inner` left the queue selected.
        let offset = usize::from(self.common.read16(common::QUEUE_NOTIFY_OFF))
            .checked_mul(self.notify.multiplier as usize);
        if let (Some(offset), Some(slot)) = (offset, self.notify_offset.get_mut(usize::from(queue)))
            && offset
                .checked_add(2)
                .is_some_and(|end| end <= self.notify.io.len())
        {
            *slot = Some(offset);
        }
    }
}

impl Transport for RoamTransport {
    fn device_type(&self) -> DeviceType {
        delegate!(&self.bus, t => t.device_type())
    }

    fn read_device_features(&mut self) -> u64 {
        delegate!(&mut self.bus, t => t.read_device_features())
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        delegate!(&mut self.bus, t => t.write_driver_features(driver_features))
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        delegate!(&mut self.bus, t => t.max_queue_size(queue))
    }

    fn notify(&mut self, queue: u16) {
        if queue == RECEIVE_QUEUE && self.rx_kicks.record() {
            return;
        }
        match &mut self.bus {
            Bus::Pci(pci) => pci.notify(queue),
            Bus::Mmio(t) => t.notify(queue),
        }
    }

    fn get_status(&self) -> DeviceStatus {
        delegate!(&self.bus, t => t.get_status())
    }

    fn set_status(&mut self, status: DeviceStatus) {
        delegate!(&mut self.bus, t => t.set_status(status))
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        delegate!(&mut self.bus, t => t.set_guest_page_size(guest_page_size))
    }

    fn requires_legacy_layout(&self) -> bool {
        delegate!(&self.bus, t => t.requires_legacy_layout())
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        match &mut self.bus {
            Bus::Pci(pci) => pci.queue_set(queue, size, descriptors, driver_area, device_area),
            Bus::Mmio(t) => t.queue_set(queue, size, descriptors, driver_area, device_area),
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        delegate!(&mut self.bus, t => t.queue_unset(queue))
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        delegate!(&mut self.bus, t => t.queue_used(queue))
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        delegate!(&mut self.bus, t => t.ack_interrupt())
    }

    fn begin_init<F: bitflags::Flags<Bits = u64> + BitAnd<Output = F> + Debug>(
        &mut self,
        supported_features: F,
    ) -> F {
        // virtio 1.1, 3.1.1, as virtio-drivers' default does, with `extra_features` added.
        self.set_status(DeviceStatus::empty());
        self.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let negotiated =
            self.read_device_features() & (supported_features.bits() | self.extra_features);
        self.write_driver_features(negotiated);
        self.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        self.set_guest_page_size(PAGE_SIZE as u32);
        if let Bus::Pci(pci) = &mut self.bus {
            // After the reset above, which clears every vector.
            let config = pci.vectors.config;
            pci.write_vector(common::MSIX_CONFIG, config);
        }
        self.negotiated.store(negotiated, Ordering::Relaxed);
        F::from_bits_retain(negotiated)
    }

    fn read_config_generation(&self) -> u32 {
        delegate!(&self.bus, t => t.read_config_generation())
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        delegate!(&self.bus, t => t.read_config_space(offset))
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), Error> {
        delegate!(&mut self.bus, t => t.write_config_space(offset, value))
    }
}
