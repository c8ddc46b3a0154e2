//! virtio-net over PCI (virtio 1.x devices, modern or transitional) or virtio-mmio (legacy
//! or modern): probe, interrupt setup, and [`VirtioNet`], the [`NetDevice`] adapter over
//! virtio-drivers' `VirtIONetRaw`. Both buses share everything after the transport
//! ([`RoamTransport`], `hal::virtio`'s queues).
//!
//! virtio-mmio ([`VirtioNet::probe_mmio`]): the transport a `virtio_mmio.device=` entry names
//! (`crate::virtio_mmio`), checked to be virtio-net; it signals on one level-triggered line
//! ([`Interrupt::Line`]) the caller routes and acknowledges.
//!
//! PCI probing, in order: give unassigned memory BARs addresses (machines without firmware),
//! turn on memory decoding and bus mastering, find the virtio structures (virtio 1.1,
//! 4.1.4), set up MSI-X (entry 0 = the receive queue, entry 1 = configuration changes; the
//! transmit queue gets no vector: finished buffers are reclaimed when the next frame goes
//! out, so transmitting costs no interrupt), then let virtio-drivers negotiate features and
//! set up the queues (with the checksum offloads, `CSUM` and `GUEST_CSUM`, when offered: see
//! `hal::virtio`). Without a usable MSI-X capability the device falls back to INTx,
//! which the caller routes (the IOAPIC on PCs) and acknowledges with
//! [`NetDevice::ack_interrupt`].

pub(crate) mod transport;

pub use crate::hal::virtio::{Offloads, QueueError};

use crate::hal::VirtioHal;
use crate::hal::virtio::{NetQueues, QUEUE_SIZE, Raw, RootAccess, RxKick, TxQueue};
use crate::hal::{self, Mmio, RegisterIo};
use crate::net::{Capabilities, Events, MacAddress, NetDevice, RxToken, Stats, TxToken};
use crate::pci::bar::{self, Bar, BarError, Region};
use crate::pci::capability::{self, ID_VENDOR};
use crate::pci::msix::{MsiMessage, Msix, MsixError, MsixTable};
use crate::pci::{self, Bdf, ConfigAccess, Intx};
use crate::virtio_mmio::{self, MmioDevice};
use core::fmt;
use core::sync::atomic::Ordering;
use transport::{Notify, RoamTransport, Vectors, common};
use virtio_drivers::transport::mmio::MmioError;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::transport::{DeviceType, InterruptStatus, Transport};

/// The virtio PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1AF4;
/// virtio-net's modern (virtio 1.x only) PCI device ID.
pub const DEVICE_ID_MODERN: u16 = 0x1041;
/// virtio-net's transitional PCI device ID.
pub const DEVICE_ID_TRANSITIONAL: u16 = 0x1000;

/// Feature bit: the device reports link status in its configuration.
const F_STATUS: u32 = 1 << 16;
/// Feature bit: the device completes checksums the driver leaves partial (transmit).
pub const F_CSUM: u64 = 1 << 0;
/// Feature bit: the driver takes frames with partial or device-checked checksums (receive).
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// Offset of `status` in `virtio_net_config`, and its link-up bit.
const CONFIG_STATUS: usize = 6;
const STATUS_LINK_UP: u16 = 1;
/// Largest Ethernet frame without the merged-buffer or GSO features: 1500 + 14.
const MAX_FRAME_LEN: usize = 1514;

/// `cfg_type` values of the virtio vendor capabilities (virtio 1.1, 4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_DEVICE: u8 = 4;

/// Whether `function` is a virtio-net device this driver can drive.
pub fn matches(function: &pci::Function) -> bool {
    function.vendor_id == VENDOR_ID
        && matches!(
            function.device_id,
            DEVICE_ID_MODERN | DEVICE_ID_TRANSITIONAL
        )
}

/// The interrupts the caller wants: IDT vectors on one local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptRequest {
    /// Destination local APIC.
    pub apic_id: u8,
    /// Vector for "frames arrived".
    pub queue_vector: u8,
    /// Vector for "configuration (link) changed".
    pub config_vector: u8,
}

/// How the device ended up signalling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// MSI-X on the requested vectors; `config_shared` when the device has a single table
    /// entry, so configuration changes arrive on the queue vector too.
    Msix {
        /// Configuration changes use the queue vector.
        config_shared: bool,
    },
    /// Legacy INTx: route it, and call [`NetDevice::ack_interrupt`] when it fires.
    Intx(Intx),
    /// virtio-mmio's interrupt line, this IOAPIC input (global system interrupt): route it
    /// level-triggered, and acknowledge the device's interrupt status when it fires
    /// (`virtio_mmio::reg::INTERRUPT_ACK`, or [`NetDevice::ack_interrupt`]).
    Line(u8),
    /// No interrupt at all: the caller must poll.
    None,
}

/// Why a device could not be brought up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The function is not virtio-net.
    NotVirtioNet(u16, u16),
    /// A BAR could not be decoded or assigned.
    Bar(BarError),
    /// A required virtio structure is missing (its name).
    MissingStructure(&'static str),
    /// A virtio structure does not fit its BAR (its name).
    StructureOutsideBar(&'static str),
    /// virtio-drivers' PCI transport refused the device.
    Transport(VirtioPciError),
    /// Feature negotiation or queue setup failed.
    Driver(virtio_drivers::Error),
    /// The packet buffers could not be set up.
    Queues(QueueError),
    /// virtio-drivers' MMIO transport refused the registers.
    Mmio(MmioError),
    /// The virtio-mmio transport holds another kind of device.
    NotNetwork(DeviceType),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::NotVirtioNet(v, d) => write!(f, "{v:04x}:{d:04x} is not virtio-net"),
            ProbeError::Bar(e) => write!(f, "{e}"),
            ProbeError::MissingStructure(s) => write!(f, "no virtio {s} structure"),
            ProbeError::StructureOutsideBar(s) => write!(f, "virtio {s} structure outside its BAR"),
            ProbeError::Transport(e) => write!(f, "PCI transport: {e}"),
            ProbeError::Driver(e) => write!(f, "virtio-net setup: {e}"),
            ProbeError::Queues(e) => write!(f, "{e}"),
            ProbeError::Mmio(e) => write!(f, "virtio-mmio transport: {e}"),
            ProbeError::NotNetwork(t) => {
                write!(f, "virtio-mmio device is a {t:?}, not a network card")
            }
        }
    }
}

/// One virtio structure: BAR, offset and length from its capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Structure {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// The virtio structures of a device that this driver maps itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Structures {
    /// Common configuration.
    pub common: Option<Structure>,
    /// Notifications, and their offset multiplier.
    pub notify: Option<(Structure, u32)>,
    /// Device-specific configuration.
    pub device: Option<Structure>,
}

impl Structures {
    /// Reads the virtio vendor capabilities of `bdf` (the first of each type counts, as the
    /// spec asks; capabilities shorter than their layout are skipped).
    pub fn find(access: &impl ConfigAccess, bdf: Bdf) -> Structures {
        let mut found = Structures::default();
        for cap in capability::capabilities(access, bdf).filter(|c| c.id == ID_VENDOR) {
            let cap_len = cap.header as u8;
            let cfg_type = (cap.header >> 8) as u8;
            if cap_len < 16 {
                continue;
            }
            let at = |delta: u8| access.read32(bdf, cap.offset.wrapping_add(delta));
            let structure = Structure {
                bar: at(4) as u8,
                offset: at(8),
                length: at(12),
            };
            match cfg_type {
                CAP_COMMON if found.common.is_none() => found.common = Some(structure),
                CAP_NOTIFY if found.notify.is_none() && cap_len >= 20 => {
                    found.notify = Some((structure, at(16)));
                }
                CAP_DEVICE if found.device.is_none() => found.device = Some(structure),
                _ => {}
            }
        }
        found
    }
}

/// The region of `structure` inside its (assigned, memory) BAR.
pub(crate) fn region(
    bars: &[Option<Bar>; 6],
    structure: Structure,
    name: &'static str,
) -> Result<bar::Region, ProbeError> {
    bars.get(usize::from(structure.bar))
        .copied()
        .flatten()
        .and_then(|b| b.region(u64::from(structure.offset), u64::from(structure.length)))
        .ok_or(ProbeError::StructureOutsideBar(name))
}

/// A virtio-net device brought up and ready to carry frames.
pub struct VirtioNet<H: VirtioHal> {
    queues: NetQueues<H>,
    /// Device configuration, when the device reports link status.
    link: Option<Mmio>,
    mac: MacAddress,
    interrupt: Interrupt,
}

impl<H: VirtioHal> VirtioNet<H> {
    /// Brings up the virtio-net function `bdf`, whose BARs are `bars` (sized and assigned
    /// once, by [`bar::read_assigned`]; nothing sizes them again). Interrupts go to `irq`
    /// through MSI-X when the device has it, else through INTx (see
    /// [`VirtioNet::interrupt`]).
    pub fn probe<C: ConfigAccess + Clone>(
        access: &mut C,
        bdf: Bdf,
        bars: &[Option<Bar>; 6],
        irq: InterruptRequest,
    ) -> Result<VirtioNet<H>, ProbeError> {
        let ids = access.read32(bdf, pci::VENDOR_DEVICE);
        let (vendor, device) = (ids as u16, (ids >> 16) as u16);
        if vendor != VENDOR_ID || !matches!(device, DEVICE_ID_MODERN | DEVICE_ID_TRANSITIONAL) {
            return Err(ProbeError::NotVirtioNet(vendor, device));
        }

        let bars = *bars;
        let command = pci::command(access, bdf);
        pci::set_command(
            access,
            bdf,
            (command | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER) & !pci::COMMAND_INTX_DISABLE,
        );

        // The capability walks (this one, then virtio-drivers') read each register once.
        let mut remembered = pci::remembered::Remembered::new(access.clone(), bdf);
        let access = &mut remembered;
        let found = Structures::find(access, bdf);
        let common = found
            .common
            .ok_or(ProbeError::MissingStructure("common configuration"))?;
        let (notify, multiplier) = found.notify.ok_or(ProbeError::MissingStructure("notify"))?;
        let common_region = region(&bars, common, "common configuration")?;
        if common_region.len() < common::LEN {
            return Err(ProbeError::StructureOutsideBar("common configuration"));
        }
        // Two views of the common configuration: one for the transport's vector writes, one
        // to check afterwards that the device took them.
        let mut check = hal::map::<H>(common_region);
        let common_io = hal::map::<H>(common_region);
        let notify_region = region(&bars, notify, "notify")?;
        let notify = Notify {
            io: hal::map::<H>(notify_region),
            multiplier,
        };
        check.write32(common::DEVICE_FEATURE_SELECT, 0);
        let reports_link = check.read32(common::DEVICE_FEATURE) & F_STATUS != 0;
        let link = match found.device {
            Some(s) if reports_link && s.length >= 8 => {
                Some(hal::map::<H>(region(&bars, s, "device configuration")?))
            }
            _ => None,
        };

        let (vectors, mut interrupt, msix) = setup_interrupts::<H, _>(access, bdf, &bars, irq);
        let df = DeviceFunction {
            bus: bdf.bus,
            device: bdf.device,
            function: bdf.function,
        };
        let mut root = PciRoot::new(RootAccess::new(access.clone(), bdf, bars));
        let inner = PciTransport::new::<H, _>(&mut root, df).map_err(ProbeError::Transport)?;
        let mut transport = RoamTransport::new(inner, common_io, notify, vectors);
        transport.also_negotiate(F_CSUM | F_GUEST_CSUM);
        let negotiated = transport.negotiated();
        let held = transport.rx_kicks();
        let raw = Raw::<H>::new(transport).map_err(ProbeError::Driver)?;
        let rx_kick = RxKick {
            io: hal::map::<H>(notify_region),
            offset: receive_notify_offset(&mut check, multiplier, notify_region.len())?,
            wide: false,
            held,
        };

        if let (Some(msix), Interrupt::Msix { .. }) = (msix, interrupt) {
            check.write16(common::QUEUE_SELECT, 0);
            let taken = check.read16(common::QUEUE_MSIX_VECTOR) == vectors.queues[0]
                && check.read16(common::MSIX_CONFIG) == vectors.config;
            if !taken {
                log::warn!("pci {bdf}: the device refused its MSI-X vectors; using INTx");
                msix.disable(access, bdf);
                interrupt = pci::intx(access, bdf).map_or(Interrupt::None, Interrupt::Intx);
            }
        }

        let offloads = Offloads::from_features(negotiated.load(Ordering::Relaxed));
        VirtioNet::start(raw, rx_kick, offloads, link, interrupt)
    }

    /// Brings up the virtio-net device behind the virtio-mmio transport `device` (its
    /// registers mapped by the caller). It signals on `device.irq` ([`Interrupt::Line`]).
    pub fn probe_mmio(device: &MmioDevice) -> Result<VirtioNet<H>, ProbeError> {
        let region = device.region();
        let transport = hal::mmio_transport::<H>(region).map_err(ProbeError::Mmio)?;
        match transport.device_type() {
            DeviceType::Network => {}
            other => return Err(ProbeError::NotNetwork(other)),
        }
        let mut check = hal::map::<H>(region);
        check.write32(virtio_mmio::reg::DEVICE_FEATURES_SEL, 0);
        let reports_link = check.read32(virtio_mmio::reg::DEVICE_FEATURES) & F_STATUS != 0;
        let config_len = region.len().saturating_sub(virtio_mmio::reg::CONFIG);
        // The device configuration: `status` at the same offset as on PCI.
        let link = (reports_link && config_len >= 8).then(|| {
            hal::map::<H>(Region::new(
                region.phys() + virtio_mmio::reg::CONFIG as u64,
                config_len,
            ))
        });
        let mut transport = RoamTransport::mmio(transport);
        transport.also_negotiate(F_CSUM | F_GUEST_CSUM);
        let negotiated = transport.negotiated();
        let held = transport.rx_kicks();
        let raw = Raw::<H>::new(transport).map_err(ProbeError::Driver)?;
        let rx_kick = RxKick {
            io: check,
            offset: virtio_mmio::reg::QUEUE_NOTIFY,
            wide: true,
            held,
        };
        let offloads = Offloads::from_features(negotiated.load(Ordering::Relaxed));
        VirtioNet::start(raw, rx_kick, offloads, link, Interrupt::Line(device.irq))
    }

    /// The queues set up and filled over `raw`, whichever the transport: the end of both
    /// probes.
    fn start(
        raw: Raw<H>,
        rx_kick: RxKick,
        offloads: Offloads,
        link: Option<Mmio>,
        interrupt: Interrupt,
    ) -> Result<VirtioNet<H>, ProbeError> {
        log::debug!(
            "virtio-net: checksum offload tx {}, rx {}",
            offloads.tx,
            offloads.rx
        );
        let mut queues = NetQueues::new(raw, rx_kick, offloads).map_err(ProbeError::Queues)?;
        let mac = MacAddress(queues.raw().mac_address());
        Ok(VirtioNet {
            queues,
            link,
            mac,
            interrupt,
        })
    }

    /// How the device signals (MSI-X, INTx, a line, or not at all).
    pub fn interrupt(&self) -> Interrupt {
        self.interrupt
    }

    /// The checksum offloads agreed with the device.
    pub fn offloads(&self) -> Offloads {
        self.queues.offloads()
    }
}

/// Where the receive queue's notify register is in the notify region (`len` bytes).
fn receive_notify_offset(
    common: &mut Mmio,
    multiplier: u32,
    len: usize,
) -> Result<usize, ProbeError> {
    common.write16(common::QUEUE_SELECT, transport::RECEIVE_QUEUE);
    usize::from(common.read16(common::QUEUE_NOTIFY_OFF))
        .checked_mul(multiplier as usize)
        .filter(|offset| offset.checked_add(2).is_some_and(|end| end <= len))
        .ok_or(ProbeError::StructureOutsideBar("notify"))
}

/// Programs MSI-X when the device has a usable capability; else reports INTx.
pub(crate) fn setup_interrupts<H: VirtioHal, C: ConfigAccess>(
    access: &mut C,
    bdf: Bdf,
    bars: &[Option<Bar>; 6],
    irq: InterruptRequest,
) -> (Vectors, Interrupt, Option<Msix>) {
    let intx = |access: &C| pci::intx(access, bdf).map_or(Interrupt::None, Interrupt::Intx);
    let msix = match Msix::find(access, bdf) {
        Ok(Some(msix)) => msix,
        Ok(None) => return (Vectors::NONE, intx(access), None),
        Err(e) => {
            log::warn!("pci {bdf}: {e}; using INTx");
            return (Vectors::NONE, intx(access), None);
        }
    };
    let table = bars
        .get(usize::from(msix.table.bar))
        .copied()
        .flatten()
        .and_then(|b| b.region(u64::from(msix.table.offset), msix.table_bytes()));
    let Some(table) = table else {
        log::warn!("pci {bdf}: MSI-X table outside its BAR; using INTx");
        return (Vectors::NONE, intx(access), None);
    };
    let mut table = MsixTable::new(hal::map::<H>(table), msix.table_size);
    let config_shared = msix.table_size < 2;
    let programmed: Result<(), MsixError> = msix.enable(access, bdf, || {
        table.program(0, MsiMessage::x86(irq.apic_id, irq.queue_vector))?;
        if !config_shared {
            table.program(1, MsiMessage::x86(irq.apic_id, irq.config_vector))?;
        }
        Ok(())
    });
    if let Err(e) = programmed {
        log::warn!("pci {bdf}: {e}; using INTx");
        msix.disable(access, bdf);
        return (Vectors::NONE, intx(access), None);
    }
    let vectors = Vectors {
        config: if config_shared { 0 } else { 1 },
        queues: [0, transport::NO_VECTOR],
    };
    (vectors, Interrupt::Msix { config_shared }, Some(msix))
}

/// A received virtio-net frame, and whether the device vouched for its TCP checksum.
pub struct VirtioRx<'a>(&'a [u8], bool);

impl RxToken for VirtioRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }

    fn checksum_valid(&self) -> bool {
        self.1
    }
}

/// The right to send one virtio-net frame.
pub struct VirtioTx<'a, H: VirtioHal>(TxQueue<'a, H>);

impl<H: VirtioHal> TxToken for VirtioTx<'_, H> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.send(len, f)
    }

    fn checksum_offload(&self) -> bool {
        self.0.checksum_offload()
    }
}

impl<H: VirtioHal> NetDevice for VirtioNet<H> {
    type RxToken<'a>
        = VirtioRx<'a>
    where
        H: 'a;
    type TxToken<'a>
        = VirtioTx<'a, H>
    where
        H: 'a;

    fn mac_address(&self) -> MacAddress {
        self.mac
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_frame_len: MAX_FRAME_LEN,
            max_burst: Some(QUEUE_SIZE),
            tx_checksum: self.queues.offloads().tx,
        }
    }

    fn link_up(&self) -> bool {
        self.link
            .as_ref()
            .is_none_or(|c| c.read16(CONFIG_STATUS) & STATUS_LINK_UP != 0)
    }

    fn receive(&mut self) -> Option<(VirtioRx<'_>, VirtioTx<'_, H>)> {
        let (frame, vouched, tx) = self.queues.receive()?;
        Some((VirtioRx(frame, vouched), VirtioTx(tx)))
    }

    fn transmit(&mut self) -> Option<VirtioTx<'_, H>> {
        self.queues.transmit().map(VirtioTx)
    }

    fn ack_interrupt(&mut self) -> Events {
        if !matches!(self.interrupt, Interrupt::Intx(_) | Interrupt::Line(_)) {
            return Events::default();
        }
        let status = self.queues.raw().ack_interrupt();
        Events {
            queue: status.contains(InterruptStatus::QUEUE_INTERRUPT),
            config: status.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT),
        }
    }

    fn stats(&self) -> Stats {
        self.queues.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeConfig, FakeFunction};
    use crate::pci::{CAPABILITY_POINTER, STATUS_CAPABILITIES};

    const NIC: Bdf = Bdf {
        bus: 0,
        device: 3,
        function: 0,
    };

    /// A shared, clonable [`FakeConfig`] that counts writes to BAR registers.
    #[derive(Clone)]
    struct Counted(
        std::rc::Rc<core::cell::RefCell<FakeConfig>>,
        std::rc::Rc<core::cell::Cell<usize>>,
    );

    impl ConfigAccess for Counted {
        fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
            self.0.borrow().read32(bdf, offset)
        }

        fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
            if (0x10..0x28).contains(&(offset & !3)) {
                self.1.set(self.1.get() + 1);
            }
            self.0.borrow_mut().write32(bdf, offset, value)
        }
    }

    /// virtio-drivers' `PciTransport` sizes BARs again; through `RootAccess` it gets the
    /// sizes read once and nothing it writes reaches a BAR register.
    #[test]
    fn virtio_drivers_sizing_is_answered_from_the_bars_read_once() {
        let mut config = qemu_nic();
        let bars = bar::read_all(&mut config, NIC);
        let counted = Counted(Default::default(), Default::default());
        *counted.0.borrow_mut() = config;
        let mut root = PciRoot::new(RootAccess::new(counted.clone(), NIC, bars));
        let df = DeviceFunction {
            bus: 0,
            device: 3,
            function: 0,
        };
        for (index, expected) in [(1, (0xFEBD_1000, 0x1000)), (4, (0xFE00_0000, 0x4000))] {
            let info = root.bar_info(df, index).unwrap().unwrap();
            assert_eq!(info.memory_address_size(), Some(expected), "BAR {index}");
        }
        assert_eq!(root.bar_info(df, 2).unwrap(), None);
        assert_eq!(counted.1.get(), 0, "BAR writes reached the device");
        assert_eq!(
            bar::read_all(&mut *counted.0.borrow_mut(), NIC),
            bars,
            "the BARs are as they were"
        );
    }

    /// QEMU's virtio-net-pci capability chain (modern, `disable-legacy=on`).
    fn qemu_nic() -> FakeConfig {
        let mut f = FakeFunction::new(VENDOR_ID, DEVICE_ID_MODERN, 0x02, 0x00);
        f.set_status(STATUS_CAPABILITIES);
        f.set_byte(CAPABILITY_POINTER, 0x98);
        f.add_capability(0x98, capability::ID_MSIX, 0x84, &[0x02, 0x00]);
        f.set_dword(0x98 + 4, 0x0000_0001);
        f.set_dword(0x98 + 8, 0x0000_0801);
        let vendor = |cap_len: u8, cfg_type: u8, bar: u8, offset: u32, length: u32| {
            let mut body = vec![cap_len, cfg_type, bar, 0, 0, 0];
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&length.to_le_bytes());
            body
        };
        f.add_capability(0x84, ID_VENDOR, 0x70, &vendor(0x14, 5, 0, 0, 0));
        f.add_capability(
            0x70,
            ID_VENDOR,
            0x60,
            &vendor(0x14, CAP_NOTIFY, 4, 0x3000, 0x1000),
        );
        f.set_dword(0x70 + 16, 4);
        f.add_capability(
            0x60,
            ID_VENDOR,
            0x50,
            &vendor(0x10, CAP_DEVICE, 4, 0x2000, 0x1000),
        );
        f.add_capability(0x50, ID_VENDOR, 0x40, &vendor(0x10, 3, 4, 0x1000, 0x1000));
        f.add_capability(
            0x40,
            ID_VENDOR,
            0x00,
            &vendor(0x10, CAP_COMMON, 4, 0, 0x1000),
        );
        f.set_bar(1, 0x1000, 0, 0xFEBD_1000);
        f.set_bar(4, 0x4000, 0b1100, 0xFE00_0000);
        let mut c = FakeConfig::default();
        c.add(NIC, f);
        c
    }

    #[test]
    fn finds_the_virtio_structures() {
        let s = Structures::find(&qemu_nic(), NIC);
        assert_eq!(
            s.common,
            Some(Structure {
                bar: 4,
                offset: 0,
                length: 0x1000
            })
        );
        assert_eq!(
            s.notify,
            Some((
                Structure {
                    bar: 4,
                    offset: 0x3000,
                    length: 0x1000
                },
                4
            ))
        );
        assert_eq!(s.device.map(|d| d.offset), Some(0x2000));
    }

    #[test]
    fn short_capabilities_are_skipped() {
        let mut c = qemu_nic();
        // A notify capability of 16 bytes has no multiplier: not usable.
        c.function(NIC).set_byte(0x70 + 2, 0x10);
        assert_eq!(Structures::find(&c, NIC).notify, None);
        c.function(NIC).set_byte(0x40 + 2, 0x0C);
        assert_eq!(Structures::find(&c, NIC).common, None);
    }

    #[test]
    fn structures_must_fit_their_bars() {
        let mut c = qemu_nic();
        let bars = bar::read_all(&mut c, NIC);
        let s = Structures::find(&c, NIC);
        let common = region(&bars, s.common.unwrap(), "common").unwrap();
        assert_eq!((common.phys(), common.len()), (0xFE00_0000, 0x1000));
        let outside = Structure {
            bar: 4,
            offset: 0x3800,
            length: 0x1000,
        };
        assert_eq!(
            region(&bars, outside, "notify"),
            Err(ProbeError::StructureOutsideBar("notify"))
        );
        let missing_bar = Structure {
            bar: 2,
            offset: 0,
            length: 4,
        };
        assert!(region(&bars, missing_bar, "x").is_err());
        let bad_bar = Structure {
            bar: 9,
            offset: 0,
            length: 4,
        };
        assert!(region(&bars, bad_bar, "x").is_err());
    }

    #[test]
    fn msix_table_location_matches_qemu() {
        let c = qemu_nic();
        let msix = Msix::find(&c, NIC).unwrap().unwrap();
        assert_eq!(
            (msix.table.bar, msix.table.offset, msix.table_size),
            (1, 0, 3)
        );
    }

    #[test]
    fn matches_virtio_net_ids_only() {
        let f = |vendor_id, device_id| pci::Function {
            bdf: NIC,
            vendor_id,
            device_id,
            class: 2,
            subclass: 0,
            header_type: 0,
        };
        assert!(matches(&f(VENDOR_ID, DEVICE_ID_MODERN)));
        assert!(matches(&f(VENDOR_ID, DEVICE_ID_TRANSITIONAL)));
        assert!(!matches(&f(VENDOR_ID, 0x1042)));
        assert!(!matches(&f(0x8086, DEVICE_ID_MODERN)));
    }
}
