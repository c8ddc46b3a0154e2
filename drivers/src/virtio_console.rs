//! virtio-console over PCI (virtio 1.x, one port): the guest's end of host-vmm's control
//! channel, on virtio-drivers' transport and `VirtQueue`s.
//!
//! Probing is virtio-net's ([`crate::virtio_net`]): unassigned memory BARs get addresses,
//! memory decoding and bus mastering on, the virtio structures found and mapped, MSI-X set
//! up with entry 0 for receiveq (bytes from the host) and entry 1 for configuration changes
//! (the transmit queue has no vector), INTx when MSI-X is not usable; the same transport
//! (`virtio_net::transport`) writes the vectors virtio-drivers leaves out.
//!
//! The queues are driven here rather than through virtio-drivers' `VirtIOConsole`, whose
//! receive hands out one byte per call (several queue checks each, ~0.4 µs per instruction
//! where guest code is emulated) and whose send spins on the used ring until host-vmm's I/O
//! thread has taken the bytes (0.2–0.9 ms measured, the network not served meanwhile).
//! [`Console::recv`] copies what one receive buffer holds in one go and never waits.
//! [`Console::send`] copies the bytes into one of [`TX_SLOTS`] transmit buffers, posts it
//! and returns; slots come back as the device uses them. Only when all are still in flight
//! does it wait for one, bounded. A device that has given up (DEVICE_NEEDS_RESET) would
//! never take them: `send` checks the status first and refuses.

use crate::hal::VirtioHal;
use crate::hal::virtio::RootAccess;
use crate::hal::virtqueue::BufferQueue;
use crate::hal::{self, Mmio, RegisterIo};
use crate::pci::bar::{self, Bar, BarError};
use crate::pci::{self, Bdf, ConfigAccess};
use crate::virtio_net::transport::{Notify, RoamTransport, common};
use crate::virtio_net::{Interrupt, InterruptRequest, Structures, region, setup_interrupts};
use core::fmt;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::transport::{InterruptStatus, Transport};

/// The virtio PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1AF4;
/// virtio-console's modern (virtio 1.x only) PCI device ID.
pub const DEVICE_ID_MODERN: u16 = 0x1043;
/// virtio-console's transitional PCI device ID.
pub const DEVICE_ID_TRANSITIONAL: u16 = 0x1003;

/// `device_status` in the common configuration, and its "needs reset" bit.
const DEVICE_STATUS: usize = 0x14;
const STATUS_NEEDS_RESET: u8 = 0x40;

/// Port 0's queues (virtio 1.1, 5.3.2).
const RECEIVEQ: u16 = 0;
const TRANSMITQ: u16 = 1;
/// Receive buffers (the receive queue's size), and what each holds: the device fills one
/// while the driver reads the other.
const RX_BUFFERS: usize = 2;
const RX_LEN: usize = 4096;
/// Transmit buffers in flight at once (the transmit queue's size), and the bytes each holds:
/// an agent reply is one frame of at most 256 bytes.
pub const TX_SLOTS: usize = 8;
const TX_SLOT_LEN: usize = 256;
/// Looks at the used ring before `send` gives up on a device that takes nothing.
const TX_WAIT_LOOKS: u32 = 1_000_000;

bitflags::bitflags! {
    /// The features this driver accepts (virtio 1.1, 6): virtio 1.x, and the event index
    /// (kicks and interrupts only when the other side asks for them).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
    }
}

/// Whether `function` is a virtio console this driver can drive.
pub fn matches(function: &pci::Function) -> bool {
    function.vendor_id == VENDOR_ID
        && matches!(
            function.device_id,
            DEVICE_ID_MODERN | DEVICE_ID_TRANSITIONAL
        )
}

/// Why the console could not be brought up or used (not `Copy`: virtio-drivers' errors
/// are not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The function is not a virtio console (vendor, device).
    NotVirtioConsole(u16, u16),
    /// A BAR could not be decoded or assigned.
    Bar(BarError),
    /// A required virtio structure is missing (its name).
    MissingStructure(&'static str),
    /// A virtio structure does not fit its BAR (its name).
    StructureOutsideBar(&'static str),
    /// virtio-drivers' PCI transport refused the device.
    Transport(VirtioPciError),
    /// A virtio queue could not be set up or used.
    Driver(virtio_drivers::Error),
    /// The device has stopped (DEVICE_NEEDS_RESET): nothing more goes through.
    NeedsReset,
    /// Every transmit buffer stayed in flight: the device takes nothing.
    Stalled,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotVirtioConsole(v, d) => write!(f, "{v:04x}:{d:04x} is not virtio-console"),
            Error::Bar(e) => write!(f, "{e}"),
            Error::MissingStructure(s) => write!(f, "no virtio {s} structure"),
            Error::StructureOutsideBar(s) => write!(f, "virtio {s} structure outside its BAR"),
            Error::Transport(e) => write!(f, "PCI transport: {e}"),
            Error::Driver(e) => write!(f, "virtio-console: {e}"),
            Error::NeedsReset => write!(f, "virtio-console: the device needs a reset"),
            Error::Stalled => write!(f, "virtio-console: the device takes no more bytes"),
        }
    }
}

/// Checks that `bdf` is a virtio console.
fn check_ids(access: &impl ConfigAccess, bdf: Bdf) -> Result<(), Error> {
    let ids = access.read32(bdf, pci::VENDOR_DEVICE);
    let (vendor, device) = (ids as u16, (ids >> 16) as u16);
    if vendor != VENDOR_ID || !matches!(device, DEVICE_ID_MODERN | DEVICE_ID_TRANSITIONAL) {
        return Err(Error::NotVirtioConsole(vendor, device));
    }
    Ok(())
}

/// The common configuration and notify regions (with the notify multiplier) of `bdf`,
/// checked against its BARs.
fn locate(
    access: &impl ConfigAccess,
    bdf: Bdf,
    bars: &[Option<Bar>; 6],
) -> Result<(bar::Region, bar::Region, u32), Error> {
    let found = Structures::find(access, bdf);
    let common_cap = found
        .common
        .ok_or(Error::MissingStructure("common configuration"))?;
    let (notify, multiplier) = found.notify.ok_or(Error::MissingStructure("notify"))?;
    let common_region = region(bars, common_cap, "common configuration")
        .ok()
        .filter(|r| r.len() >= common::LEN)
        .ok_or(Error::StructureOutsideBar("common configuration"))?;
    let notify_region =
        region(bars, notify, "notify").map_err(|_| Error::StructureOutsideBar("notify"))?;
    Ok((common_region, notify_region, multiplier))
}

/// A virtio console brought up: one port, bytes both ways.
pub struct Console<H: VirtioHal> {
    // First, so it is dropped first: virtio-drivers' PCI transport resets the device when
    // dropped, and only then may the buffers it could still use go.
    transport: RoamTransport,
    /// Both receive buffers are lent to the device except the one being read (`rx_held`:
    /// its slot and length; `rx_at` bytes of it read).
    receiveq: BufferQueue<H, RX_BUFFERS, RX_LEN>,
    rx_held: Option<(usize, usize)>,
    rx_at: usize,
    transmitq: BufferQueue<H, TX_SLOTS, TX_SLOT_LEN>,
    /// The common configuration, to see whether the device has stopped.
    common: Mmio,
    interrupt: Interrupt,
}

impl<H: VirtioHal> Console<H> {
    /// Brings up the virtio-console function `bdf`, whose BARs are `bars` (sized and
    /// assigned once, by [`bar::read_assigned`]; nothing sizes them again). Interrupts go to
    /// `irq` through MSI-X when the device has it (`queue_vector`: bytes arrived;
    /// `config_vector`: configuration changes), else through INTx (see
    /// [`Console::interrupt`]).
    pub fn probe<C: ConfigAccess + Clone>(
        access: &mut C,
        bdf: Bdf,
        bars: &[Option<Bar>; 6],
        irq: InterruptRequest,
    ) -> Result<Console<H>, Error> {
        check_ids(access, bdf)?;
        // The capability walks (`locate`'s, then virtio-drivers') read each register once.
        let mut remembered = pci::remembered::Remembered::new(access.clone(), bdf);
        let access = &mut remembered;
        let bars = *bars;
        let command = pci::command(access, bdf);
        pci::set_command(
            access,
            bdf,
            (command | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER) & !pci::COMMAND_INTX_DISABLE,
        );

        let (common_region, notify_region, multiplier) = locate(access, bdf, &bars)?;
        // Three views of the common configuration: the transport's vector writes, the check
        // that the device took them, and the status check before each send.
        let common_io = hal::map::<H>(common_region);
        let mut check = hal::map::<H>(common_region);
        let status = hal::map::<H>(common_region);
        let notify = Notify {
            io: hal::map::<H>(notify_region),
            multiplier,
        };

        let (vectors, mut interrupt, msix) = setup_interrupts::<H, _>(access, bdf, &bars, irq);
        let df = DeviceFunction {
            bus: bdf.bus,
            device: bdf.device,
            function: bdf.function,
        };
        let mut root = PciRoot::new(RootAccess::new(access.clone(), bdf, bars));
        let inner = PciTransport::new::<H, _>(&mut root, df).map_err(Error::Transport)?;
        let transport = RoamTransport::new(inner, common_io, notify, vectors);
        let mut console = Console::start(transport, status)?;

        if let (Some(msix), Interrupt::Msix { .. }) = (msix, interrupt) {
            check.write16(common::QUEUE_SELECT, 0);
            let taken = check.read16(common::QUEUE_MSIX_VECTOR) == vectors.queues[0]
                && check.read16(common::MSIX_CONFIG) == vectors.config;
            if !taken {
                log::warn!("pci {bdf}: the console refused its MSI-X vectors; using INTx");
                msix.disable(access, bdf);
                interrupt = pci::intx(access, bdf).map_or(Interrupt::None, Interrupt::Intx);
            }
        }
        console.interrupt = interrupt;
        Ok(console)
    }

    /// Negotiates features, sets up both queues, says DRIVER_OK and lends the receive
    /// buffers.
    fn start(mut transport: RoamTransport, common: Mmio) -> Result<Console<H>, Error> {
        let features = transport.begin_init(Features::RING_EVENT_IDX | Features::VERSION_1);
        let event_idx = features.contains(Features::RING_EVENT_IDX);
        let receiveq =
            BufferQueue::new(&mut transport, RECEIVEQ, event_idx, true).map_err(Error::Driver)?;
        let transmitq =
            BufferQueue::new(&mut transport, TRANSMITQ, event_idx, false).map_err(Error::Driver)?;
        transport.finish_init();
        let mut console = Console {
            transport,
            receiveq,
            rx_held: None,
            rx_at: 0,
            transmitq,
            common,
            interrupt: Interrupt::None,
        };
        while console
            .receiveq
            .lend(&mut console.transport, &[])
            .map_err(Error::Driver)?
        {}
        Ok(console)
    }

    /// How the device signals (MSI-X, INTx, or not at all).
    pub fn interrupt(&self) -> Interrupt {
        self.interrupt
    }

    /// Whether the device has stopped (DEVICE_NEEDS_RESET): then nothing more goes through.
    pub fn needs_reset(&self) -> bool {
        self.common.read8(DEVICE_STATUS) & STATUS_NEEDS_RESET != 0
    }

    /// Copies bytes the host sent into `buf`, as many as are there and fit; never waits.
    /// Returns how many (0: none waiting).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut n = 0;
        while n < buf.len() {
            let (slot, len) = match self.rx_held {
                Some(held) => held,
                None => match self.receiveq.take().map_err(Error::Driver)? {
                    Some(filled) => {
                        self.rx_at = 0;
                        self.rx_held = Some(filled);
                        filled
                    }
                    None => break,
                },
            };
            let have = self
                .receiveq
                .buffer(slot)
                .and_then(|b| b.get(self.rx_at..len))
                .unwrap_or(&[]);
            let take = have.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&have[..take]);
            self.rx_at += take;
            n += take;
            if self.rx_at >= len {
                // Read to the end: back to the device for what comes next.
                self.rx_held = None;
                self.receiveq
                    .lend(&mut self.transport, &[])
                    .map_err(Error::Driver)?;
            }
        }
        Ok(n)
    }

    /// Hands `bytes` to the host: copied into transmit buffers and posted; returns without
    /// waiting for the device unless all [`TX_SLOTS`] buffers are still in flight.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.needs_reset() {
            return Err(Error::NeedsReset);
        }
        for chunk in bytes.chunks(TX_SLOT_LEN) {
            let mut looks = 0;
            loop {
                while self.transmitq.take().map_err(Error::Driver)?.is_some() {}
                if self
                    .transmitq
                    .lend(&mut self.transport, chunk)
                    .map_err(Error::Driver)?
                {
                    break;
                }
                // Every buffer in flight: wait for the device to use one, bounded.
                looks += 1;
                if looks == TX_WAIT_LOOKS {
                    return Err(Error::Stalled);
                }
                if self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
                core::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// For INTx: reads (and so clears) the interrupt status, lowering the line. Returns
    /// whether bytes may have arrived (call [`Console::recv`]). With MSI-X there is nothing
    /// to acknowledge: call `recv` when the queue vector fires.
    pub fn ack_interrupt(&mut self) -> Result<bool, Error> {
        if !matches!(self.interrupt, Interrupt::Intx(_)) {
            return Ok(false);
        }
        let status = self.transport.ack_interrupt();
        Ok(status.contains(InterruptStatus::QUEUE_INTERRUPT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::ID_VENDOR;
    use crate::pci::fake::{FakeConfig, FakeFunction};
    use crate::pci::{CAPABILITY_POINTER, STATUS_CAPABILITIES};

    const DEV: Bdf = Bdf {
        bus: 0,
        device: 4,
        function: 0,
    };

    fn function(vendor_id: u16, device_id: u16) -> pci::Function {
        pci::Function {
            bdf: DEV,
            vendor_id,
            device_id,
            class: 0xFF,
            subclass: 0,
            header_type: 0,
        }
    }

    #[test]
    fn matches_virtio_console_ids_only() {
        assert!(matches(&function(VENDOR_ID, DEVICE_ID_MODERN)));
        assert!(matches(&function(VENDOR_ID, DEVICE_ID_TRANSITIONAL)));
        assert!(!matches(&function(VENDOR_ID, 0x1041)), "virtio-net");
        assert!(!matches(&function(0x8086, DEVICE_ID_MODERN)));
    }

    #[test]
    fn another_function_is_refused_by_its_ids() {
        let mut c = FakeConfig::default();
        c.add(DEV, FakeFunction::new(VENDOR_ID, 0x1041, 0x02, 0x00));
        let e = check_ids(&c, DEV).unwrap_err();
        assert_eq!(e, Error::NotVirtioConsole(VENDOR_ID, 0x1041));
        assert_eq!(e.to_string(), "1af4:1041 is not virtio-console");
        c.add(
            DEV,
            FakeFunction::new(VENDOR_ID, DEVICE_ID_MODERN, 0x07, 0x80),
        );
        assert_eq!(check_ids(&c, DEV), Ok(()));
    }

    /// host-vmm's console: BAR 1 MSI-X, BAR 4 the virtio structures (QEMU's layout).
    fn host_vmm_console(notify_offset: u32) -> FakeConfig {
        let mut f = FakeFunction::new(VENDOR_ID, DEVICE_ID_MODERN, 0xFF, 0x00);
        f.set_status(STATUS_CAPABILITIES);
        f.set_byte(CAPABILITY_POINTER, 0x60);
        let vendor = |cap_len: u8, cfg_type: u8, offset: u32, length: u32| {
            let mut body = vec![cap_len, cfg_type, 4, 0, 0, 0];
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&length.to_le_bytes());
            body
        };
        f.add_capability(
            0x60,
            ID_VENDOR,
            0x50,
            &vendor(0x14, 2, notify_offset, 0x1000),
        );
        f.set_dword(0x60 + 16, 4);
        f.add_capability(0x50, ID_VENDOR, 0x00, &vendor(0x10, 1, 0, 0x1000));
        f.set_bar(4, 0x4000, 0b1100, 0xFE00_0000);
        let mut c = FakeConfig::default();
        c.add(DEV, f);
        c
    }

    #[test]
    fn the_structures_are_located_inside_their_bar() {
        let mut c = host_vmm_console(0x3000);
        let bars = bar::read_all(&mut c, DEV);
        let (common_region, notify, multiplier) = locate(&c, DEV, &bars).unwrap();
        assert_eq!(common_region.phys(), 0xFE00_0000);
        assert_eq!((notify.phys(), multiplier), (0xFE00_3000, 4));
        let mut c = host_vmm_console(0x3800);
        let bars = bar::read_all(&mut c, DEV);
        assert_eq!(
            locate(&c, DEV, &bars).unwrap_err(),
            Error::StructureOutsideBar("notify")
        );
        let mut c = FakeConfig::default();
        c.add(
            DEV,
            FakeFunction::new(VENDOR_ID, DEVICE_ID_MODERN, 0xFF, 0x00),
        );
        let bars = bar::read_all(&mut c, DEV);
        assert_eq!(
            locate(&c, DEV, &bars).unwrap_err(),
            Error::MissingStructure("common configuration")
        );
    }
}
