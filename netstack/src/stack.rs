//! [`Stack`]: one smoltcp `Interface` (one MAC, one IPv4 address) over one [`NetDevice`],
//! with its sockets: TCP sockets each in a set of their own ([`TcpSockets`], which picks a
//! frame's socket itself), the few datagram sockets (UDP, ICMP) in one shared set.
//!
//! The caller owns time and waiting: it calls [`Stack::poll`] when the device signalled or
//! when [`Stack::poll_at`] says so, and sleeps in between. ARP and ICMP echo are smoltcp's;
//! this module adds the gratuitous ARP announcement on link up (and on demand, for NIC
//! switches and moves). Over a [`Failover`] device the stack also switches NICs, announcing
//! the address on the new NIC each time (`switch_nic`, `check_failover`, `set_vf`).

use crate::config::NetConfig;
use crate::demux::{Route, TcpHandle, TcpSockets};
use crate::failover::{Failover, Switched};
use crate::phy::{OneFrame, PhyAdapter};
use agent_proto::{Nic, SwitchError};
use alloc::vec::Vec;
use drivers::net::{NetDevice, RxToken, TxToken, checksum};
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, IpEndpoint, IpListenEndpoint,
};

/// Length of a gratuitous ARP frame: Ethernet header and ARP payload, no padding.
const GARP_LEN: usize = 14 + 28;

/// What one [`Stack::poll_bounded`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Polled {
    /// Some socket may have changed state.
    pub changed: bool,
    /// The budget ran out: frames may still wait on the device (poll again soon).
    pub more: bool,
}

/// The network interface, its device and its sockets.
pub struct Stack<D: NetDevice> {
    iface: Interface,
    device: PhyAdapter<D>,
    /// Datagram sockets (UDP; ICMP in tests): few, so smoltcp's scan of them is cheap.
    sockets: SocketSet<'static>,
    tcp: TcpSockets,
    /// Whether the datagram sockets may have changed.
    datagrams: DatagramWake,
    config: NetConfig,
    link_up: bool,
    /// Gratuitous ARPs sent.
    announcements: u64,
    /// Received TCP checksums checked in software, and those found wrong (dropped).
    checksums: SoftwareChecksums,
}

/// Whether the datagram sockets were worked on: since [`Stack::take_woken`], and how often
/// in all.
#[derive(Clone, Copy, Debug, Default)]
struct DatagramWake {
    woken: bool,
    events: u64,
}

impl DatagramWake {
    fn wake(&mut self) {
        self.woken = true;
        self.events += 1;
    }
}

/// Which datagram sockets a non-TCP frame may be for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Datagram {
    /// None: ARP and the like, the interface's own business.
    None,
    /// ICMP sockets only (ICMPv4, or ICMPv6, which also carries neighbour discovery).
    Icmp,
    /// Any: UDP, or an IP protocol smoltcp may hand to a socket.
    Other,
}

fn datagram_protocol(frame: &[u8]) -> Datagram {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const IPV6: [u8; 2] = [0x86, 0xdd];
    const ICMP: u8 = 1;
    const ICMPV6: u8 = 58;
    // Ethernet header (14 bytes), then the protocol at byte 9 of the IPv4 header or the
    // next header at byte 6 of the IPv6 one.
    let (proto, icmp) = match frame.get(12..14) {
        Some(t) if t == IPV4 => (frame.get(14 + 9), ICMP),
        Some(t) if t == IPV6 => (frame.get(14 + 6), ICMPV6),
        _ => return Datagram::None,
    };
    if proto == Some(&icmp) {
        Datagram::Icmp
    } else {
        Datagram::Other
    }
}

/// Whether the set holds an ICMP socket (the kernel opens none; tests' peers do).
fn has_icmp_sockets(sockets: &SocketSet<'static>) -> bool {
    sockets
        .iter()
        .any(|(_, s)| matches!(s, smoltcp::socket::Socket::Icmp(_)))
}

/// Received TCP checksums the stack checked itself (their NIC did not vouch for them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftwareChecksums {
    /// Segments checked in software.
    pub checked: u64,
    /// Of those, the ones that were wrong and were dropped.
    pub bad: u64,
}

impl<D: NetDevice> Stack<D> {
    /// An interface on `device` with `config`'s address and default route. `seed` randomises
    /// TCP sequence numbers and ephemeral ports. The link is not checked yet: call
    /// [`Stack::check_link`], which announces the address once the link is up.
    pub fn new(device: D, config: NetConfig, seed: u64, now: Instant) -> Stack<D> {
        let mut device = PhyAdapter::new(device);
        let mac = EthernetAddress(device.device().mac_address().0);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            // A fresh interface has room for at least one address.
            let _ = addrs.push(IpCidr::Ipv4(config.address));
        });
        if let Some(gateway) = config.gateway {
            // The route table has room for the default route on a fresh interface.
            let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        }
        Stack {
            iface,
            device,
            sockets: SocketSet::new(alloc::vec::Vec::new()),
            tcp: TcpSockets::default(),
            datagrams: DatagramWake::default(),
            config,
            link_up: false,
            announcements: 0,
            checksums: SoftwareChecksums::default(),
        }
    }

    /// The configuration the stack runs with.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Receives and answers everything the device has, and sends what sockets queued.
    /// Returns whether any socket may have changed state.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.iface.poll_maintenance(now);
        let mut changed = false;
        while let Some(c) = self.poll_ingress_one(now) {
            changed |= c;
        }
        self.poll_egress(now) | changed
    }

    /// Like [`Stack::poll`], but takes in at most `budget` frames before sending what sockets
    /// queued, so one call is bounded work however fast frames arrive. A guest without
    /// preemption needs that: the app, the control channel and pending interrupts get their
    /// turn between two calls. [`Polled::more`] says frames may still be waiting. The socket
    /// table's own poll (`SocketTable::poll`) also re-arms listeners after every frame.
    pub fn poll_bounded(&mut self, now: Instant, budget: usize) -> Polled {
        self.iface.poll_maintenance(now);
        let mut polled = Polled {
            changed: false,
            more: true,
        };
        for _ in 0..budget {
            match self.poll_ingress_one(now) {
                None => {
                    polled.more = false;
                    break;
                }
                Some(changed) => polled.changed |= changed,
            }
        }
        // ACKs for what came in go out now.
        polled.changed |= self.poll_egress(now);
        polled
    }

    /// Expires what the interface keeps on its own (no socket's business).
    pub fn poll_maintenance(&mut self, now: Instant) {
        self.iface.poll_maintenance(now);
    }

    /// Takes in one frame, if the device has one, and lets smoltcp process it against the
    /// socket it is for (see [`crate::demux`]). `None` when no frame was waiting, else
    /// whether a socket may have changed state.
    pub fn poll_ingress_one(&mut self, now: Instant) -> Option<bool> {
        let Stack {
            iface,
            device,
            sockets,
            tcp,
            datagrams,
            checksums,
            ..
        } = self;
        let (device, caps) = device.split();
        let (rx, tx) = device.receive()?;
        tcp.reindex_touched();
        let vouched = rx.checksum_valid();
        Some(rx.consume(|frame| {
            if !vouched && let Some(segment) = checksum::tcp_segment(frame) {
                // smoltcp does not check TCP checksums (see `phy`): no NIC did, so here.
                checksums.checked += 1;
                if !checksum::verify_tcp(frame, &segment) {
                    checksums.bad += 1;
                    return false;
                }
            }
            Self::ingress(frame, tx, caps, iface, sockets, tcp, datagrams, now)
        }))
    }

    /// Lets smoltcp process `frame` against the socket it is for.
    #[allow(clippy::too_many_arguments)]
    fn ingress<T: TxToken>(
        frame: &[u8],
        tx: T,
        caps: &smoltcp::phy::DeviceCapabilities,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        tcp: &mut TcpSockets,
        datagrams: &mut DatagramWake,
        now: Instant,
    ) -> bool {
        match tcp.route(frame, now) {
            Route::Drop => false,
            Route::Tcp(index) => tcp.ingress(index, iface, now, frame, tx, caps),
            Route::Other => {
                if frame.get(12..14) == Some(&[0x08, 0x06]) {
                    // A neighbour may have been learned: sockets waiting for one go now.
                    tcp.neighbor_learned();
                }
                let mut one = OneFrame::new(frame, tx, caps);
                // smoltcp reports every frame it processed as a change (its own TODO says
                // so); ARP and pings, which the interface answers itself, change no socket.
                let processed = iface.poll_ingress_single(now, &mut one, sockets)
                    == PollIngressSingleResult::SocketStateChanged;
                let changed = processed
                    && match datagram_protocol(frame) {
                        Datagram::Other => true,
                        Datagram::Icmp => has_icmp_sockets(sockets),
                        Datagram::None => false,
                    };
                if changed {
                    datagrams.wake();
                }
                changed
            }
        }
    }

    /// Received TCP checksums checked in software so far (frames no NIC vouched for).
    pub fn software_checksums(&self) -> SoftwareChecksums {
        self.checksums
    }

    /// Sends what sockets queued: the datagram sockets, and the TCP sockets that were
    /// touched or whose timer is due (never a walk over every connection). Returns whether
    /// anything went out.
    pub fn poll_egress(&mut self, now: Instant) -> bool {
        let mut sent = false;
        while self
            .iface
            .poll_egress(now, &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged
        {
            sent = true;
            self.datagrams.wake();
        }
        sent | self.tcp.egress(&mut self.iface, &mut self.device, now)
    }

    /// Moves the TCP sockets worked on since the last call into `into`; `true` if anything
    /// else (a datagram socket) may have changed too.
    pub fn take_woken(&mut self, into: &mut Vec<TcpHandle>) -> bool {
        self.tcp.take_woken(into);
        core::mem::take(&mut self.datagrams.woken)
    }

    /// How many times a socket may have changed so far (a frame or timer for one, an egress
    /// pass that sent for one; never for ARP or pings the interface answers itself). A
    /// thread blocked on a socket needs another look only once this moves.
    pub fn socket_events(&self) -> u64 {
        self.datagrams.events.wrapping_add(self.tcp.touches())
    }

    /// When [`Stack::poll`] must run next even if the device stays quiet (TCP timers,
    /// pending ARP); `None` when only the device can make work. A past instant means now.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let datagrams = self.iface.poll_at(now, &self.sockets);
        match (datagrams, self.tcp.poll_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Stack::poll_at`] as a delay from `now`.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.poll_at(now)
            .map(|t| if t > now { t - now } else { Duration::ZERO })
    }

    /// Reads the link state; when it went up (the first call counts), announces the address
    /// with a gratuitous ARP. Returns whether the link is up.
    pub fn check_link(&mut self) -> bool {
        let up = self.device.device().link_up();
        if up && !self.link_up {
            log::info!("net: link up, announcing {}", self.config.address.address());
            if !self.announce() {
                log::warn!("net: no transmit buffer for the gratuitous ARP");
            }
        } else if !up && self.link_up {
            log::info!("net: link down");
        }
        self.link_up = up;
        up
    }

    /// Sends a gratuitous ARP (an ARP request for our own address from our own address, to
    /// broadcast), so neighbours and switches learn where the address lives now. `false`
    /// if the device had no transmit buffer.
    pub fn announce(&mut self) -> bool {
        let mac = self.device.device().mac_address();
        let address = self.config.address.address();
        let Some(token) = self.device.device_mut().transmit() else {
            return false;
        };
        token.consume(GARP_LEN, |buffer| {
            write_garp(buffer, EthernetAddress(mac.0), address)
        });
        self.announcements += 1;
        true
    }

    /// Gratuitous ARPs sent so far (by [`Stack::announce`], on link up or a NIC switch).
    pub fn announcements(&self) -> u64 {
        self.announcements
    }

    /// The device (to read its counters and state).
    pub fn device(&self) -> &D {
        self.device.device()
    }

    /// The device (to acknowledge its interrupts, read its counters).
    pub fn device_mut(&mut self) -> &mut D {
        self.device.device_mut()
    }

    /// The datagram sockets (UDP, ICMP). TCP sockets live in [`Stack::tcp`].
    pub fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    /// The datagram sockets, mutably.
    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// The TCP sockets.
    pub fn tcp(&self) -> &TcpSockets {
        &self.tcp
    }

    /// The TCP sockets, mutably.
    pub fn tcp_mut(&mut self) -> &mut TcpSockets {
        &mut self.tcp
    }

    /// Starts connecting TCP socket `h` (what `connect` needs the interface for).
    pub fn tcp_connect(
        &mut self,
        h: TcpHandle,
        remote: IpEndpoint,
        local: IpListenEndpoint,
    ) -> Result<(), tcp::ConnectError> {
        let Some(socket) = self.tcp.get_mut(h) else {
            return Err(tcp::ConnectError::InvalidState);
        };
        socket.connect(self.iface.context(), remote, local)
    }
}

/// NIC switching over a [`Failover`] device. Each method announces the address with a
/// gratuitous ARP on the newly active NIC as soon as the active NIC changes (when its link
/// is up; otherwise [`Stack::check_link`] announces once it comes up). Sockets and TCP
/// state are not touched.
impl<V: NetDevice, W: NetDevice> Stack<Failover<V, W>> {
    /// The operator's switch to `nic` ([`Failover::switch_to`]: `Nic::Virtio` pins
    /// virtio-net, `Nic::Vf` lifts the pin), announced on `nic` if it changed anything.
    pub fn switch_nic(&mut self, nic: Nic) -> Result<Switched, SwitchError> {
        let switched = self.device.device_mut().switch_to(nic)?;
        if switched.changed() {
            self.announce_switch();
        }
        Ok(switched)
    }

    /// What the kernel calls after a NIC's link interrupt (or on a timer): automatic
    /// failover ([`Failover::check`]), announced on the new NIC, then [`Stack::check_link`]
    /// for the active NIC's own link. Returns the switch, if one happened.
    pub fn check_failover(&mut self) -> Option<Switched> {
        let switched = self.device.device_mut().check();
        if switched.is_some() {
            self.announce_switch();
        }
        self.check_link();
        switched
    }

    /// Lifts the virtio-net pin ([`Failover::unpin_virtio`]), announcing on the VF if
    /// traffic moved there.
    pub fn unpin_virtio(&mut self) -> Option<Switched> {
        let switched = self.device.device_mut().unpin_virtio();
        if switched.is_some() {
            self.announce_switch();
        }
        switched
    }

    /// Installs or removes the VF ([`Failover::set_vf`]), returning the one it replaces;
    /// announces the address if the active NIC changed.
    pub fn set_vf(&mut self, vf: Option<V>) -> Option<V> {
        let before = self.device.device().active();
        let old = self.device.device_mut().set_vf(vf);
        if self.device.device().active() != before {
            self.announce_switch();
        }
        old
    }

    /// Removes the VF (hot-unplug): [`Stack::set_vf`]`(None)`.
    pub fn take_vf(&mut self) -> Option<V> {
        self.set_vf(None)
    }

    /// After a change of active NIC: announces on it if its link is up, and records that
    /// link state so [`Stack::check_link`] neither repeats nor misses the announcement.
    fn announce_switch(&mut self) {
        let up = self.device.device().link_up();
        if up && !self.announce() {
            log::warn!("net: no transmit buffer for the gratuitous ARP after a NIC switch");
        }
        self.link_up = up;
    }
}

/// Writes a gratuitous ARP frame from `mac` for `address` into `buffer` ([`GARP_LEN`]
/// bytes; shorter buffers get nothing).
fn write_garp(buffer: &mut [u8], mac: EthernetAddress, address: core::net::Ipv4Addr) {
    let Some(buffer) = buffer.get_mut(..GARP_LEN) else {
        return;
    };
    let ethernet = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = EthernetFrame::new_unchecked(buffer);
    ethernet.emit(&mut frame);
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: address,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: address,
    };
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
}
