//! Intel 82599 SR-IOV virtual function (ixgbevf): our own driver, behind [`NetDevice`]
//! (`docs/ixgbevf.md`, §5 and §9 for the driver).
//!
//! One receive and one transmit queue (queue 0), 32 descriptors each with 2 KiB buffers,
//! MSI-X only (entry 0: queue 0, entry 1: mailbox and link), the legacy mailbox with API 1.3
//! down to 1.0. What the kernel does:
//!
//! ```text
//! let f = pci::enumerate(&config).into_iter().find(ixgbevf::pci::matches)?;
//! let vf = ixgbevf::pci::probe(&mut config, f.bdf, None)?;          // IDs, BARs, bus master
//! vf.enable_msix(&mut config, map(vf.msix_table), irq)?;            // entries 0 and 1
//! let mut dev = Ixgbevf::new(map(vf.registers), KernelDma, &mut delay, Config { mac })?;
//! // After either vector: `dev.service()` if it was "other" (also every second or so),
//! // poll the stack, then `dev.rearm_interrupts()` (poll again if it says a frame waits).
//! // On `VfEvents::reset_needed`: `dev.reinit(&mut delay)` (or `dev.begin_reinit()` and
//! // `dev.step(now)` between network passes), at most every second or so.
//! // Around a move: `dev.detach()`; later `dev.attach(map(registers), &mut delay)` brings
//! // it up on the rings it has (no allocation, no clearing of 132 KiB of buffers), or,
//! // without blocking, `dev.begin_attach(map(registers))` and then `dev.step(now)` between
//! // network passes until it says `Progress::Done`.
//! ```
//!
//! Nothing the device reports can make the driver panic or loop: waits are bounded, lengths
//! and status bits are checked (bad frames are dropped and counted), and a register reading
//! all ones means the VF is gone ([`Ixgbevf::is_removed`]): from then on the driver touches
//! neither registers nor DMA memory.

mod init;
mod mailbox;
pub mod pci;
mod rx;
mod tx;

use crate::hal::RegisterIo;
use crate::hal::dma::{Delay, Dma};
use crate::net::{Capabilities, Events, MacAddress, NetDevice, RxToken, Stats, TxToken};
use crate::pci::bar::BarError;
use crate::pci::msix::MsixError;
use core::fmt;
use init::BringUp;
use ixgbevf_regs::{
    EICR_MASK, VFCTRL, VFCTRL_RST, VFLINKS, VFLINKS_UP, VFSTATUS, VTEICR, VTEIMC, VTEIMS, mbx,
};
use mailbox::Mailbox;
use rx::RxRing;
use tx::TxRing;

pub use init::Progress;
pub use pci::{InterruptRequest, VfFunction};

/// Largest frame handed to or taken from the stack (1500-byte MTU, no FCS).
pub const MAX_FRAME_LEN: usize = tx::MAX_FRAME;
/// Descriptors (and buffers) per queue.
pub const QUEUE_ENTRIES: usize = rx::ENTRIES;

/// Why the VF could not be found, brought up or used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The PCI function is not an 82599 VF (its vendor and device IDs).
    NotAVf(u16, u16),
    /// A BAR could not be assigned.
    Bar(BarError),
    /// BAR `n` is missing, unassigned or too small for what must be in it.
    BadBar(u8),
    /// No MSI-X capability with at least two entries (VFs have no INTx).
    NoMsix,
    /// MSI-X could not be set up.
    Msix(MsixError),
    /// No DMA memory for the rings and buffers.
    NoMemory,
    /// The VF is gone (its registers read all ones): surprise removal.
    Removed,
    /// The PF kept the VF in reset (RSTI/RSTD never cleared): the PF is not up.
    ResetTimeout,
    /// The PF held the mailbox buffer for the whole wait.
    MailboxBusy,
    /// The PF did not answer within a second (no more requests until the next reset).
    MailboxTimeout,
    /// The PF answered request `request` with `reply` (word 0), which makes no sense.
    BadReply {
        /// The request's message ID.
        request: u32,
        /// Word 0 of the reply.
        reply: u32,
    },
    /// The PF refused every mailbox API version from 1.3 down to 1.0.
    NoCommonApi,
    /// The PF refused our MAC address and assigned none.
    NoMac,
    /// The transmit queue did not report itself enabled.
    TxQueueNotEnabled,
    /// The receive queue did not report itself enabled.
    RxQueueNotEnabled,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotAVf(v, d) => write!(f, "{v:04x}:{d:04x} is not an 82599 VF"),
            Error::Bar(e) => write!(f, "{e}"),
            Error::BadBar(i) => write!(f, "BAR {i} is missing, unassigned or too small"),
            Error::NoMsix => write!(f, "no MSI-X with at least two vectors"),
            Error::Msix(e) => write!(f, "{e}"),
            Error::NoMemory => write!(f, "no DMA memory for the rings"),
            Error::Removed => write!(f, "the VF is gone (registers read all ones)"),
            Error::ResetTimeout => {
                write!(f, "the PF keeps the VF in reset; is the PF driver up?")
            }
            Error::MailboxBusy => write!(f, "the PF holds the mailbox"),
            Error::MailboxTimeout => write!(f, "the PF did not answer on the mailbox"),
            Error::BadReply { request, reply } => {
                write!(f, "the PF answered request {request:#x} with {reply:#010x}")
            }
            Error::NoCommonApi => write!(f, "the PF accepts no mailbox API from 1.3 to 1.0"),
            Error::NoMac => write!(f, "the PF refused our MAC address and assigned none"),
            Error::TxQueueNotEnabled => write!(f, "the transmit queue did not come up"),
            Error::RxQueueNotEnabled => write!(f, "the receive queue did not come up"),
        }
    }
}

/// What the driver is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The MAC address to use (the failover device wants virtio-net's on both NICs). If the
    /// PF refuses it, or with `None`, the driver uses the PF-assigned permanent MAC.
    pub mac: Option<MacAddress>,
}

/// Where the MAC address in use came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacSource {
    /// [`Config::mac`]: the PF accepted it.
    Requested,
    /// The PF refused [`Config::mac`]; this is the MAC it assigned the VF.
    Permanent,
}

/// What [`Ixgbevf::service`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfEvents {
    /// [`NetDevice::link_up`] changed.
    pub link_changed: bool,
    /// The VF was found gone just now (reported once; see [`Ixgbevf::is_removed`]).
    pub removed: bool,
    /// The PF reset, asked the VF to reset or stopped answering, or the last bring-up
    /// failed: call [`Ixgbevf::reinit`], at most every second or so (the link stays down
    /// until it succeeds).
    pub reset_needed: bool,
}

/// MSI-X vector bits in VTEICR, VTEIMS and friends: queue 0, and both vectors.
const QUEUE_VECTOR: u32 = 1 << pci::QUEUE_ENTRY;
const VECTORS: u32 = QUEUE_VECTOR | (1 << pci::OTHER_ENTRY);

/// An 82599 VF, brought up and carrying frames.
pub struct Ixgbevf<R: RegisterIo, D: Dma> {
    io: R,
    mbx: Mailbox,
    rx: RxRing<D>,
    tx: TxRing<D>,
    requested_mac: Option<MacAddress>,
    permanent_mac: Option<MacAddress>,
    mac: MacAddress,
    /// Negotiated mailbox API (`ixgbevf_regs::mbx::API_*`).
    api: u32,
    /// The PF's last message or reply carried CTS.
    pf_cts: bool,
    /// GET_LINK_STATE did not say "administratively disabled".
    link_enabled: bool,
    link_up: bool,
    reset_needed: bool,
    /// Bring-up finished: the rings may be used.
    ready: bool,
    /// The bring-up under way, if any ([`Ixgbevf::step`]).
    bring_up: Option<BringUp>,
    removed: bool,
    stats: Stats,
}

impl<R: RegisterIo, D: Dma> Ixgbevf<R, D> {
    /// Resets the VF and brings it up (`docs/ixgbevf.md` §5): `io` is its register BAR, `dma` gives
    /// the ring memory (two allocations of 66 KiB), `delay` paces the bounded polls of the
    /// bring-up. MSI-X must already be set up ([`VfFunction::enable_msix`]) for interrupts to
    /// arrive, though the driver works polled as well.
    pub fn new(
        io: R,
        dma: D,
        delay: &mut dyn Delay,
        config: Config,
    ) -> Result<Ixgbevf<R, D>, Error> {
        let rx = RxRing::new(dma.clone()).ok_or(Error::NoMemory)?;
        let tx = TxRing::new(dma).ok_or(Error::NoMemory)?;
        let mut vf = Ixgbevf {
            io,
            mbx: Mailbox::new(),
            rx,
            tx,
            requested_mac: config.mac,
            permanent_mac: None,
            mac: config.mac.unwrap_or_default(),
            api: mbx::API_10,
            pf_cts: false,
            link_enabled: true,
            link_up: false,
            reset_needed: false,
            ready: false,
            bring_up: None,
            removed: false,
            stats: Stats::default(),
        };
        // On failure `vf` is dropped, which resets the VF before its rings are freed.
        vf.reinit(delay)?;
        Ok(vf)
    }

    /// Stops the VF (interrupts masked, VFCTRL.RST: no more DMA) and keeps its rings and
    /// buffers for [`Ixgbevf::attach`]: what a guest does when the VF goes away for a move.
    /// A removed VF is not touched. Afterwards the driver carries nothing.
    pub fn detach(&mut self) {
        if !self.removed {
            self.io.write32(VTEIMC, EICR_MASK);
            self.io.write32(VFCTRL, VFCTRL_RST);
        }
        self.ready = false;
        self.link_up = false;
        self.bring_up = None;
    }

    /// Brings the VF up again through `io`, its register BAR now (the same VF or another
    /// one, after [`Ixgbevf::detach`] or removal), on the rings and buffers it already has:
    /// nothing is allocated or cleared but the descriptors. Counters are kept. MSI-X must be
    /// set up again first, as for [`Ixgbevf::new`]. Blocks, pausing with `delay`, until
    /// done; [`Ixgbevf::begin_attach`] does the same in steps.
    pub fn attach(&mut self, io: R, delay: &mut dyn Delay) -> Result<(), Error> {
        self.begin_attach(io);
        self.finish(delay)
    }

    /// Starts what [`Ixgbevf::attach`] does, without waiting: [`Ixgbevf::step`] then
    /// carries it out, one stage per call.
    pub fn begin_attach(&mut self, io: R) {
        // What the last VF told us says nothing about this one.
        self.io = io;
        self.mbx = Mailbox::new();
        self.permanent_mac = None;
        self.mac = self.requested_mac.unwrap_or_default();
        self.api = mbx::API_10;
        self.pf_cts = false;
        self.link_enabled = true;
        self.removed = false;
        self.reset_needed = false;
        self.begin();
    }

    /// Whether a bring-up is under way ([`Ixgbevf::step`] has more to do).
    pub fn bringing_up(&self) -> bool {
        self.bring_up.is_some()
    }

    /// Resets the VF and runs the whole bring-up again (after [`VfEvents::reset_needed`]).
    /// Counters are kept. Until it succeeds the device carries no frames.
    pub fn reinit(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        self.begin_reinit()?;
        self.finish(delay)
    }

    /// Starts what [`Ixgbevf::reinit`] does, without waiting: [`Ixgbevf::step`] then carries
    /// it out. Until it is done the device carries no frames.
    pub fn begin_reinit(&mut self) -> Result<(), Error> {
        if self.removed {
            return Err(Error::Removed);
        }
        self.begin();
        Ok(())
    }

    /// A bring-up ended in `error`.
    fn failed(&mut self, error: Error) {
        if error == Error::Removed {
            self.mark_removed();
        } else {
            log::warn!("ixgbevf: bring-up failed: {error}");
            // `service` keeps asking for another try.
            self.reset_needed = true;
        }
    }

    /// Checks the VF after its "other" interrupt, and every second or so anyway (as Linux's
    /// watchdog does; `docs/ixgbevf.md` §7): removal (VFSTATUS all ones), PF resets, PF messages
    /// (link changes, clear-to-send), and VFLINKS. A few register accesses; never waits.
    pub fn service(&mut self) -> VfEvents {
        if self.removed {
            return VfEvents::default();
        }
        let was_up = self.link_up;
        let mut events = VfEvents::default();
        if self.check_link() == Err(Error::Removed) {
            self.mark_removed();
            events.removed = true;
        }
        events.link_changed = self.link_up != was_up;
        events.reset_needed = self.reset_needed && !self.removed;
        events
    }

    fn check_link(&mut self) -> Result<(), Error> {
        if self.io.read32(VFSTATUS) == u32::MAX {
            return Err(Error::Removed);
        }
        let signals = self.mbx.poll(&self.io)?;
        if signals.reset || self.mbx.timed_out() {
            self.reset_needed = true;
        }
        if signals.message {
            let mut word = [0];
            if self.mbx.fetch(&mut self.io, &mut word)? {
                self.pf_message(word[0]);
            } else {
                // The PF is busy with the buffer: look again next time.
                self.mbx.keep_message();
            }
        }
        let links = self.io.read32(VFLINKS);
        if links == u32::MAX {
            return Err(Error::Removed);
        }
        self.link_up = links & VFLINKS_UP != 0
            && self.pf_cts
            && self.link_enabled
            && self.ready
            && !self.reset_needed;
        Ok(())
    }

    /// A message the PF posted: CTS means "in good standing"; without it the link is down,
    /// and NACK without CTS asks the VF to reset (`docs/ixgbevf.md` §7).
    fn pf_message(&mut self, word: u32) {
        self.pf_cts = word & mbx::CTS != 0;
        if !self.pf_cts && word & mbx::NACK != 0 {
            self.reset_needed = true;
        }
    }

    fn mark_removed(&mut self) {
        if !self.removed {
            log::warn!("ixgbevf: the VF is gone");
        }
        self.removed = true;
        self.ready = false;
        self.link_up = false;
    }

    /// Re-enables the VF's interrupts after one arrived, once its work is done (they mask
    /// themselves when sent, so one interrupt covers a whole burst). Returns whether a frame
    /// already waits, in which case the caller should poll again rather than wait for an
    /// interrupt. The queue cause raised while masked is cleared first, since the frames
    /// behind it were polled (or are reported here): no interrupt for work already done.
    pub fn rearm_interrupts(&mut self) -> bool {
        if !self.ready {
            return false;
        }
        self.io.write32(VTEICR, QUEUE_VECTOR);
        self.io.write32(VTEIMS, VECTORS);
        self.rx.frame_waiting()
    }

    /// Whether the VF was found gone; it then carries nothing and is never touched again.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// The MAC address the PF assigned the VF, if any (from the RESET reply).
    pub fn permanent_mac(&self) -> Option<MacAddress> {
        self.permanent_mac
    }

    /// Whether the MAC in use is the one asked for or the PF's.
    pub fn mac_source(&self) -> MacSource {
        if Some(self.mac) == self.requested_mac {
            MacSource::Requested
        } else {
            MacSource::Permanent
        }
    }

    /// The mailbox API the PF accepted (`ixgbevf_regs::mbx::API_*`).
    pub fn api_version(&self) -> u32 {
        self.api
    }
}

impl<R: RegisterIo, D: Dma> Drop for Ixgbevf<R, D> {
    fn drop(&mut self) {
        // Stop all DMA before the rings are freed (the fields drop after this). A removed VF
        // is not touched: there is nothing left to stop.
        if !self.removed {
            self.io.write32(VTEIMC, EICR_MASK);
            self.io.write32(VFCTRL, VFCTRL_RST);
        }
    }
}

impl<R: RegisterIo, D: Dma> fmt::Debug for Ixgbevf<R, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ixgbevf")
            .field("mac", &self.mac)
            .field("link_up", &self.link_up)
            .field("ready", &self.ready)
            .field("removed", &self.removed)
            .finish()
    }
}

/// A received frame, in its DMA buffer, and whether the VF found its L4 checksum right.
pub struct IxgbevfRx<'a>(&'a [u8], bool);

impl RxToken for IxgbevfRx<'_> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        f(self.0)
    }

    fn checksum_valid(&self) -> bool {
        self.1
    }
}

/// The right to send one frame on the VF.
pub struct IxgbevfTx<'a, R: RegisterIo, D: Dma> {
    tx: &'a mut TxRing<D>,
    io: &'a mut R,
    stats: &'a mut Stats,
}

impl<R: RegisterIo, D: Dma> TxToken for IxgbevfTx<'_, R, D> {
    fn consume<T, F: FnOnce(&mut [u8]) -> T>(self, len: usize, f: F) -> T {
        self.tx.send(self.io, self.stats, len, f)
    }

    /// Always: the ring carries a TCP checksum context (`tx`).
    fn checksum_offload(&self) -> bool {
        true
    }
}

impl<R: RegisterIo, D: Dma> NetDevice for Ixgbevf<R, D> {
    type RxToken<'a>
        = IxgbevfRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = IxgbevfTx<'a, R, D>
    where
        Self: 'a;

    fn mac_address(&self) -> MacAddress {
        self.mac
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_frame_len: MAX_FRAME_LEN,
            max_burst: Some(self.tx.capacity()),
            tx_checksum: true,
        }
    }

    fn link_up(&self) -> bool {
        self.link_up
    }

    fn receive(&mut self) -> Option<(IxgbevfRx<'_>, IxgbevfTx<'_, R, D>)> {
        if !self.ready {
            return None;
        }
        let (slot, len, checked) = self.rx.next_frame(&mut self.io, &mut self.stats)?;
        Some((
            IxgbevfRx(self.rx.frame(slot, len), checked),
            IxgbevfTx {
                tx: &mut self.tx,
                io: &mut self.io,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self) -> Option<IxgbevfTx<'_, R, D>> {
        if !self.ready {
            return None;
        }
        self.rx.release_lent();
        self.tx.has_room().then_some(IxgbevfTx {
            tx: &mut self.tx,
            io: &mut self.io,
            stats: &mut self.stats,
        })
    }

    fn ack_interrupt(&mut self) -> Events {
        // MSI-X only: the vector says what happened.
        Events::default()
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}
