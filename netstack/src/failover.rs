//! [`Failover`]: one [`NetDevice`] over two NICs that share one MAC address, an SR-IOV
//! virtual function (the VF, `V`) and a virtio-net card (`W`), so that one smoltcp
//! `Interface` keeps its address, ARP cache and TCP connections while traffic moves
//! between them.
//!
//! # Data path
//!
//! - **Transmit** goes through the *active* NIC only.
//! - **Receive** takes frames from both NICs: after a switch, frames keep arriving on the old
//!   NIC until the network has learnt the new port, and they are accepted. The inactive NIC
//!   is asked first. It carries only those stragglers and broadcasts (we send only through
//!   the active NIC, so a learning switch sends our unicast there), so this cannot starve the
//!   active NIC, it hands the stack the older frames first (TCP sees fewer reorderings across
//!   a switch), and [`NetDevice::receive`] loops until both are empty, so both are drained on
//!   every poll.
//! - The **reply** token of a frame that came from the inactive NIC transmits on the active
//!   one (it takes the active NIC's transmit buffer only when a reply is actually built).
//! - Per frame this costs a branch on the active NIC and one empty receive on the other NIC:
//!   no allocation, no logging.
//! - **Checksums** are decided per frame, by the NIC that carries it, never per interface:
//!   a received frame says whether its own NIC vouched for its TCP checksum
//!   (`RxToken::checksum_valid`), a transmit token whether its own NIC completes it
//!   (`TxToken::checksum_offload`; a reply token asks the active NIC, which sends it). So a
//!   frame is checked or summed in software exactly when the NIC it crosses did not, on
//!   either NIC and across a switch (`Stack` does the software part).
//!
//! # MAC address
//!
//! The interface's MAC is virtio-net's when it is present, else the VF's. The kernel must
//! configure the VF with that address (the mailbox's SET_MAC_ADDR) before handing it over:
//! a VF filters unicast by its own MAC, so with another one it would not see our traffic.
//! A mismatch is logged as a warning.
//!
//! # Policy: which NIC is active
//!
//! A NIC is *usable* when it is present and its link is up.
//! - The VF is preferred: it is active whenever it is usable, unless the operator pinned
//!   virtio-net.
//! - [`Failover::switch_to`]`(Nic::Virtio)` pins virtio-net: traffic stays there, even once
//!   the VF is usable, until [`Failover::switch_to`]`(Nic::Vf)` lifts the pin. (This is how
//!   traffic leaves the VF before a migration.) If virtio-net itself becomes unusable while
//!   the VF is usable, traffic goes to the VF rather than nowhere, and returns to virtio-net
//!   when its link is back, because the pin stays.
//! - Automatic failover: when the VF's link goes down or the VF is removed, traffic moves to
//!   virtio-net; when the VF is usable again (link up, or re-added with
//!   [`Failover::set_vf`]), traffic returns to the VF unless virtio-net is pinned.
//! - When no NIC is usable the active one stays where it was while it is present (or falls
//!   to whichever is present), so a link flap on both does not count switches. There is no
//!   active NIC only when none is present.
//! - An explicit switch to a NIC that is absent or whose link is down is refused with a
//!   [`SwitchError`] and changes nothing.
//!
//! Link changes are seen only when someone calls [`Failover::check`] (cheap: one link read
//! per NIC), after the devices' interrupts or on a timer. [`Failover::switches`] counts
//! every change of active NIC, explicit or automatic, including to and from none. Switches
//! are logged at `info`.
//!
//! This type only chooses the NIC; it sends nothing itself. The gratuitous ARP that every
//! switch needs comes from `Stack<Failover<_, _>>`'s `switch_nic`, `check_failover` and
//! `set_vf`, which the kernel calls instead of the methods here. TCP state is never touched.

use agent_proto::{Nic, NicStatus, SwitchError};
use drivers::net::{Capabilities, Events, MacAddress, NetDevice, RxToken, Stats, TxToken};

/// Frame size assumed when no NIC is present at construction (a 1500-byte MTU).
const DEFAULT_MAX_FRAME_LEN: usize = 1514;

/// The outcome of a switch: the active NIC before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switched {
    /// The NIC that was active (`None`: there was none).
    pub from: Option<Nic>,
    /// The NIC that is active now.
    pub to: Nic,
}

impl Switched {
    /// Whether the active NIC changed (an explicit switch to the active NIC changes nothing).
    pub fn changed(&self) -> bool {
        self.from != Some(self.to)
    }
}

/// The VF and virtio-net under one MAC address, as one [`NetDevice`] (see the module docs
/// for the data path and the switching policy).
#[derive(Debug)]
pub struct Failover<V, W> {
    vf: Option<V>,
    virtio: Option<W>,
    mac: MacAddress,
    caps: Capabilities,
    active: Option<Nic>,
    /// The operator chose virtio-net: stay there while it is usable.
    pinned_virtio: bool,
    switches: u64,
    /// What the VFs replaced by [`Failover::set_vf`] had counted, so the VF's counters
    /// survive removal and re-addition.
    retired_vf: Stats,
    /// Per NIC (`[vf, virtio]`): replies to frames from the other NIC that found no
    /// transmit buffer here.
    reply_dropped: [u64; 2],
}

impl<V: NetDevice, W: NetDevice> Failover<V, W> {
    /// Both NICs, either of which may be missing. The MAC address and the capabilities are
    /// fixed here from the NICs present (smaller frame and burst limits win); a VF added
    /// later is expected to carry the same frames. The VF is active if it is usable, else
    /// virtio-net if present, else the VF if present; this first choice is not a switch.
    pub fn new(vf: Option<V>, virtio: Option<W>) -> Failover<V, W> {
        let mac = virtio
            .as_ref()
            .map(NetDevice::mac_address)
            .or(vf.as_ref().map(NetDevice::mac_address))
            .unwrap_or_default();
        let caps = [
            vf.as_ref().map(NetDevice::capabilities),
            virtio.as_ref().map(NetDevice::capabilities),
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| Capabilities {
            max_frame_len: a.max_frame_len.min(b.max_frame_len),
            max_burst: match (a.max_burst, b.max_burst) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
            // Per frame, each token says whether its own NIC does it.
            tx_checksum: a.tx_checksum && b.tx_checksum,
        })
        .unwrap_or(Capabilities {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_burst: None,
            tx_checksum: false,
        });
        let mut failover = Failover {
            vf,
            virtio,
            mac,
            caps,
            active: None,
            pinned_virtio: false,
            switches: 0,
            retired_vf: Stats::default(),
            reply_dropped: [0; 2],
        };
        failover.warn_on_vf_mac();
        failover.active = failover.preferred();
        log::info!(
            "net: failover MAC {mac}, vf {}, virtio {}, active {}",
            present(failover.vf.is_some()),
            present(failover.virtio.is_some()),
            name(failover.active)
        );
        failover
    }

    /// The NIC that transmits (`None` only when no NIC is present).
    pub fn active(&self) -> Option<Nic> {
        self.active
    }

    /// Whether the operator pinned virtio-net (see the module docs).
    pub fn pinned_virtio(&self) -> bool {
        self.pinned_virtio
    }

    /// Makes `nic` the active NIC on the operator's command: `Nic::Virtio` pins virtio-net,
    /// `Nic::Vf` lifts the pin. Refuses a NIC that is absent or whose link is down, changing
    /// nothing. Switching to the active NIC succeeds without a change (only the pin is set).
    /// Send a gratuitous ARP after a change: `Stack::switch_nic` does both.
    pub fn switch_to(&mut self, nic: Nic) -> Result<Switched, SwitchError> {
        match self.link(nic) {
            None => return Err(SwitchError::NotPresent),
            Some(false) => return Err(SwitchError::LinkDown),
            Some(true) => {}
        }
        self.pinned_virtio = nic == Nic::Virtio;
        let from = self.active;
        if from != Some(nic) {
            self.set_active(Some(nic), "operator");
        }
        Ok(Switched { from, to: nic })
    }

    /// Lifts the operator's virtio-net pin and applies the policy at once (after a move, the
    /// VF is preferred again, now or once its link comes up). Returns the switch, if one
    /// happened. `Stack::unpin_virtio` also announces it.
    pub fn unpin_virtio(&mut self) -> Option<Switched> {
        self.pinned_virtio = false;
        self.check()
    }

    /// Automatic failover: re-reads both links and moves traffic where the policy says.
    /// Cheap (one link read per NIC); call it after link interrupts or on a timer. Returns
    /// the switch, if one happened. `Stack::check_failover` also announces it.
    pub fn check(&mut self) -> Option<Switched> {
        let want = self.preferred();
        let from = self.active;
        if want == from {
            return None;
        }
        self.set_active(want, "link change");
        want.map(|to| Switched { from, to })
    }

    /// Installs (`Some`) or removes (`None`) the VF and returns the one it replaces, whose
    /// counters are kept in the VF's. Give it a freshly probed device (counters at zero)
    /// configured with [`NetDevice::mac_address`] of this failover. The active NIC is chosen
    /// again at once: a removed VF stops transmitting now, and a usable re-added one takes
    /// the traffic back unless virtio-net is pinned. `Stack::set_vf` also announces.
    pub fn set_vf(&mut self, vf: Option<V>) -> Option<V> {
        let adding = vf.is_some();
        let old = core::mem::replace(&mut self.vf, vf);
        if let Some(old) = &old {
            self.retired_vf = add(self.retired_vf, old.stats());
        }
        self.warn_on_vf_mac();
        let want = self.preferred();
        if want != self.active {
            self.set_active(want, if adding { "VF added" } else { "VF removed" });
        }
        old
    }

    /// Removes the VF (hot-unplug) and returns it: `set_vf(None)`.
    pub fn take_vf(&mut self) -> Option<V> {
        self.set_vf(None)
    }

    /// The VF, if present.
    pub fn vf(&self) -> Option<&V> {
        self.vf.as_ref()
    }

    /// The VF, mutably (for its own maintenance: link checks, mailbox, removal detection).
    pub fn vf_mut(&mut self) -> Option<&mut V> {
        self.vf.as_mut()
    }

    /// The virtio-net card, if present.
    pub fn virtio(&self) -> Option<&W> {
        self.virtio.as_ref()
    }

    /// The virtio-net card, mutably.
    pub fn virtio_mut(&mut self) -> Option<&mut W> {
        self.virtio.as_mut()
    }

    /// One NIC's presence, link and counters. The VF's counters include those of VFs it
    /// replaced; `tx_dropped` includes replies the NIC had no buffer for.
    pub fn counters(&self, nic: Nic) -> NicStatus {
        match nic {
            Nic::Vf => nic_counters(self.vf.as_ref(), self.retired_vf, self.reply_dropped[0]),
            Nic::Virtio => nic_counters(
                self.virtio.as_ref(),
                Stats::default(),
                self.reply_dropped[1],
            ),
        }
    }

    /// How many times the active NIC changed, explicitly or automatically.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Whether `nic` is present, and if so whether its link is up.
    fn link(&self, nic: Nic) -> Option<bool> {
        match nic {
            Nic::Vf => self.vf.as_ref().map(NetDevice::link_up),
            Nic::Virtio => self.virtio.as_ref().map(NetDevice::link_up),
        }
    }

    /// The NIC the policy wants active now.
    fn preferred(&self) -> Option<Nic> {
        let vf = self.link(Nic::Vf);
        let virtio = self.link(Nic::Virtio);
        let vf_up = vf == Some(true);
        let virtio_up = virtio == Some(true);
        if vf_up && !(self.pinned_virtio && virtio_up) {
            return Some(Nic::Vf);
        }
        if virtio_up {
            return Some(Nic::Virtio);
        }
        // Nothing usable: stay while the active NIC is there, else take what is there.
        match self.active {
            Some(nic) if self.link(nic).is_some() => Some(nic),
            _ if vf.is_some() => Some(Nic::Vf),
            _ if virtio.is_some() => Some(Nic::Virtio),
            _ => None,
        }
    }

    fn set_active(&mut self, to: Option<Nic>, why: &str) {
        log::info!(
            "net: active NIC {} -> {} ({why})",
            name(self.active),
            name(to)
        );
        self.active = to;
        self.switches = self.switches.saturating_add(1);
    }

    fn warn_on_vf_mac(&self) {
        if let Some(vf) = &self.vf
            && vf.mac_address() != self.mac
        {
            log::warn!(
                "net: the VF's MAC {} is not the interface's {}: it will not receive our traffic",
                vf.mac_address(),
                self.mac
            );
        }
    }
}

/// `present` or `absent`, for the construction log line.
fn present(yes: bool) -> &'static str {
    if yes { "present" } else { "absent" }
}

/// A NIC's name, or `none`.
fn name(nic: Option<Nic>) -> &'static str {
    nic.map_or("none", Nic::name)
}

fn add(a: Stats, b: Stats) -> Stats {
    Stats {
        rx_frames: a.rx_frames.saturating_add(b.rx_frames),
        tx_frames: a.tx_frames.saturating_add(b.tx_frames),
        rx_errors: a.rx_errors.saturating_add(b.rx_errors),
        tx_dropped: a.tx_dropped.saturating_add(b.tx_dropped),
    }
}

fn nic_counters<D: NetDevice>(device: Option<&D>, base: Stats, reply_dropped: u64) -> NicStatus {
    let s = add(base, device.map_or(Stats::default(), NetDevice::stats));
    NicStatus {
        present: device.is_some(),
        link_up: device.is_some_and(NetDevice::link_up),
        rx: s.rx_frames,
        tx: s.tx_frames,
        rx_errors: s.rx_errors,
        tx_dropped: s.tx_dropped.saturating_add(reply_dropped),
    }
}

/// A received frame from either NIC.
pub enum FailoverRx<'a, V: NetDevice + 'a, W: NetDevice + 'a> {
    /// From the VF.
    Vf(V::RxToken<'a>),
    /// From virtio-net.
    Virtio(W::RxToken<'a>),
}

impl<'a, V: NetDevice + 'a, W: NetDevice + 'a> RxToken for FailoverRx<'a, V, W> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            FailoverRx::Vf(token) => token.consume(f),
            FailoverRx::Virtio(token) => token.consume(f),
        }
    }

    /// What the NIC the frame came from says.
    fn checksum_valid(&self) -> bool {
        match self {
            FailoverRx::Vf(token) => token.checksum_valid(),
            FailoverRx::Virtio(token) => token.checksum_valid(),
        }
    }
}

/// The right to send one frame, always on the NIC that was active when it was handed out.
pub enum FailoverTx<'a, V: NetDevice + 'a, W: NetDevice + 'a> {
    /// The VF's own token (transmit, or a reply to a frame from the VF).
    Vf(V::TxToken<'a>),
    /// virtio-net's own token.
    Virtio(W::TxToken<'a>),
    /// A reply, through the VF, to a frame from virtio-net.
    ReplyVf(Reply<'a, V>),
    /// A reply, through virtio-net, to a frame from the VF.
    ReplyVirtio(Reply<'a, W>),
}

impl<'a, V: NetDevice + 'a, W: NetDevice + 'a> TxToken for FailoverTx<'a, V, W> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self {
            FailoverTx::Vf(token) => token.consume(len, f),
            FailoverTx::Virtio(token) => token.consume(len, f),
            FailoverTx::ReplyVf(reply) => reply.consume(len, f),
            FailoverTx::ReplyVirtio(reply) => reply.consume(len, f),
        }
    }

    /// What the NIC that will send the frame says (the active one for a reply).
    fn checksum_offload(&self) -> bool {
        match self {
            FailoverTx::Vf(token) => token.checksum_offload(),
            FailoverTx::Virtio(token) => token.checksum_offload(),
            FailoverTx::ReplyVf(reply) => reply.checksum_offload(),
            FailoverTx::ReplyVirtio(reply) => reply.checksum_offload(),
        }
    }
}

/// A reply on the active NIC to a frame that came from the other one: the active NIC's
/// transmit buffer is taken only when the reply is built.
pub struct Reply<'a, D> {
    device: &'a mut D,
    dropped: &'a mut u64,
}

impl<D: NetDevice> TxToken for Reply<'_, D> {
    /// The sending NIC's capability (its token is taken only in `consume`).
    fn checksum_offload(&self) -> bool {
        self.device.capabilities().tx_checksum
    }

    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.device.transmit() {
            Some(token) => token.consume(len, f),
            None => {
                // No buffer: the reply is built (the token's contract) and dropped, as the
                // drivers do on their own drop path.
                *self.dropped = self.dropped.saturating_add(1);
                f(&mut alloc::vec![0; len])
            }
        }
    }
}

impl<V: NetDevice, W: NetDevice> NetDevice for Failover<V, W> {
    type RxToken<'a>
        = FailoverRx<'a, V, W>
    where
        Self: 'a;
    type TxToken<'a>
        = FailoverTx<'a, V, W>
    where
        Self: 'a;

    fn mac_address(&self) -> MacAddress {
        self.mac
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The active NIC's link (down when there is none).
    fn link_up(&self) -> bool {
        self.active.and_then(|nic| self.link(nic)) == Some(true)
    }

    fn receive(&mut self) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // The inactive NIC first (see the module docs). Asking it first also keeps the
        // active NIC unborrowed for the reply token.
        let [vf_dropped, virtio_dropped] = &mut self.reply_dropped;
        match self.active? {
            Nic::Vf => {
                if let Some(virtio) = self.virtio.as_mut()
                    && let Some((rx, _)) = virtio.receive()
                {
                    let reply = Reply {
                        device: self.vf.as_mut()?,
                        dropped: vf_dropped,
                    };
                    return Some((FailoverRx::Virtio(rx), FailoverTx::ReplyVf(reply)));
                }
                let (rx, tx) = self.vf.as_mut()?.receive()?;
                Some((FailoverRx::Vf(rx), FailoverTx::Vf(tx)))
            }
            Nic::Virtio => {
                if let Some(vf) = self.vf.as_mut()
                    && let Some((rx, _)) = vf.receive()
                {
                    let reply = Reply {
                        device: self.virtio.as_mut()?,
                        dropped: virtio_dropped,
                    };
                    return Some((FailoverRx::Vf(rx), FailoverTx::ReplyVirtio(reply)));
                }
                let (rx, tx) = self.virtio.as_mut()?.receive()?;
                Some((FailoverRx::Virtio(rx), FailoverTx::Virtio(tx)))
            }
        }
    }

    fn transmit(&mut self) -> Option<Self::TxToken<'_>> {
        match self.active? {
            Nic::Vf => self.vf.as_mut()?.transmit().map(FailoverTx::Vf),
            Nic::Virtio => self.virtio.as_mut()?.transmit().map(FailoverTx::Virtio),
        }
    }

    /// Acknowledges both NICs' interrupts and merges what they signalled.
    fn ack_interrupt(&mut self) -> Events {
        let vf = self.vf.as_mut().map(NetDevice::ack_interrupt);
        let virtio = self.virtio.as_mut().map(NetDevice::ack_interrupt);
        let (a, b) = (vf.unwrap_or_default(), virtio.unwrap_or_default());
        Events {
            queue: a.queue || b.queue,
            config: a.config || b.config,
        }
    }

    /// Both NICs' counters added up.
    fn stats(&self) -> Stats {
        let (a, b) = (self.counters(Nic::Vf), self.counters(Nic::Virtio));
        Stats {
            rx_frames: a.rx.saturating_add(b.rx),
            tx_frames: a.tx.saturating_add(b.tx),
            rx_errors: a.rx_errors.saturating_add(b.rx_errors),
            tx_dropped: a.tx_dropped.saturating_add(b.tx_dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drivers::net::memory::{self, MemoryNic};

    const VF_MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0, 0, 0x0f]);
    const VIRTIO_MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0, 0, 0x01]);
    const PEER: MacAddress = MacAddress([0x52, 0x54, 0, 0, 0, 0xee]);

    /// A failover and the far ends of its two links (`[vf, virtio]`); the VF has been
    /// given virtio-net's MAC, as the kernel does.
    fn failover(vf: bool, virtio: bool) -> (Failover<MemoryNic, MemoryNic>, [MemoryNic; 2]) {
        let (v, vf_peer) = memory::pair(VIRTIO_MAC, PEER);
        let (w, virtio_peer) = memory::pair(VIRTIO_MAC, PEER);
        (
            Failover::new(vf.then_some(v), virtio.then_some(w)),
            [vf_peer, virtio_peer],
        )
    }

    fn send(nic: &mut MemoryNic, byte: u8) {
        nic.transmit().unwrap().consume(4, |b| b.fill(byte));
    }

    #[test]
    fn mac_is_virtio_s_else_the_vf_s() {
        let (vf, _) = memory::pair(VF_MAC, PEER);
        let (virtio, _) = memory::pair(VIRTIO_MAC, PEER);
        let both = Failover::new(Some(vf), Some(virtio));
        assert_eq!(both.mac_address(), VIRTIO_MAC);
        let (vf, _) = memory::pair(VF_MAC, PEER);
        let only_vf = Failover::<_, MemoryNic>::new(Some(vf), None);
        assert_eq!(only_vf.mac_address(), VF_MAC);
        assert_eq!(only_vf.capabilities().max_frame_len, 1514);
    }

    #[test]
    fn nothing_present_is_inert() {
        let mut f = Failover::<MemoryNic, MemoryNic>::new(None, None);
        assert_eq!(f.active(), None);
        assert!(!f.link_up());
        assert!(f.receive().is_none());
        assert!(f.transmit().is_none());
        assert_eq!(f.check(), None);
        assert_eq!(f.switch_to(Nic::Vf), Err(SwitchError::NotPresent));
        assert_eq!(f.counters(Nic::Virtio), NicStatus::default());
    }

    #[test]
    fn vf_is_preferred_and_explicit_virtio_pins() {
        let (mut f, [vf_peer, virtio_peer]) = failover(true, true);
        assert_eq!(f.active(), Some(Nic::Vf));
        assert_eq!(f.switches(), 0, "the first choice is not a switch");

        let s = f.switch_to(Nic::Virtio).unwrap();
        assert_eq!(
            s,
            Switched {
                from: Some(Nic::Vf),
                to: Nic::Virtio
            }
        );
        assert!(s.changed() && f.pinned_virtio());
        // A VF link flap does not take traffic off pinned virtio-net.
        vf_peer.set_link(false);
        assert_eq!(f.check(), None);
        vf_peer.set_link(true);
        assert_eq!(f.check(), None);
        assert_eq!(f.active(), Some(Nic::Virtio));
        // Pinned virtio-net going down: the VF carries traffic meanwhile, then it goes back.
        virtio_peer.set_link(false);
        assert_eq!(f.check().map(|s| s.to), Some(Nic::Vf));
        virtio_peer.set_link(true);
        assert_eq!(f.check().map(|s| s.to), Some(Nic::Virtio));
        // Switching to the active NIC changes nothing.
        let s = f.switch_to(Nic::Virtio).unwrap();
        assert!(!s.changed());
        assert_eq!(f.switches(), 3);
        // "switch vf" lifts the pin: from now on the VF comes back by itself.
        assert!(f.switch_to(Nic::Vf).unwrap().changed());
        assert!(!f.pinned_virtio());
        vf_peer.set_link(false);
        assert_eq!(f.check().map(|s| s.to), Some(Nic::Virtio));
        assert!(!f.pinned_virtio(), "automatic failover does not pin");
        vf_peer.set_link(true);
        assert_eq!(f.check().map(|s| s.to), Some(Nic::Vf));
        assert_eq!(f.switches(), 6);
    }

    #[test]
    fn refused_switches_change_nothing() {
        let (mut f, [vf_peer, virtio_peer]) = failover(true, true);
        virtio_peer.set_link(false);
        assert_eq!(f.switch_to(Nic::Virtio), Err(SwitchError::LinkDown));
        assert_eq!(
            (f.active(), f.switches(), f.pinned_virtio()),
            (Some(Nic::Vf), 0, false)
        );
        virtio_peer.set_link(true);
        vf_peer.set_link(false);
        assert_eq!(f.check().map(|s| s.to), Some(Nic::Virtio));
        assert_eq!(f.switch_to(Nic::Vf), Err(SwitchError::LinkDown));
        assert!(f.take_vf().is_some());
        assert_eq!(f.switch_to(Nic::Vf), Err(SwitchError::NotPresent));
        assert_eq!(f.active(), Some(Nic::Virtio));
    }

    #[test]
    fn removal_and_re_addition() {
        let (mut f, [_vf_peer, _]) = failover(true, true);
        // A VF that finds itself removed reports link down: automatic failover.
        f.vf_mut().unwrap().set_removed(true);
        assert!(f.counters(Nic::Vf).present && !f.counters(Nic::Vf).link_up);
        assert_eq!(f.check().map(|s| s.to), Some(Nic::Virtio));
        let vf = f.take_vf().unwrap();
        assert!(!f.counters(Nic::Vf).present);
        assert_eq!(f.switches(), 1, "taking an inactive VF is no switch");
        vf.set_removed(false);
        assert!(f.set_vf(Some(vf)).is_none());
        assert_eq!(f.active(), Some(Nic::Vf), "a usable VF takes traffic back");
        // Taking the active VF switches at once.
        assert!(f.take_vf().is_some());
        assert_eq!(f.active(), Some(Nic::Virtio));
        assert_eq!(f.switches(), 3);
    }

    #[test]
    fn single_nic_stays_active_through_link_down() {
        let (mut f, [vf_peer, _]) = failover(true, false);
        assert_eq!(f.active(), Some(Nic::Vf));
        vf_peer.set_link(false);
        assert_eq!(f.check(), None);
        assert_eq!(f.active(), Some(Nic::Vf));
        assert!(!f.link_up());
        assert!(f.take_vf().is_some());
        assert_eq!((f.active(), f.switches()), (None, 1));

        let (mut f, [_, virtio_peer]) = failover(false, true);
        assert_eq!(f.active(), Some(Nic::Virtio));
        assert_eq!(f.switch_to(Nic::Vf), Err(SwitchError::NotPresent));
        virtio_peer.set_link(false);
        assert_eq!(f.check(), None);
        assert!(!f.link_up());
    }

    #[test]
    fn frames_from_both_nics_replies_on_the_active_one() {
        let (mut f, [mut vf_peer, mut virtio_peer]) = failover(true, true);
        send(&mut vf_peer, 1);
        send(&mut virtio_peer, 2);
        send(&mut vf_peer, 3);
        let mut got = Vec::new();
        while let Some((rx, tx)) = f.receive() {
            let byte = rx.consume(|frame| frame[0]);
            got.push(byte);
            tx.consume(4, |b| b.fill(byte + 100));
        }
        // The inactive NIC (virtio-net) is drained first; every reply leaves on the VF.
        assert_eq!(got, [2, 1, 3]);
        assert_eq!(virtio_peer.waiting(), 0);
        assert_eq!(vf_peer.waiting(), 3);
        let vf = f.counters(Nic::Vf);
        let virtio = f.counters(Nic::Virtio);
        assert_eq!((vf.rx, vf.tx, virtio.rx, virtio.tx), (2, 3, 1, 0));
        let total = f.stats();
        assert_eq!((total.rx_frames, total.tx_frames), (3, 3));

        // After a switch, plain transmissions go through virtio-net only.
        f.switch_to(Nic::Virtio).unwrap();
        f.transmit().unwrap().consume(4, |b| b.fill(9));
        assert_eq!((vf_peer.waiting(), virtio_peer.waiting()), (3, 1));
        assert!(f.link_up());
    }

    #[test]
    fn interrupts_reach_both_nics() {
        let (mut f, _) = failover(true, true);
        let queue = Events {
            queue: true,
            config: false,
        };
        let config = Events {
            queue: false,
            config: true,
        };
        f.vf().unwrap().raise_interrupt(config);
        f.virtio().unwrap().raise_interrupt(queue);
        assert_eq!(
            f.ack_interrupt(),
            Events {
                queue: true,
                config: true
            }
        );
        assert_eq!(f.ack_interrupt(), Events::default(), "both acknowledged");
    }

    #[test]
    fn vf_counters_survive_re_addition() {
        let (mut f, [mut vf_peer, _]) = failover(true, true);
        send(&mut vf_peer, 1);
        let (rx, tx) = f.receive().unwrap();
        rx.consume(|_| ());
        tx.consume(4, |b| b.fill(0));
        f.vf().unwrap().set_link(false);
        f.transmit().unwrap().consume(4, |b| b.fill(0));
        let before = f.counters(Nic::Vf);
        assert_eq!((before.rx, before.tx, before.tx_dropped), (1, 1, 1));
        f.take_vf();
        let (fresh, _) = memory::pair(VIRTIO_MAC, PEER);
        f.set_vf(Some(fresh));
        let after = f.counters(Nic::Vf);
        assert_eq!(
            after,
            NicStatus {
                present: true,
                link_up: true,
                ..before
            }
        );
    }

    /// Random link, removal and switch events against the policy's invariants.
    #[test]
    fn policy_invariants_under_random_events() {
        let (mut f, [vf_peer, virtio_peer]) = failover(true, true);
        let mut spare_vf = None;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let (active, switches) = (f.active(), f.switches());
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 7 {
                0 => vf_peer.set_link(seed & 8 != 0),
                1 => virtio_peer.set_link(seed & 8 != 0),
                2 => {
                    if let Some(vf) = f.take_vf() {
                        spare_vf = Some(vf);
                    }
                }
                3 => {
                    if let Some(vf) = spare_vf.take() {
                        f.set_vf(Some(vf));
                    }
                }
                4 => {
                    let nic = if seed & 8 != 0 { Nic::Vf } else { Nic::Virtio };
                    let usable = f.counters(nic).link_up;
                    let r = f.switch_to(nic);
                    assert_eq!(r.is_ok(), usable);
                    if r.is_ok() {
                        assert_eq!(f.active(), Some(nic));
                    }
                }
                _ => {
                    f.check();
                }
            }
            // Every change of active NIC is counted, and nothing else.
            assert_eq!(f.switches() - switches, u64::from(f.active() != active));
            let vf = f.counters(Nic::Vf);
            let virtio = f.counters(Nic::Virtio);
            // There is an active NIC exactly when one is present, and it is present.
            assert_eq!(f.active().is_some(), vf.present || virtio.present);
            if let Some(nic) = f.active() {
                assert!(f.counters(nic).present);
            }
            // After a check, a usable NIC is active whenever there is one, and the VF
            // whenever it is usable and virtio-net is not pinned and usable.
            let (active, switches) = (f.active(), f.switches());
            let switched = f.check();
            if let Some(s) = switched {
                assert_eq!((s.from, Some(s.to)), (active, f.active()));
            }
            assert_eq!(f.switches() - switches, u64::from(f.active() != active));
            if vf.link_up || virtio.link_up {
                assert!(f.link_up());
            }
            if vf.link_up && !(f.pinned_virtio() && virtio.link_up) {
                assert_eq!(f.active(), Some(Nic::Vf));
            }
        }
        assert!(f.switches() > 100, "switched {} times", f.switches());
    }
}
