//! An emulated Intel 82599 SR-IOV virtual function (ixgbevf), with the PF's side of the
//! mailbox played by the model.
//!
//! - **82599 VF** (`host-vmm run --vf tap=NAME[,mac=MAC]`, `docs/ixgbevf.md` §1–§8):
//!   8086:10ED revision 1, subsystem 8086:000C, class 02/00, no INTx (interrupt pin 0, as
//!   on real VFs), MSI-X only. BAR 0 (16 KiB, 64-bit): the VF registers. BAR 3 (16 KiB,
//!   64-bit): MSI-X table at 0 (3 vectors), PBA at 0x2000. One capability: MSI-X. The PF
//!   side answers every mailbox request synchronously on the REQ write: RESET (ACK, the
//!   permanent MAC, filter type 0, no CTS), API 1.0–1.3 accepted and 1.4+ refused,
//!   GET_QUEUES 2/2/0/0, SET_MAC_ADDR (only the permanent MAC unless the VF is trusted;
//!   host-vmm's is not), SET_LPE, SET_MULTICAST, SET_VLAN, SET_MACVLAN, UPDATE_XCAST_MODE,
//!   GET_LINK_STATE; anything else NACK. VFLINKS reads 0x7000_0000 (up, 10G) or 0x3000_0000;
//!   a link change posts `PF_CONTROL_MSG|CTS` to the mailbox and raises the "other" vector
//!   (VTIVAR_MISC). Queues: TX 0 and 1, RX 0 (RX 1 is accepted and never used), advanced
//!   descriptors (legacy TX too), advanced one-buffer RX write-back; TX offloads IXSM,
//!   TXSM (TCP, UDP, SCTP) and TSO done in software, VLAN insertion and stripping. No
//!   receive filtering: every frame the TAP delivers is received, while RX queue 0 is
//!   enabled and has free descriptors, and dropped otherwise. A ring, head, tail or buffer
//!   the device cannot use (misaligned, bad length, outside RAM) stops that queue, with one
//!   warning, until the driver writes its RXDCTL/TXDCTL again or resets the VF. While the
//!   link is down, received frames are dropped and transmitted ones complete unsent.
//!   Hot-removal (`host-vmm ctl PATH vf remove`) empties the VF's PCI slot: its
//!   configuration space and BARs read all ones (VFSTATUS reads 0xFFFF_FFFF, which is how a
//!   driver notices) and its TAP is drained and dropped; `vf add` plugs a freshly reset VF
//!   (same MAC, TAP and MSI-X lines) back at the same slot and BAR addresses with memory
//!   decoding on and its link up.
//!
//! Migration state ([`IxgbevfState`]): the permanent MAC and trust (which must match the
//! destination's), presence (a VF removed on the source stays removed), the configuration
//! header (BARs, MSI-X control), the MSI-X table and pending bits, and [`DeviceState`]:
//! link, interrupt registers, every queue's register block, TX contexts, statistics and
//! the mailbox, both sides. Frames are never held between batches (RX writes a frame into
//! descriptors at once, TX completes inside the TDT write), so nothing else is in flight.
//! Restore re-routes MSI-X; BAR decoding follows when the PCI root is restored.
//!
//! Layout: this file is the PCI function (configuration space, BAR 0 register dispatch,
//! BAR 3 MSI-X) and the device's entry points; [`state`] holds the runtime state as plain
//! data, [`mailbox`] the PF side, [`interrupts`] the cause/mask registers, [`ring`] ring
//! checks, [`rx`] and [`tx`] the data path, [`offload`] checksums and TSO, [`operator`]
//! hot-plug and link control for the operator, and [`io`] the I/O-thread handler.
//!
//! Entry points without KVM or threads (tests, and drivers run in-process against the
//! model): [`Ixgbevf::new`] over any [`NetBackend`] with a [`RecordingVmOps`]-style
//! [`VmOps`]; the guest's side through [`PciDevice`] (`read_config`/`write_config`,
//! `read_bar`/`write_bar`); frames waiting in the backend move into RX with
//! [`Ixgbevf::poll_backend`]; TX happens inside the TDT write.
//!
//! [`RecordingVmOps`]: crate::devices::vm_ops::RecordingVmOps

pub mod interrupts;
pub mod io;
pub mod mailbox;
pub mod offload;
pub mod operator;
pub mod ring;
pub mod rx;
pub mod state;
pub mod tx;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use crate::devices::pci::PciDevice;
use crate::devices::pci::config::{
    BarInfo, BarKind, ConfigSpace, ConfigSpaceState, LayoutError, PciIds,
};
use crate::devices::pci::msix::{self, Msix, MsixState, MsixVector};
use crate::devices::virtio::net::backend::NetBackend;
use crate::devices::vm_ops::VmOps;
use crate::devices::{DeviceStateError, Persist};
use crate::memory::GuestMemoryMmap;
use interrupts::Cause;
use ixgbevf_regs as r;
use mailbox::PfPolicy;
use ring::QueueError;
use serde::{Deserialize, Serialize};
use state::{DeviceState, QUEUES};
use std::io as stdio;
use std::sync::Arc;
use tx::TxScratch;

pub use io::IxgbevfHandler;
pub use operator::{VfHandle, VfOpError, VfOperator, VfState};

/// Subsystem ID (an X520 adapter's VF).
pub const SUBSYSTEM_ID: u16 = 0x000C;
/// Revision ID.
pub const REVISION: u8 = 1;
/// What VFSTATUS reads while the VF is present (anything but all ones).
pub const VFSTATUS_VALUE: u32 = 0;
/// Largest frame taken from the backend (a 64 KiB IP packet plus its Ethernet header).
pub const MAX_RX_FRAME: usize = 65550;
/// VTRSCINT(0..3): stored nowhere, read as 0 (the VF driver never uses them).
const VTRSCINT: std::ops::Range<usize> = 0x0180..0x0190;

/// Why a VF could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VfError {
    /// The configuration header could not be laid out (a bug).
    #[error("cannot lay out the VF's PCI header")]
    Layout(#[from] LayoutError),
    /// An MSI-X line's eventfd could not be duplicated.
    #[error("cannot duplicate an MSI-X eventfd")]
    EventFd(#[source] stdio::Error),
}

/// What went through the device, host side (not visible to the guest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfMetrics {
    /// Frames written into RX descriptors.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames dropped on the way in (VF removed, link down, RX off, no free descriptor).
    pub rx_dropped: u64,
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames not sent (link down, backend refused, offload request did not fit; the
    /// anti-spoofing and MSS drops below are counted here too).
    pub tx_dropped: u64,
    /// Frames dropped because their source MAC is not the VF's (anti-spoofing), or that
    /// are too short to have one.
    pub tx_spoofed: u64,
    /// TSO packets refused for an absurd MSS (below the minimum, or beyond the frame size).
    pub tx_bad_mss: u64,
    /// Queues stopped for a bad ring, index or buffer.
    pub queue_errors: u64,
    /// Packets whose L4 checksum the VF inserted (TXSM).
    pub tx_csum: u64,
    /// Frames delivered with their L4 checksum checked and found right (L4CS, no TCPE).
    pub rx_csum: u64,
}

/// A frame read from the backend, in `rx_buf[start..end]`, ready for RX queue 0.
#[derive(Clone, Copy, Debug)]
struct HeldFrame {
    start: usize,
    end: usize,
    vlan: Option<u16>,
}

/// The VF's migration state (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IxgbevfState {
    /// The permanent MAC.
    pub mac: [u8; 6],
    /// Whether the PF trusts the VF.
    pub trusted: bool,
    /// Plugged into the bus.
    pub present: bool,
    /// The configuration header.
    pub config: ConfigSpaceState,
    /// MSI-X table and pending bits.
    pub msix: MsixState,
    /// Every register the guest sees.
    pub regs: DeviceState,
}

/// The emulated VF: a PCI function over a [`NetBackend`].
pub struct Ixgbevf<B: NetBackend> {
    config: ConfigSpace,
    /// The header as built, for a hot-add's fresh start.
    pristine: ConfigSpace,
    msix_cap: usize,
    msix: Msix,
    /// The MSI-X lines (GSI and irqfd), kept to build a fresh table on hot-add.
    lines: Vec<MsixVector>,
    vm: Arc<dyn VmOps>,
    mem: GuestMemoryMmap,
    backend: B,
    pf: PfPolicy,
    /// Plugged into the bus (the operator's `remove` clears it).
    present: bool,
    state: DeviceState,
    metrics: VfMetrics,
    rx_buf: Box<[u8]>,
    /// The frame in `rx_buf[start..end]` (its VLAN tag already stripped) waits for free RX
    /// descriptors: the backend is not read again until it is delivered (see
    /// [`Ixgbevf::poll_backend`]).
    rx_held: Option<HeldFrame>,
    rx_addrs: Vec<u64>,
    tx: TxScratch,
    /// An unknown register was already reported.
    warned_unknown: bool,
}

impl<B: NetBackend> std::fmt::Debug for Ixgbevf<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ixgbevf")
            .field("mac", &format_args!("{:02x?}", self.pf.mac))
            .field("present", &self.present)
            .field("link_up", &self.state.link_up)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// Duplicates MSI-X lines (same GSIs, same eventfds underneath).
fn dup_lines(lines: &[MsixVector]) -> Result<Vec<MsixVector>, VfError> {
    lines
        .iter()
        .map(|l| {
            Ok(MsixVector {
                gsi: l.gsi,
                irqfd: l.irqfd.try_clone().map_err(VfError::EventFd)?,
            })
        })
        .collect()
}

impl<B: NetBackend> Ixgbevf<B> {
    /// A VF with permanent address `mac` on `backend`, link up, present. `trusted` lets the
    /// guest change its MAC; `vectors` are its MSI-X lines (three, as on an 82599 VF).
    pub fn new(
        backend: B,
        mac: [u8; 6],
        trusted: bool,
        mem: GuestMemoryMmap,
        vm: Arc<dyn VmOps>,
        vectors: Vec<MsixVector>,
    ) -> Result<Self, VfError> {
        let mut config = ConfigSpace::new(PciIds {
            vendor: r::VENDOR_ID,
            device: r::DEVICE_ID_82599_VF,
            revision: REVISION,
            class: 0x02_00_00,
            subsystem_vendor: r::VENDOR_ID,
            subsystem: SUBSYSTEM_ID,
        });
        let bar = BarInfo {
            size: r::BAR_SIZE,
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
        };
        config.add_bar(usize::from(r::REGS_BAR), bar)?;
        config.add_bar(usize::from(r::MSIX_BAR), bar)?;
        let msix = Msix::new(dup_lines(&vectors)?, vm.clone());
        let (body, wmask) = msix.capability(r::MSIX_BAR, 0, r::MSIX_BAR, r::MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(msix::CAP_ID_MSIX, &body, &wmask)?;
        Ok(Ixgbevf {
            pristine: config.clone(),
            config,
            msix_cap,
            msix,
            lines: vectors,
            vm,
            mem,
            backend,
            pf: PfPolicy { mac, trusted },
            present: true,
            state: DeviceState::new(mac),
            metrics: VfMetrics::default(),
            rx_buf: vec![0; MAX_RX_FRAME].into_boxed_slice(),
            rx_held: None,
            rx_addrs: Vec::new(),
            tx: TxScratch::default(),
            warned_unknown: false,
        })
    }

    /// The permanent MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.pf.mac
    }

    /// Whether the VF is plugged in.
    pub fn present(&self) -> bool {
        self.present
    }

    /// Whether its link is up.
    pub fn link_up(&self) -> bool {
        self.state.link_up
    }

    /// The runtime state (registers, queues, mailbox).
    pub fn state(&self) -> &DeviceState {
        &self.state
    }

    /// Host-side counters.
    pub fn metrics(&self) -> VfMetrics {
        self.metrics
    }

    /// The backend (for tests and harnesses).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Moves the frames waiting in the backend into RX queue 0 and raises its interrupt if
    /// any arrived; returns how many. A frame that finds too few free descriptors is kept,
    /// and the backend left unread behind it, until the driver moves RDT: a real 82599
    /// holds such frames in its on-chip packet buffer while the driver refills, and here
    /// the TAP's queue plays that part (dropping only past its own length, as a wire
    /// would). Frames are dropped only while the VF is removed, its link down or the queue
    /// off, or when the whole ring could never hold one. The I/O thread calls this when the
    /// backend is readable, the RDT write when a frame is held; tests call it directly.
    pub fn poll_backend(&mut self) -> usize {
        let mut delivered = 0;
        loop {
            if let Some(held) = self.rx_held {
                match self.offer(held) {
                    rx::Delivery::Delivered => delivered += 1,
                    rx::Delivery::Full => break,
                    rx::Delivery::Unfit => self.metrics.rx_dropped += 1,
                }
                self.rx_held = None;
            }
            let len = match self.backend.recv(&mut self.rx_buf) {
                Ok(len) => len,
                Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == stdio::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("ixgbevf: backend read failed: {e}");
                    break;
                }
            };
            let Some(held) = self.take_in(len) else {
                self.metrics.rx_dropped += 1;
                continue;
            };
            match self.offer(held) {
                rx::Delivery::Delivered => delivered += 1,
                rx::Delivery::Full => {
                    self.rx_held = Some(held);
                    break;
                }
                rx::Delivery::Unfit => self.metrics.rx_dropped += 1,
            }
        }
        if delivered > 0 {
            self.raise(Cause::Rx(0));
        }
        delivered
    }

    /// Readies the `len`-byte frame just read into `rx_buf` for RX queue 0 (its VLAN tag
    /// stripped when RXDCTL asks); `None` if the queue cannot take frames at all.
    fn take_in(&mut self, len: usize) -> Option<HeldFrame> {
        let q = &self.state.rx[0];
        if !self.present || !self.state.link_up || !q.active() || len == 0 {
            return None;
        }
        let buf = &mut self.rx_buf[..len];
        if q.dctl & r::RXDCTL_VME != 0 && len >= 18 && buf[12..14] == [0x81, 0x00] {
            let tag = u16::from_be_bytes([buf[14], buf[15]]);
            buf.copy_within(0..12, 4);
            return Some(HeldFrame {
                start: 4,
                end: len,
                vlan: Some(tag),
            });
        }
        Some(HeldFrame {
            start: 0,
            end: len,
            vlan: None,
        })
    }

    /// Offers the frame in `rx_buf` to RX queue 0 (a queue that went off or broke meanwhile
    /// makes it [`rx::Delivery::Unfit`]).
    fn offer(&mut self, f: HeldFrame) -> rx::Delivery {
        let q = &mut self.state.rx[0];
        if !self.present || !self.state.link_up || !q.active() {
            return rx::Delivery::Unfit;
        }
        let frame = &self.rx_buf[f.start..f.end];
        match rx::deliver(q, &self.mem, frame, f.vlan, &mut self.rx_addrs) {
            Ok(rx::Delivery::Delivered) => {
                self.state.counters.received(frame);
                if rx::checksum_status(frame) & (r::RXD_STAT_L4CS | r::RXD_ERR_TCPE)
                    == r::RXD_STAT_L4CS
                {
                    self.metrics.rx_csum += 1;
                }
                self.metrics.rx_frames += 1;
                self.metrics.rx_bytes += frame.len() as u64;
                rx::Delivery::Delivered
            }
            Ok(other) => other,
            Err(e) => {
                q.stopped = true;
                self.metrics.queue_errors += 1;
                log::warn!("ixgbevf: RX queue 0: {e}; the queue stops until it is set up again");
                rx::Delivery::Unfit
            }
        }
    }

    /// Sends what TX queue `qi` holds between TDH and TDT.
    fn transmit(&mut self, qi: usize) {
        if qi >= QUEUES || !self.state.tx[qi].active() {
            return;
        }
        let link_up = self.state.link_up;
        // The one source address a careful PF lets out: the MAC the VF was granted (the
        // permanent one unless it is trusted and changed it).
        let own_mac = self.state.mailbox.mac;
        let max_frame = self.state.mailbox.max_frame as usize;
        let backend = &mut self.backend;
        let counters = &mut self.state.counters;
        let metrics = &mut self.metrics;
        let mut send = |frame: &[u8]| {
            if !link_up {
                metrics.tx_dropped += 1;
                return;
            }
            if frame.get(6..12) != Some(&own_mac[..]) {
                metrics.tx_spoofed += 1;
                metrics.tx_dropped += 1;
                return;
            }
            match backend.send(frame) {
                Ok(()) => {
                    counters.transmitted(frame.len());
                    metrics.tx_frames += 1;
                    metrics.tx_bytes += frame.len() as u64;
                }
                Err(e) => {
                    metrics.tx_dropped += 1;
                    log::trace!("ixgbevf: backend write failed: {e}");
                }
            }
        };
        let result = tx::process(
            &mut self.state.tx[qi],
            &mut self.state.tx_contexts[qi],
            &self.mem,
            max_frame,
            &mut self.tx,
            &mut send,
        );
        match result {
            Ok(pass) => {
                self.metrics.tx_dropped += u64::from(pass.bad_offloads);
                self.metrics.tx_bad_mss += u64::from(pass.bad_mss);
                self.metrics.tx_csum += u64::from(pass.checksummed);
                if pass.reported {
                    self.raise(Cause::Tx(qi));
                }
            }
            Err(e) => self.stop_tx(qi, e),
        }
    }

    fn stop_tx(&mut self, qi: usize, e: QueueError) {
        self.state.tx[qi].stopped = true;
        self.metrics.queue_errors += 1;
        log::warn!("ixgbevf: TX queue {qi}: {e}; the queue stops until it is set up again");
        // Whatever completed before the error is reported.
        self.raise(Cause::Tx(qi));
    }

    /// Raises `cause` through VTEICR/VTEIMS and MSI-X.
    fn raise(&mut self, cause: Cause) {
        let msix = &mut self.msix;
        self.state.interrupts.raise(cause, &mut |v| msix.notify(v));
    }

    /// Takes the link down or up: VFLINKS, a PF control message, the "other" vector.
    pub fn set_link(&mut self, up: bool) {
        self.state.link_up = up;
        let word = self.state.mailbox.control_word();
        if self.state.mailbox.post(word) {
            self.raise(Cause::Other);
        }
    }

    /// Back to power-on state for a hot-add: a fresh configuration header (BARs unassigned,
    /// decoding off), a fresh MSI-X table on the same lines, reset registers, link up.
    pub fn hot_reset(&mut self) -> Result<(), VfError> {
        self.msix = Msix::new(dup_lines(&self.lines)?, self.vm.clone());
        self.config = self.pristine.clone();
        self.state = DeviceState::new(self.pf.mac);
        Ok(())
    }

    /// A 32-bit register read at `offset` in BAR 0.
    fn read_reg(&mut self, offset: usize) -> u32 {
        let s = &mut self.state;
        let i = &mut s.interrupts;
        match offset {
            r::VFCTRL => 0,
            r::VFSTATUS => VFSTATUS_VALUE,
            r::VFLINKS => links(s.link_up),
            r::VFFRTIMER => 0,
            r::VTEICR => i.read_eicr(),
            r::VTEIMS => i.eims,
            r::VTEIAC => i.eiac,
            r::VTEIAM => i.eiam,
            r::VTEICS | r::VTEIMC => 0,
            o if (r::vtivar(0)..=r::vtivar(3)).contains(&o) => i.ivar[(o - r::vtivar(0)) / 4],
            r::VTIVAR_MISC => i.ivar_misc,
            o if VTRSCINT.contains(&o) => 0,
            o if (r::VFMBMEM..r::VFMBMEM + 4 * r::MBX_WORDS).contains(&o) => {
                s.mailbox.mem[(o - r::VFMBMEM) / 4]
            }
            r::VFMAILBOX => s.mailbox.read_control(),
            r::VFPSRTYPE => s.psrtype,
            o if (r::vteitr(0)..r::vteitr(i.eitr.len())).contains(&o) => {
                i.eitr[(o - r::vteitr(0)) / 4]
            }
            r::VFGPRC => s.counters.gprc,
            r::VFGORC_LSB => s.counters.gorc as u32,
            r::VFGORC_MSB => (s.counters.gorc >> 32) as u32,
            r::VFMPRC => s.counters.mprc,
            r::VFGPTC => s.counters.gptc,
            r::VFGOTC_LSB => s.counters.gotc as u32,
            r::VFGOTC_MSB => (s.counters.gotc >> 32) as u32,
            o if (r::rx_queue(0)..r::rx_queue(r::MAX_QUEUES)).contains(&o) => {
                let q = &s.rx[(o - r::rx_queue(0)) / 0x40];
                match (o - r::rx_queue(0)) % 0x40 {
                    r::Q_BAL => q.bal,
                    r::Q_BAH => q.bah,
                    r::Q_LEN => q.len,
                    r::Q_DCA => q.dca,
                    r::Q_HEAD => q.head,
                    r::RX_SRRCTL => q.srrctl,
                    r::Q_TAIL => q.tail,
                    r::Q_DCTL => q.dctl,
                    r::RX_RSCCTL => q.rscctl,
                    _ => {
                        unknown(&mut self.warned_unknown, "read", o);
                        0
                    }
                }
            }
            o if (r::tx_queue(0)..r::tx_queue(r::MAX_QUEUES)).contains(&o) => {
                let q = &s.tx[(o - r::tx_queue(0)) / 0x40];
                match (o - r::tx_queue(0)) % 0x40 {
                    r::Q_BAL => q.bal,
                    r::Q_BAH => q.bah,
                    r::Q_LEN => q.len,
                    r::Q_DCA => q.dca,
                    r::Q_HEAD => q.head,
                    r::Q_TAIL => q.tail,
                    r::Q_DCTL => q.dctl,
                    r::TX_WBAL => q.wbal,
                    r::TX_WBAH => q.wbah,
                    _ => {
                        unknown(&mut self.warned_unknown, "read", o);
                        0
                    }
                }
            }
            o => {
                unknown(&mut self.warned_unknown, "read", o);
                0
            }
        }
    }

    /// A 32-bit register write at `offset` in BAR 0.
    fn write_reg(&mut self, offset: usize, value: u32) {
        let mut rx_tail_moved = false;
        self.write_reg_inner(offset, value, &mut rx_tail_moved);
        // Free descriptors for a frame that waited for them (and those behind it).
        if rx_tail_moved && self.rx_held.is_some() {
            self.poll_backend();
        }
    }

    fn write_reg_inner(&mut self, offset: usize, value: u32, rx_tail_moved: &mut bool) {
        let msix = &mut self.msix;
        let mut send = |v: u16| msix.notify(v);
        let s = &mut self.state;
        let i = &mut s.interrupts;
        match offset {
            r::VFCTRL => {
                if value & r::VFCTRL_RST != 0 {
                    s.vf_reset(self.pf.mac);
                }
            }
            r::VTEICR => i.write_eicr(value),
            r::VTEICS => i.write_eics(value, &mut send),
            r::VTEIMS => i.write_eims(value, &mut send),
            r::VTEIMC => i.write_eimc(value),
            r::VTEIAC => i.eiac = value & r::EICR_MASK,
            r::VTEIAM => i.eiam = value & r::EICR_MASK,
            o if (r::vtivar(0)..=r::vtivar(3)).contains(&o) => {
                i.ivar[(o - r::vtivar(0)) / 4] = value;
            }
            r::VTIVAR_MISC => i.ivar_misc = value & 0xFF,
            o if (r::VFMBMEM..r::VFMBMEM + 4 * r::MBX_WORDS).contains(&o) => {
                s.mailbox.mem[(o - r::VFMBMEM) / 4] = value;
            }
            r::VFMAILBOX => {
                if s.mailbox.write_control(value, &self.pf) {
                    i.raise(Cause::Other, &mut send);
                }
            }
            r::VFPSRTYPE => s.psrtype = value,
            o if (r::vteitr(0)..r::vteitr(i.eitr.len())).contains(&o) => {
                i.eitr[(o - r::vteitr(0)) / 4] = value;
            }
            // Read-only registers.
            r::VFSTATUS | r::VFLINKS | r::VFFRTIMER => {}
            r::VFGPRC | r::VFGORC_LSB | r::VFGORC_MSB | r::VFMPRC => {}
            r::VFGPTC | r::VFGOTC_LSB | r::VFGOTC_MSB => {}
            o if VTRSCINT.contains(&o) => {}
            o if (r::rx_queue(0)..r::rx_queue(r::MAX_QUEUES)).contains(&o) => {
                let q = &mut s.rx[(o - r::rx_queue(0)) / 0x40];
                match (o - r::rx_queue(0)) % 0x40 {
                    r::Q_BAL => q.bal = value,
                    r::Q_BAH => q.bah = value,
                    r::Q_LEN => q.len = value,
                    r::Q_DCA => q.dca = value,
                    r::Q_HEAD => q.head = value & 0xFFFF,
                    r::RX_SRRCTL => q.srrctl = value,
                    r::Q_TAIL => {
                        q.tail = value & 0xFFFF;
                        *rx_tail_moved = true;
                    }
                    r::Q_DCTL => {
                        q.dctl = value;
                        q.stopped = false;
                    }
                    r::RX_RSCCTL => q.rscctl = value,
                    _ => unknown(&mut self.warned_unknown, "write", o),
                }
            }
            o if (r::tx_queue(0)..r::tx_queue(r::MAX_QUEUES)).contains(&o) => {
                let qi = (o - r::tx_queue(0)) / 0x40;
                let q = &mut s.tx[qi];
                match (o - r::tx_queue(0)) % 0x40 {
                    r::Q_BAL => q.bal = value,
                    r::Q_BAH => q.bah = value,
                    r::Q_LEN => q.len = value,
                    r::Q_DCA => q.dca = value,
                    r::Q_HEAD => q.head = value & 0xFFFF,
                    r::Q_TAIL => {
                        q.tail = value & 0xFFFF;
                        self.transmit(qi);
                    }
                    r::Q_DCTL => {
                        // SWFLSH self-clears; an enable may find packets already queued.
                        q.dctl = value & !r::TXDCTL_SWFLSH;
                        q.stopped = false;
                        self.transmit(qi);
                    }
                    r::TX_WBAL => q.wbal = value,
                    r::TX_WBAH => q.wbah = value,
                    _ => unknown(&mut self.warned_unknown, "write", o),
                }
            }
            o => unknown(&mut self.warned_unknown, "write", o),
        }
    }

    fn read_regs_bar(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(offset) = usize::try_from(offset) else {
            data.fill(0xFF);
            return;
        };
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
            }
            8 if offset.is_multiple_of(8) => {
                let lo = self.read_reg(offset);
                let hi = self.read_reg(offset + 4);
                data.copy_from_slice(&(u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes());
            }
            // Narrow reads inside one register see its bytes (with its read side effects).
            1 | 2 if offset % 4 + data.len() <= 4 => {
                let word = self.read_reg(offset & !3).to_le_bytes();
                let at = offset % 4;
                data.copy_from_slice(&word[at..at + data.len()]);
            }
            _ => data.fill(0),
        }
    }

    fn write_regs_bar(&mut self, offset: u64, data: &[u8]) {
        let Ok(offset) = usize::try_from(offset) else {
            return;
        };
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                self.write_reg(
                    offset,
                    u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
                );
            }
            8 if offset.is_multiple_of(8) => {
                let v = u64::from_le_bytes([
                    data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7],
                ]);
                self.write_reg(offset, v as u32);
                self.write_reg(offset + 4, (v >> 32) as u32);
            }
            // Registers are 32-bit; narrower writes are ignored.
            _ => unknown(&mut self.warned_unknown, "narrow write", offset),
        }
    }
}

impl<B: NetBackend> Persist for Ixgbevf<B> {
    type State = IxgbevfState;

    /// A VF the guest released before the move needs none on this side.
    fn needed(state: &IxgbevfState) -> bool {
        state.present
    }

    /// The source had no VF (or detached it): this one starts unplugged, its slot left
    /// empty by the bus restore; the arrival plugs it in once the guest runs here.
    fn absent_at_source(&mut self) -> bool {
        self.present = false;
        true
    }

    /// The VF's state for migration (call with the vCPUs stopped and the I/O thread paused).
    fn save(&self) -> IxgbevfState {
        IxgbevfState {
            mac: self.pf.mac,
            trusted: self.pf.trusted,
            present: self.present,
            config: self.config.save_state(),
            msix: self.msix.save_state(),
            regs: self.state.clone(),
        }
    }

    /// Applies a saved state to this freshly built VF: MAC and trust must match, the header
    /// must be this device's, the MSI-X table its size, and the registers pass
    /// [`DeviceState::check`]; an invalid state changes nothing. MSI-X routes follow the
    /// restored table.
    fn restore(&mut self, state: IxgbevfState) -> Result<(), DeviceStateError> {
        const DEV: &str = "ixgbevf";
        if state.mac != self.pf.mac {
            return Err(DeviceStateError::mismatch(
                DEV,
                "MAC",
                format!("{:02x?}, this VF has {:02x?}", state.mac, self.pf.mac),
            ));
        }
        if state.trusted != self.pf.trusted {
            return Err(DeviceStateError::mismatch(DEV, "trust", "differs"));
        }
        // The fresh header, not the current one: a removed VF's header is all it had.
        let config = self.pristine.check_state(&state.config, DEV)?;
        self.msix.check_state(&state.msix, DEV)?;
        let control = config.read_u16(self.msix_cap + 2)
            & (msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK);
        let wanted = state.msix.control_bits();
        if control != wanted {
            return Err(DeviceStateError::invalid(
                DEV,
                "MSI-X control",
                "the header and the table disagree on enable or mask",
            ));
        }
        state.regs.check(self.pf.trusted)?;
        self.config = config;
        self.msix.restore_state(&state.msix);
        self.present = state.present;
        self.state = state.regs;
        Ok(())
    }
}

impl<B: NetBackend> PciDevice for Ixgbevf<B> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_cap + 2;
        if offset < control + 2 && offset + data.len() > control {
            let value = self.config.read_u16(control);
            self.msix.set_control(value);
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match u8::try_from(bar) {
            Ok(r::REGS_BAR) => self.read_regs_bar(offset, data),
            Ok(r::MSIX_BAR) if offset < r::MSIX_PBA_OFFSET => self.msix.read_table(offset, data),
            Ok(r::MSIX_BAR) => self.msix.read_pba(offset - r::MSIX_PBA_OFFSET, data),
            _ => data.fill(0xFF),
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match u8::try_from(bar) {
            Ok(r::REGS_BAR) => self.write_regs_bar(offset, data),
            Ok(r::MSIX_BAR) if offset < r::MSIX_PBA_OFFSET => self.msix.write_table(offset, data),
            _ => {}
        }
    }
}

/// VFLINKS: up or down, always 10 Gb/s.
fn links(up: bool) -> u32 {
    let up = if up { r::VFLINKS_UP } else { 0 };
    up | r::VFLINKS_SPEED_10G
}

/// Reports the first access to a register the model does not know (reads give 0, writes are
/// ignored): once per device, so a driver cannot flood the log.
fn unknown(warned: &mut bool, what: &str, offset: usize) {
    if !*warned {
        *warned = true;
        log::debug!("ixgbevf: {what} of unknown register {offset:#x} (reported once)");
    }
}
