//! Two stacks over an in-memory Ethernet link (drivers' `MemoryNic` pair): ARP, ping,
//! gratuitous ARP. No clock, no root, no KVM.

use crate::config::NetConfig;
use crate::stack::Stack;
use core::net::Ipv4Addr;
use drivers::net::MacAddress;
use drivers::net::memory::{self, MemoryNic};
use smoltcp::socket::icmp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, IpAddress, Ipv4Cidr,
};

const GUEST_MAC: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const PEER_MAC: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn config(address: Ipv4Addr) -> NetConfig {
    NetConfig {
        address: Ipv4Cidr::new(address, 24),
        gateway: None,
    }
}

fn stacks() -> (Stack<MemoryNic>, Stack<MemoryNic>) {
    let (guest, peer) = memory::pair(GUEST_MAC, PEER_MAC);
    let now = Instant::from_millis(0);
    (
        Stack::new(guest, config(GUEST_IP), 1, now),
        Stack::new(peer, config(PEER_IP), 2, now),
    )
}

/// Polls both stacks until neither has anything left to do (bounded).
fn pump(a: &mut Stack<MemoryNic>, b: &mut Stack<MemoryNic>, now: Instant) {
    for _ in 0..16 {
        let changed = a.poll(now) | b.poll(now);
        if !changed && a.device_mut().waiting() == 0 && b.device_mut().waiting() == 0 {
            return;
        }
    }
}

fn arp(frame: &[u8]) -> Option<(EthernetAddress, ArpRepr)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
    Some((eth.dst_addr(), repr))
}

#[test]
fn link_up_sends_one_gratuitous_arp() {
    let (mut guest, peer) = stacks();
    assert!(guest.check_link());
    assert!(guest.check_link(), "still up: no second announcement");
    let sent = guest.device_mut().sent();
    assert_eq!(sent.len(), 1);
    let (dst, repr) = arp(&sent[0]).expect("an ARP frame");
    assert_eq!(dst, EthernetAddress::BROADCAST);
    assert_eq!(
        repr,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(GUEST_MAC.0),
            source_protocol_addr: GUEST_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: GUEST_IP,
        }
    );
    assert_eq!(peer.sockets().iter().count(), 0);
}

#[test]
fn link_down_then_up_announces_again() {
    let (mut guest, _peer) = stacks();
    guest.device_mut().set_link(false);
    assert!(!guest.check_link());
    assert!(guest.device_mut().sent().is_empty());
    guest.device_mut().set_link(true);
    assert!(guest.check_link());
    assert_eq!(guest.device_mut().sent().len(), 1);
    guest.device_mut().set_link(false);
    assert!(!guest.check_link());
    guest.device_mut().set_link(true);
    assert!(guest.check_link());
    assert_eq!(guest.device_mut().sent().len(), 2);
}

#[test]
fn arp_resolves_and_ping_is_answered() {
    let (mut guest, mut peer) = stacks();
    guest.check_link();
    peer.check_link();
    let now = Instant::from_millis(10);
    pump(&mut guest, &mut peer, now);

    // The peer pings the guest through an ICMP socket.
    let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]);
    let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]);
    let mut socket = icmp::Socket::new(rx, tx);
    socket.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let handle = peer.sockets_mut().add(socket);
    let payload = b"roam ping payload";
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 7,
        data: payload,
    };
    {
        let socket = peer.sockets_mut().get_mut::<icmp::Socket>(handle);
        let buf = socket
            .send(request.buffer_len(), IpAddress::Ipv4(GUEST_IP))
            .unwrap();
        let mut packet = Icmpv4Packet::new_unchecked(buf);
        request.emit(&mut packet, &smoltcp::phy::ChecksumCapabilities::default());
    }
    // First the peer must resolve the guest's MAC; then the echo goes out and comes back.
    for ms in 0..2000 {
        pump(&mut guest, &mut peer, Instant::from_millis(20 + ms));
        if peer
            .sockets_mut()
            .get_mut::<icmp::Socket>(handle)
            .can_recv()
        {
            break;
        }
    }
    let socket = peer.sockets_mut().get_mut::<icmp::Socket>(handle);
    let (reply, from) = socket.recv().expect("an echo reply");
    assert_eq!(from, IpAddress::Ipv4(GUEST_IP));
    let packet = Icmpv4Packet::new_checked(reply).unwrap();
    let repr = Icmpv4Repr::parse(&packet, &smoltcp::phy::ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: payload
        }
    );

    // The guest answered an ARP request from the peer with its own MAC.
    let replies: Vec<_> = guest
        .device_mut()
        .sent()
        .iter()
        .filter_map(|f| arp(f))
        .filter(|(_, r)| {
            matches!(
                r,
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, EthernetAddress(PEER_MAC.0));
}

#[test]
fn a_bounded_poll_takes_at_most_its_budget_and_says_more_are_waiting() {
    let (mut guest, mut peer) = stacks();
    guest.check_link();
    let now = Instant::from_millis(5);
    for _ in 0..10 {
        assert!(peer.announce());
    }
    assert_eq!(guest.device_mut().waiting(), 10);
    let first = guest.poll_bounded(now, 4);
    assert!(first.more);
    assert_eq!(guest.device_mut().waiting(), 6);
    assert!(guest.poll_bounded(now, 4).more);
    let last = guest.poll_bounded(now, 4);
    assert!(!last.more, "two frames were left, under the budget");
    assert_eq!(guest.device_mut().waiting(), 0);
}

#[test]
fn nothing_to_do_means_no_deadline() {
    let (mut guest, _peer) = stacks();
    guest.check_link();
    let now = Instant::from_millis(5);
    guest.poll(now);
    assert_eq!(
        guest.poll_at(now),
        None,
        "an idle stack only wakes for the device"
    );
}

mod sockets {
    use super::*;
    use crate::socket::{
        Error, FIRST_FD, HANDSHAKE_TIMEOUT, MAX_BACKLOG, MAX_SOCKETS, Opt, Shutdown, SocketTable,
        Type,
    };
    use core::net::SocketAddrV4;

    /// One host: its stack and its socket table.
    struct Host {
        stack: Stack<MemoryNic>,
        table: SocketTable,
    }

    fn hosts() -> (Host, Host) {
        let (guest, peer) = stacks();
        (
            Host {
                stack: guest,
                table: SocketTable::new(1),
            },
            Host {
                stack: peer,
                table: SocketTable::new(2),
            },
        )
    }

    /// Runs both hosts (polls, listeners re-armed, closed sockets freed) over simulated
    /// time `ms`.
    fn run(a: &mut Host, b: &mut Host, ms: &mut i64) {
        for _ in 0..8 {
            *ms += 1;
            let now = Instant::from_millis(*ms);
            a.table.poll(&mut a.stack, now, 64);
            b.table.poll(&mut b.stack, now, 64);
        }
    }

    /// Runs until `done` holds (at most 5 simulated seconds).
    fn run_until(
        a: &mut Host,
        b: &mut Host,
        ms: &mut i64,
        mut done: impl FnMut(&mut Host, &mut Host) -> bool,
    ) {
        for _ in 0..625 {
            if done(a, b) {
                return;
            }
            run(a, b, ms);
        }
        panic!("condition not reached after {ms} ms");
    }

    fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }

    /// A TCP connection from `b` to a listener on `a`:7: (listener, a's end, b's end).
    fn connected(a: &mut Host, b: &mut Host, ms: &mut i64) -> (i32, i32, i32) {
        let listener = a.table.socket(&mut a.stack, Type::Stream, false).unwrap();
        a.table
            .set_option(&mut a.stack, listener, Opt::ReuseAddr, true)
            .unwrap();
        a.table
            .bind(&mut a.stack, listener, addr(Ipv4Addr::UNSPECIFIED, 7))
            .unwrap();
        a.table.listen(&mut a.stack, listener, 2).unwrap();
        let client = b.table.socket(&mut b.stack, Type::Stream, true).unwrap();
        assert_eq!(
            b.table.connect(&mut b.stack, client, addr(GUEST_IP, 7)),
            Err(Error::InProgress)
        );
        assert_eq!(
            b.table.connect_result(&mut b.stack, client),
            Err(Error::WouldBlock)
        );
        run_until(a, b, ms, |_, b| {
            b.table.connect_result(&mut b.stack, client).is_ok()
        });
        let mut accepted = None;
        run_until(a, b, ms, |a, _| {
            accepted = a.table.accept(&mut a.stack, listener).ok();
            accepted.is_some()
        });
        let (server, peer) = accepted.unwrap();
        assert_eq!(*peer.ip(), PEER_IP);
        assert_eq!(peer, b.table.local_addr(&b.stack, client).unwrap());
        (listener, server, client)
    }

    #[test]
    fn tcp_echo_and_orderly_close() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (listener, server, client) = connected(&mut a, &mut b, &mut ms);
        assert_eq!(
            a.table.local_addr(&a.stack, server).unwrap(),
            addr(GUEST_IP, 7)
        );
        assert_eq!(
            b.table.peer_addr(&mut b.stack, client).unwrap(),
            addr(GUEST_IP, 7)
        );
        assert!(b.table.readiness(&mut b.stack, client).unwrap().writable);

        assert_eq!(
            b.table.send(&mut b.stack, client, b"hello, roam", None),
            Ok(11)
        );
        let mut buf = [0u8; 64];
        assert_eq!(
            a.table.recv(&mut a.stack, server, &mut buf, false),
            Err(Error::WouldBlock)
        );
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.readiness(&mut a.stack, server).unwrap().readable
        });
        assert_eq!(
            a.table.recv(&mut a.stack, server, &mut buf, true),
            Ok((11, None)),
            "peek"
        );
        let (n, _) = a.table.recv(&mut a.stack, server, &mut buf, false).unwrap();
        assert_eq!(&buf[..n], b"hello, roam");
        assert_eq!(a.table.send(&mut a.stack, server, &buf[..n], None), Ok(n));
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            b.table.readiness(&mut b.stack, client).unwrap().readable
        });
        let mut back = [0u8; 64];
        assert_eq!(
            b.table.recv(&mut b.stack, client, &mut back, false),
            Ok((11, None))
        );
        assert_eq!(&back[..11], b"hello, roam");

        // Half-close from the client: the server reads end of stream, can still send.
        b.table
            .shutdown(&mut b.stack, client, Shutdown::Write)
            .unwrap();
        assert_eq!(
            b.table.send(&mut b.stack, client, b"x", None),
            Err(Error::BrokenPipe)
        );
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.readiness(&mut a.stack, server).unwrap().readable
        });
        assert_eq!(
            a.table.recv(&mut a.stack, server, &mut buf, false),
            Ok((0, None))
        );
        assert_eq!(a.table.send(&mut a.stack, server, b"bye", None), Ok(3));
        a.table.close(&mut a.stack, server).unwrap();
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            matches!(
                b.table.recv(&mut b.stack, client, &mut back, false),
                Ok((0, None))
            ) || back.starts_with(b"bye")
        });
        b.table.close(&mut b.stack, client).unwrap();
        run(&mut a, &mut b, &mut ms);
        a.table.close(&mut a.stack, listener).unwrap();
        run(&mut a, &mut b, &mut ms);
        // Everything closed is eventually freed (TIME-WAIT is dropped at once).
        run_until(&mut a, &mut b, &mut ms, |a, b| {
            a.stack.tcp().is_empty() && b.stack.tcp().is_empty()
        });
    }

    /// A duplicated descriptor (std's `try_clone`) shares the socket: data sent on one is
    /// echoed back to the other, the socket outlives the first close, and the connection
    /// ends (the peer reads end of stream) only when the last descriptor is closed.
    #[test]
    fn a_duplicated_descriptor_shares_the_socket_until_the_last_close() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (listener, server, client) = connected(&mut a, &mut b, &mut ms);
        let twin = a.table.dup(server).unwrap();
        assert_ne!(twin, server);
        assert!(a.table.is_socket(twin));
        assert_eq!(a.table.dup(999), Err(Error::BadFd));
        // One set of options: what one descriptor sets, the other sees.
        a.table.set_nonblocking(twin, true).unwrap();
        assert_eq!(a.table.nonblocking(server), Ok(true));

        assert_eq!(b.table.send(&mut b.stack, client, b"ping", None), Ok(4));
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.readiness(&mut a.stack, twin).unwrap().readable
        });
        let mut buf = [0u8; 16];
        assert_eq!(
            a.table.recv(&mut a.stack, twin, &mut buf, false),
            Ok((4, None))
        );
        a.table.close(&mut a.stack, twin).unwrap();
        assert_eq!(a.table.close(&mut a.stack, twin), Err(Error::BadFd));
        assert!(!a.table.is_socket(twin));
        // The original still works after its duplicate closed.
        assert_eq!(a.table.send(&mut a.stack, server, &buf[..4], None), Ok(4));
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            b.table.readiness(&mut b.stack, client).unwrap().readable
        });
        assert_eq!(
            b.table.recv(&mut b.stack, client, &mut buf, false),
            Ok((4, None))
        );

        // Now the other way round: the original closes first, its duplicate keeps the
        // connection open until it closes too.
        let twin = a.table.dup(server).unwrap();
        a.table.close(&mut a.stack, server).unwrap();
        assert!(!a.table.is_socket(server));
        assert_eq!(
            a.table.send(&mut a.stack, server, b"x", None),
            Err(Error::BadFd)
        );
        run(&mut a, &mut b, &mut ms);
        assert_eq!(
            b.table.recv(&mut b.stack, client, &mut buf, false),
            Err(Error::WouldBlock),
            "the peer saw the connection end while a duplicate was open"
        );
        assert_eq!(a.table.send(&mut a.stack, twin, b"late", None), Ok(4));
        a.table.close(&mut a.stack, twin).unwrap();
        let mut got = Vec::new();
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            match b.table.recv(&mut b.stack, client, &mut buf, false) {
                Ok((0, _)) => true,
                Ok((n, _)) => {
                    got.extend_from_slice(&buf[..n]);
                    false
                }
                Err(_) => false,
            }
        });
        assert_eq!(got, b"late");
        // Both descriptors are free again: the next sockets get them, lowest first.
        let next = a.table.socket(&mut a.stack, Type::Datagram, false).unwrap();
        let after = a.table.socket(&mut a.stack, Type::Datagram, false).unwrap();
        assert_eq!((next, after), (server, twin));
        assert!(a.table.is_socket(listener));
    }

    #[test]
    fn closing_with_unread_data_resets_the_connection() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (_listener, server, client) = connected(&mut a, &mut b, &mut ms);
        assert_eq!(
            b.table.send(&mut b.stack, client, b"never read", None),
            Ok(10)
        );
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.readiness(&mut a.stack, server).unwrap().readable
        });
        let open = a.stack.tcp().len();
        a.table.close(&mut a.stack, server).unwrap();
        // A reset frees the guest's socket at once; a FIN would leave it in FIN-WAIT
        // while the peer keeps its end open.
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.stack.tcp().len() == open - 1
        });
        let mut buf = [0u8; 16];
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            !matches!(
                b.table.recv(&mut b.stack, client, &mut buf, false),
                Err(Error::WouldBlock)
            )
        });
        assert!(
            b.table.send(&mut b.stack, client, b"more", None).is_err(),
            "the peer's connection must be gone after the reset"
        );
    }

    #[test]
    fn backlog_accepts_several_connections() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (listener, _s1, _c1) = connected(&mut a, &mut b, &mut ms);
        let c2 = b.table.socket(&mut b.stack, Type::Stream, true).unwrap();
        assert_eq!(
            b.table.connect(&mut b.stack, c2, addr(GUEST_IP, 7)),
            Err(Error::InProgress)
        );
        assert_eq!(
            b.table.connect(&mut b.stack, c2, addr(GUEST_IP, 7)),
            Err(Error::Already)
        );
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.readiness(&mut a.stack, listener).unwrap().readable
        });
        let (s2, _) = a.table.accept(&mut a.stack, listener).unwrap();
        assert!(s2 > listener);
        assert_eq!(
            a.table.accept(&mut a.stack, listener),
            Err(Error::WouldBlock)
        );
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            b.table.connect_result(&mut b.stack, c2).is_ok()
        });
        assert_eq!(
            b.table.connect(&mut b.stack, c2, addr(GUEST_IP, 7)),
            Err(Error::IsConnected)
        );
    }

    #[test]
    fn refused_connection_is_reported() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let c = b.table.socket(&mut b.stack, Type::Stream, true).unwrap();
        assert_eq!(
            b.table.connect(&mut b.stack, c, addr(GUEST_IP, 9)),
            Err(Error::InProgress)
        );
        let mut result = Err(Error::WouldBlock);
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            result = b.table.connect_result(&mut b.stack, c);
            result != Err(Error::WouldBlock)
        });
        assert_eq!(result, Err(Error::ConnectionRefused));
        // The socket is usable again: it is fresh.
        assert_eq!(
            b.table.connect(&mut b.stack, c, addr(GUEST_IP, 9)),
            Err(Error::InProgress)
        );
    }

    #[test]
    fn udp_echo() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let server = a.table.socket(&mut a.stack, Type::Datagram, true).unwrap();
        a.table
            .bind(&mut a.stack, server, addr(Ipv4Addr::UNSPECIFIED, 7))
            .unwrap();
        let client = b.table.socket(&mut b.stack, Type::Datagram, true).unwrap();
        assert_eq!(
            b.table.send(&mut b.stack, client, b"ping", None),
            Err(Error::DestinationRequired)
        );
        assert_eq!(
            b.table
                .send(&mut b.stack, client, b"ping", Some(addr(GUEST_IP, 7))),
            Ok(4)
        );
        let local = b.table.local_addr(&b.stack, client).unwrap();
        assert!(
            local.port() >= 49152,
            "auto-bound to an ephemeral port: {local}"
        );
        let mut buf = [0u8; 64];
        let mut got = None;
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            got = a.table.recv(&mut a.stack, server, &mut buf, false).ok();
            got.is_some()
        });
        let (n, from) = got.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"ping"[..], Some(addr(PEER_IP, local.port())))
        );
        a.table.send(&mut a.stack, server, &buf[..n], from).unwrap();
        // A short buffer gets the start of the datagram.
        let mut small = [0u8; 2];
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            b.table
                .recv(&mut b.stack, client, &mut small, false)
                .is_ok()
        });
        assert_eq!(&small, b"pi");
        // Connected UDP sockets send without an address.
        b.table
            .connect(&mut b.stack, client, addr(GUEST_IP, 7))
            .unwrap();
        assert_eq!(b.table.send(&mut b.stack, client, b"again", None), Ok(5));
        assert_eq!(
            b.table.peer_addr(&mut b.stack, client),
            Ok(addr(GUEST_IP, 7))
        );
    }

    /// What wakes a thread blocked on a socket (the kernel waits for
    /// `Stack::socket_events` to move): a datagram or a segment for one of the guest's
    /// sockets, never an ARP or a ping the interface answers itself.
    #[test]
    fn only_frames_for_a_socket_count_as_socket_events() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (_listener, server, client) = connected(&mut a, &mut b, &mut ms);
        let udp = a.table.socket(&mut a.stack, Type::Datagram, true).unwrap();
        a.table
            .bind(&mut a.stack, udp, addr(Ipv4Addr::UNSPECIFIED, 9))
            .unwrap();
        // Whatever the handshake left to do (a delayed ACK) is done.
        run_for(&mut a, &mut b, &mut ms, 500);
        let quiet = a.stack.socket_events();
        run_for(&mut a, &mut b, &mut ms, 500);
        assert_eq!(
            a.stack.socket_events(),
            quiet,
            "an idle guest has no events"
        );

        // Five pings from the peer, answered, and a gratuitous ARP from it.
        let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 1024]);
        let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 1024]);
        let mut ping = icmp::Socket::new(rx, tx);
        ping.bind(icmp::Endpoint::Ident(0x4242)).unwrap();
        let ping = b.stack.sockets_mut().add(ping);
        for seq_no in 0..5 {
            let request = Icmpv4Repr::EchoRequest {
                ident: 0x4242,
                seq_no,
                data: b"roam",
            };
            let socket = b.stack.sockets_mut().get_mut::<icmp::Socket>(ping);
            let buf = socket
                .send(request.buffer_len(), IpAddress::Ipv4(GUEST_IP))
                .unwrap();
            request.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &smoltcp::phy::ChecksumCapabilities::default(),
            );
        }
        b.stack.device_mut().set_link(false);
        b.stack.check_link();
        b.stack.device_mut().set_link(true);
        assert!(b.stack.check_link(), "the peer announces itself");
        let mut replies = 0;
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            let socket = b.stack.sockets_mut().get_mut::<icmp::Socket>(ping);
            while socket.recv().is_ok() {
                replies += 1;
            }
            replies == 5
        });
        run_for(&mut a, &mut b, &mut ms, 100);
        assert_eq!(
            a.stack.socket_events(),
            quiet,
            "pings and ARP are no socket's business"
        );

        // A datagram for the UDP socket is an event, and so is a segment for the TCP one.
        let peer_udp = b.table.socket(&mut b.stack, Type::Datagram, true).unwrap();
        b.table
            .send(&mut b.stack, peer_udp, b"hi", Some(addr(GUEST_IP, 9)))
            .unwrap();
        let mut buf = [0u8; 16];
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.recv(&mut a.stack, udp, &mut buf, false).is_ok()
        });
        let after_udp = a.stack.socket_events();
        assert!(after_udp > quiet, "a datagram for a socket is an event");
        b.table.send(&mut b.stack, client, b"hello", None).unwrap();
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.recv(&mut a.stack, server, &mut buf, false).is_ok()
        });
        assert!(
            a.stack.socket_events() > after_udp,
            "a segment for a connection is an event"
        );
    }

    #[test]
    fn error_paths() {
        let (mut a, _b) = hosts();
        let s = &mut a.stack;
        let t = &mut a.table;
        let mut buf = [0u8; 8];
        assert_eq!(t.recv(s, 42, &mut buf, false), Err(Error::BadFd));
        assert_eq!(t.send(s, 2, b"x", None), Err(Error::BadFd));
        assert_eq!(t.close(s, -1), Err(Error::BadFd));
        assert_eq!(t.accept(s, FIRST_FD), Err(Error::BadFd));

        let tcp = t.socket(s, Type::Stream, false).unwrap();
        assert_eq!(tcp, FIRST_FD);
        assert_eq!(t.recv(s, tcp, &mut buf, false), Err(Error::NotConnected));
        assert_eq!(t.send(s, tcp, b"x", None), Err(Error::NotConnected));
        assert_eq!(t.accept(s, tcp), Err(Error::Invalid));
        assert_eq!(t.peer_addr(s, tcp), Err(Error::NotConnected));
        assert_eq!(t.shutdown(s, tcp, Shutdown::Both), Err(Error::NotConnected));
        assert_eq!(
            t.bind(s, tcp, addr(Ipv4Addr::new(198, 18, 0, 99), 80)),
            Err(Error::AddressNotAvailable)
        );
        t.bind(s, tcp, addr(GUEST_IP, 80)).unwrap();
        assert_eq!(t.bind(s, tcp, addr(GUEST_IP, 81)), Err(Error::Invalid));
        let other = t.socket(s, Type::Stream, false).unwrap();
        assert_eq!(
            t.bind(s, other, addr(Ipv4Addr::UNSPECIFIED, 80)),
            Err(Error::AddressInUse)
        );
        t.set_option(s, other, Opt::ReuseAddr, true).unwrap();
        assert_eq!(
            t.bind(s, other, addr(Ipv4Addr::UNSPECIFIED, 80)),
            Err(Error::AddressInUse)
        );
        t.listen(s, tcp, 8).unwrap();
        assert_eq!(t.connect(s, tcp, addr(PEER_IP, 80)), Err(Error::Invalid));
        assert_eq!(
            t.connect(s, other, addr(Ipv4Addr::UNSPECIFIED, 80)),
            Err(Error::AddressNotAvailable)
        );

        let udp = t.socket(s, Type::Datagram, false).unwrap();
        assert_eq!(t.listen(s, udp, 1), Err(Error::NotSupported));
        assert_eq!(
            t.set_option(s, udp, Opt::NoDelay, true),
            Err(Error::NotSupported)
        );
        assert_eq!(t.recv(s, udp, &mut buf, false), Err(Error::WouldBlock));
        let huge = vec![0u8; 70_000];
        assert_eq!(
            t.send(s, udp, &huge, Some(addr(PEER_IP, 7))),
            Err(Error::MessageTooLong)
        );

        t.set_option(s, tcp, Opt::NoDelay, true).unwrap();
        assert_eq!(t.option(tcp, Opt::NoDelay), Ok(true));
        assert_eq!(t.option(other, Opt::ReuseAddr), Ok(true));
        assert_eq!(t.option(udp, Opt::ReuseAddr), Ok(false));

        t.close(s, udp).unwrap();
        assert_eq!(t.close(s, udp), Err(Error::BadFd));
        // The lowest free descriptor is reused.
        assert_eq!(t.socket(s, Type::Datagram, false), Ok(udp));
    }

    /// The Internet checksum of `data`.
    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Puts a SYN with valid checksums from `from:port` to the guest's `to_port` on the
    /// wire, as a raw socket would: nobody at `from` ever answers the SYN-ACK.
    fn inject_syn(b: &mut Host, from: Ipv4Addr, port: u16, to_port: u16) {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&port.to_be_bytes());
        tcp[2..4].copy_from_slice(&to_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&u32::from(port).wrapping_mul(2_654_435_761).to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&from.octets());
        pseudo.extend_from_slice(&GUEST_IP.octets());
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&tcp);
        let sum = checksum(&pseudo);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&GUEST_IP.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = GUEST_MAC.0.to_vec();
        frame.extend_from_slice(&PEER_MAC.0);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&tcp);
        let token = drivers::net::NetDevice::transmit(b.stack.device_mut())
            .expect("a memory card has room");
        drivers::net::TxToken::consume(token, frame.len(), |buf| buf.copy_from_slice(&frame));
    }

    /// A listener on `a`:`port` with `backlog`.
    fn listener(a: &mut Host, port: u16, backlog: i32) -> i32 {
        let l = a.table.socket(&mut a.stack, Type::Stream, true).unwrap();
        a.table
            .bind(&mut a.stack, l, addr(Ipv4Addr::UNSPECIFIED, port))
            .unwrap();
        a.table.listen(&mut a.stack, l, backlog).unwrap();
        l
    }

    /// `n` client sockets on `b` connecting to the guest's `port`.
    fn clients(b: &mut Host, port: u16, n: usize) -> Vec<i32> {
        (0..n)
            .map(|_| {
                let c = b.table.socket(&mut b.stack, Type::Stream, true).unwrap();
                assert_eq!(
                    b.table.connect(&mut b.stack, c, addr(GUEST_IP, port)),
                    Err(Error::InProgress)
                );
                c
            })
            .collect()
    }

    fn connected_count(b: &mut Host, clients: &[i32]) -> usize {
        clients
            .iter()
            .filter(|&&c| b.table.connect_result(&mut b.stack, c).is_ok())
            .count()
    }

    /// Accepts everything waiting on `l`; returns how many.
    fn accept_all(a: &mut Host, l: i32) -> usize {
        let mut n = 0;
        while a.table.accept(&mut a.stack, l).is_ok() {
            n += 1;
        }
        n
    }

    /// Runs simulated time (8 ms a step) for `ms` milliseconds at least.
    fn run_for(a: &mut Host, b: &mut Host, ms: &mut i64, span: i64) {
        let until = *ms + span;
        while *ms < until {
            run(a, b, ms);
        }
    }

    #[test]
    fn a_backlog_of_128_keeps_128_pending_connections_and_larger_ones_are_capped() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let l = listener(&mut a, 80, 1000);
        let c = clients(&mut b, 80, MAX_BACKLOG);
        // Nobody accepts: the whole backlog completes its handshake.
        run_until(&mut a, &mut b, &mut ms, |_, b| {
            connected_count(b, &c) == MAX_BACKLOG
        });
        assert!(a.table.readiness(&mut a.stack, l).unwrap().readable);
        // Two more while it is full: not refused, their SYNs are dropped (nothing listens)...
        let more = clients(&mut b, 80, 2);
        run_for(&mut a, &mut b, &mut ms, 500);
        assert_eq!(connected_count(&mut b, &more), 0);
        for &m in &more {
            assert_eq!(
                b.table.connect_result(&mut b.stack, m),
                Err(Error::WouldBlock)
            );
        }
        // ...and they get in once the app accepts.
        assert_eq!(accept_all(&mut a, l), MAX_BACKLOG);
        run_until(&mut a, &mut b, &mut ms, |a, b| {
            accept_all(a, l);
            connected_count(b, &more) == 2
        });
        // 130 connections at once: the table outgrew the old 64 sockets.
        assert!(a.stack.tcp().len() > 128, "{}", a.stack.tcp().len());
    }

    #[test]
    fn a_small_backlog_is_honoured_and_zero_means_one() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let l = listener(&mut a, 80, 0);
        let c = clients(&mut b, 80, 3);
        // Nobody accepts for 3 s: one connection waits, the others' SYNs are not taken.
        run_for(&mut a, &mut b, &mut ms, 3000);
        assert_eq!(accept_all(&mut a, l), 1);
        // Once the app accepts, their resent SYNs get in.
        let mut accepted = 1;
        run_until(&mut a, &mut b, &mut ms, |a, b| {
            accepted += accept_all(a, l);
            accepted == 3 && connected_count(b, &c) == 3
        });
    }

    #[test]
    fn half_open_handshakes_time_out_and_the_listener_keeps_accepting() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let l = listener(&mut a, 80, 4);
        // Four SYNs from an address in the subnet that never answers: the backlog is full
        // of half-open handshakes (the guest cannot even resolve the address).
        let silent = Ipv4Addr::new(198, 18, 0, 77);
        for port in 1000..1004 {
            inject_syn(&mut b, silent, port, 80);
        }
        run_for(&mut a, &mut b, &mut ms, 100);
        // Listener's own sockets: four half-open, one in Listen.
        assert_eq!(a.stack.tcp().len(), 5);
        let timeout = HANDSHAKE_TIMEOUT.total_millis() as i64;
        run_for(&mut a, &mut b, &mut ms, timeout + 1000);
        // Every half-open socket was freed; one still listens.
        assert_eq!(a.stack.tcp().len(), 1);
        let c = clients(&mut b, 80, 4);
        run_until(&mut a, &mut b, &mut ms, |_, b| connected_count(b, &c) == 4);
        assert_eq!(accept_all(&mut a, l), 4);
    }

    #[test]
    fn a_syn_flood_evicts_half_open_entries_and_real_clients_get_in() {
        const FLOOD_PER_ROUND: u16 = 50;
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let l = listener(&mut a, 80, 16);
        let mut all = Vec::new();
        let mut servers = Vec::new();
        let take = |a: &mut Host, servers: &mut Vec<i32>| {
            while let Ok((fd, _)) = a.table.accept(&mut a.stack, l) {
                servers.push(fd);
            }
        };
        for round in 0..20u16 {
            // 50 SYNs from never-answering addresses, in and out of the subnet, between
            // two steps, then a real client.
            for i in 0..FLOOD_PER_ROUND {
                let n = round * 50 + i;
                let from = if n % 2 == 0 {
                    Ipv4Addr::new(198, 18, 0, 77)
                } else {
                    Ipv4Addr::new(198, 19, 0, 200 + (n % 50) as u8)
                };
                inject_syn(&mut b, from, 1024 + n, 80);
            }
            all.extend(clients(&mut b, 80, 1));
            run(&mut a, &mut b, &mut ms);
            take(&mut a, &mut servers);
            // The listener never holds more than its backlog and its one spare.
            assert!(
                a.stack.tcp().len() <= 16 + 1 + all.len(),
                "{}",
                a.stack.tcp().len()
            );
        }
        let flood_end = ms;
        run_until(&mut a, &mut b, &mut ms, |a, b| {
            take(a, &mut servers);
            connected_count(b, &all) == all.len()
        });
        assert_eq!(servers.len(), all.len());
        // The queue was full from the first round on: each first SYN, the flood's and the
        // clients', was dropped before smoltcp saw it, and the clients' one resend (1 s
        // later) taken; nobody needed a second one.
        let dropped = a.stack.tcp().first_syns_dropped();
        let flood = u64::from(20 * FLOOD_PER_ROUND);
        assert!(
            (flood - 16..=flood + 20).contains(&dropped),
            "{dropped} dropped"
        );
        assert!(ms - flood_end < 1_500, "{} ms", ms - flood_end);
        // Every connection carries data both ways.
        for &c in &all {
            assert_eq!(b.table.send(&mut b.stack, c, b"ping", None), Ok(4));
        }
        let mut got = 0;
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            for &s in &servers {
                let mut buf = [0u8; 8];
                if let Ok((4, _)) = a.table.recv(&mut a.stack, s, &mut buf, false) {
                    got += 1;
                    assert_eq!(a.table.send(&mut a.stack, s, b"pong", None), Ok(4));
                }
            }
            got == servers.len()
        });
        // After the handshake timeout only the accepted connections and a spare are left.
        let timeout = HANDSHAKE_TIMEOUT.total_millis() as i64;
        run_for(&mut a, &mut b, &mut ms, timeout + 1000);
        assert_eq!(a.stack.tcp().len(), all.len() + 1);
        for &c in &all {
            let mut buf = [0u8; 8];
            assert_eq!(
                b.table.recv(&mut b.stack, c, &mut buf, false),
                Ok((4, None))
            );
        }
        let late = clients(&mut b, 80, 16);
        run_until(&mut a, &mut b, &mut ms, |a, b| {
            accept_all(a, l);
            connected_count(b, &late) == 16
        });
    }

    #[test]
    fn a_thousand_connections_25_at_a_time_with_a_slow_accept_all_get_in_and_work() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let l = listener(&mut a, 80, 128);
        let mut pending: Vec<i32> = Vec::new();
        let mut done: Vec<i32> = Vec::new();
        let mut servers = Vec::new();
        let mut step = 0u64;
        while done.len() + pending.len() < 1000 || !pending.is_empty() {
            while pending.len() < 25 && done.len() + pending.len() < 1000 {
                pending.extend(clients(&mut b, 80, 1));
            }
            run(&mut a, &mut b, &mut ms);
            step += 1;
            // The app accepts only every 20th step, a burst at a time.
            if step.is_multiple_of(20) {
                while let Ok((fd, _)) = a.table.accept(&mut a.stack, l) {
                    servers.push(fd);
                }
            }
            pending.retain(|&c| match b.table.connect_result(&mut b.stack, c) {
                Ok(()) => {
                    done.push(c);
                    false
                }
                Err(Error::WouldBlock) => true,
                Err(e) => panic!("client {c}: {e:?} after {} connected", done.len()),
            });
            assert!(ms < 600_000, "{} connected after {ms} ms", done.len());
        }
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            while let Ok((fd, _)) = a.table.accept(&mut a.stack, l) {
                servers.push(fd);
            }
            servers.len() == 1000
        });
        // 20 s later (past the handshake timeout) every connection still carries data.
        run_for(&mut a, &mut b, &mut ms, 20_000);
        for &c in &done {
            assert_eq!(
                b.table.send(&mut b.stack, c, b"x", None),
                Ok(1),
                "client {c}"
            );
        }
        let mut got = 0;
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            for &s in &servers {
                let mut buf = [0u8; 4];
                if let Ok((1, _)) = a.table.recv(&mut a.stack, s, &mut buf, false) {
                    got += 1;
                }
            }
            got == 1000
        });
    }

    /// Whether `fd` is ready for `want` as `poll` sees it: after a first full look, only
    /// the descriptors the stack woke are looked at again (the kernel's `sys_poll`).
    fn poll_sees(h: &mut Host, fd: i32, readable: bool) -> bool {
        let mut woken = Vec::new();
        h.table.woken(&mut h.stack, &mut woken);
        let r = h.table.readiness(&mut h.stack, fd).unwrap();
        if readable { r.readable } else { r.writable }
    }

    #[test]
    fn a_megabyte_echoed_through_a_poll_loop_arrives_whole() {
        megabyte_echo(0);
    }

    #[test]
    fn a_megabyte_echoed_over_a_lossy_link_arrives_whole() {
        megabyte_echo(97);
    }

    /// With checksum offload on `a`'s NIC, `a` computes and checks no TCP checksum itself,
    /// and what it leaves to the NIC still checks out at `b` (which has no offload).
    #[test]
    fn with_checksum_offload_the_stack_sums_nothing_and_the_peer_finds_every_sum_right() {
        let (mut a, mut b) = hosts();
        a.stack.device_mut().set_checksum_offload(true);
        let mut ms = 0;
        let (_l, server, client) = connected(&mut a, &mut b, &mut ms);
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 13) as u8).collect();
        let mut sent = 0;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        run_until(&mut a, &mut b, &mut ms, |a, b| {
            if let Ok(n) = b.table.send(&mut b.stack, client, &data[sent..], None) {
                sent += n;
            }
            if let Ok((n, _)) = a.table.recv(&mut a.stack, server, &mut buf, false) {
                let echoed = a.table.send(&mut a.stack, server, &buf[..n], None);
                assert_eq!(echoed, Ok(n), "the echo fits the send buffer");
            }
            while let Ok((n, _)) = b.table.recv(&mut b.stack, client, &mut buf, false) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() == data.len()
        });
        assert_eq!(got, data);
        assert_eq!(a.stack.software_checksums().checked, 0, "the NIC vouched");
        let peer = b.stack.software_checksums();
        assert!(peer.checked > 40, "{peer:?}");
        assert_eq!(peer.bad, 0, "every sum the NIC completed is right");
    }

    /// A segment corrupted on the wire is dropped whether or not the receiving NIC has
    /// offloads (it does not vouch for a wrong sum), and TCP sends it again.
    #[test]
    fn a_corrupted_segment_is_dropped_when_no_nic_vouched_for_it() {
        for offload in [false, true] {
            let (mut a, mut b) = hosts();
            a.stack.device_mut().set_checksum_offload(offload);
            let mut ms = 0;
            let (_l, server, client) = connected(&mut a, &mut b, &mut ms);
            b.stack.device_mut().corrupt_next();
            assert_eq!(b.table.send(&mut b.stack, client, b"precious", None), Ok(8));
            let mut buf = [0u8; 16];
            let mut n = 0;
            run_until(&mut a, &mut b, &mut ms, |a, _| {
                if let Ok((got, _)) = a.table.recv(&mut a.stack, server, &mut buf, false) {
                    n = got;
                }
                n > 0
            });
            assert_eq!(&buf[..n], b"precious", "offload {offload}: resent intact");
            let c = a.stack.software_checksums();
            assert_eq!(c.bad, 1, "offload {offload}: {c:?}");
        }
    }

    /// netecho's loop on `a` (send what is pending when writable, else receive when
    /// readable) and a client on `b` that writes 1 MiB and checks every byte it reads back;
    /// each end loses every `lose_every`th frame it sends (0: none; the two ends differ).
    /// Hosts poll only as the kernel does: when a frame waits or `poll_at` is due, so a
    /// stack that forgets a timer or a waiting frame stalls here.
    fn megabyte_echo(lose_every: usize) {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (_l, server, client) = connected(&mut a, &mut b, &mut ms);
        a.stack.device_mut().lose_every(lose_every);
        b.stack
            .device_mut()
            .lose_every(if lose_every == 0 { 0 } else { lose_every + 4 });
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut sent, mut got) = (0usize, 0usize);
        let mut buf = vec![0u8; 2048];
        let (mut start, mut end) = (0usize, 0usize);
        let mut back = vec![0u8; 4096];
        let mut idle = 0;
        while got < data.len() {
            let before = (sent, got);
            if sent < data.len()
                && let Ok(n) = b.table.send(
                    &mut b.stack,
                    client,
                    &data[sent..(sent + 1460 * 4).min(data.len())],
                    None,
                )
            {
                sent += n;
            }
            // netecho: send what is pending when writable, else receive when readable.
            if start < end {
                if poll_sees(&mut a, server, false)
                    && let Ok(n) = a.table.send(&mut a.stack, server, &buf[start..end], None)
                {
                    start += n;
                }
            } else if poll_sees(&mut a, server, true)
                && let Ok((n, _)) = a.table.recv(&mut a.stack, server, &mut buf, false)
            {
                (start, end) = (0, n);
            }
            while let Ok((n, _)) = b.table.recv(&mut b.stack, client, &mut back, false) {
                assert!(n > 0);
                assert_eq!(&back[..n], &data[got..got + n], "at {got}");
                got += n;
            }
            for _ in 0..8 {
                ms += 1;
                let now = Instant::from_millis(ms);
                for h in [&mut a, &mut b] {
                    let due = h.stack.poll_at(now).is_some_and(|t| t <= now);
                    if due || h.stack.device_mut().waiting() > 0 {
                        h.table.poll(&mut h.stack, now, 64);
                    }
                }
            }
            idle = if (sent, got) == before { idle + 1 } else { 0 };
            assert!(
                idle < 7500,
                "stalled: sent {sent}, echoed {got}, server pending {}",
                end - start
            );
        }
    }

    #[test]
    fn an_idle_connection_is_never_timed_out() {
        let (mut a, mut b) = hosts();
        let mut ms = 0;
        let (_listener, server, client) = connected(&mut a, &mut b, &mut ms);
        // Twice the old 60 s timeout without a segment either way.
        run_for(&mut a, &mut b, &mut ms, 130_000);
        assert_eq!(b.table.send(&mut b.stack, client, b"late", None), Ok(4));
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.table.readiness(&mut a.stack, server).unwrap().readable
        });
        let mut buf = [0u8; 8];
        assert_eq!(
            a.table.recv(&mut a.stack, server, &mut buf, false),
            Ok((4, None))
        );
    }

    #[test]
    fn out_of_descriptors_refuses_new_connections_and_keeps_established_ones() {
        let (guest, peer) = stacks();
        let mut a = Host {
            stack: guest,
            table: SocketTable::with_limit(1, 3),
        };
        let mut b = Host {
            stack: peer,
            table: SocketTable::new(2),
        };
        let mut ms = 0;
        let l = listener(&mut a, 80, 8);
        let c = clients(&mut b, 80, 4);
        run_until(&mut a, &mut b, &mut ms, |_, b| connected_count(b, &c) == 4);
        // Listener plus two connections fill the table: the others stay queued.
        let (s1, p1) = a.table.accept(&mut a.stack, l).unwrap();
        let (s2, p2) = a.table.accept(&mut a.stack, l).unwrap();
        assert_eq!(a.table.accept(&mut a.stack, l), Err(Error::TooManySockets));
        let client_of = |b: &Host, peer: SocketAddrV4| {
            *c.iter()
                .find(|&&x| b.table.local_addr(&b.stack, x).unwrap() == peer)
                .unwrap()
        };
        let pairs = [(s1, client_of(&b, p1)), (s2, client_of(&b, p2))];
        for (server, client) in pairs {
            assert_eq!(
                b.table.send(&mut b.stack, client, b"still here", None),
                Ok(10)
            );
            run_until(&mut a, &mut b, &mut ms, |a, _| {
                a.table.readiness(&mut a.stack, server).unwrap().readable
            });
            let mut buf = [0u8; 16];
            assert_eq!(
                a.table.recv(&mut a.stack, server, &mut buf, false),
                Ok((10, None))
            );
        }
        a.table.close(&mut a.stack, s1).unwrap();
        assert!(a.table.accept(&mut a.stack, l).is_ok());
    }

    #[test]
    fn descriptor_limit() {
        let (mut a, _b) = hosts();
        for _ in 0..MAX_SOCKETS {
            a.table.socket(&mut a.stack, Type::Stream, false).unwrap();
        }
        assert_eq!(
            a.table.socket(&mut a.stack, Type::Stream, false),
            Err(Error::TooManySockets)
        );
    }
}

/// The failover device under one stack: the guest's VF and virtio-net on two in-memory links
/// to one peer behind a learning bridge (as the host bridges the two TAPs).
mod failover {
    use super::*;
    use crate::failover::{Failover, Switched};
    use crate::socket::{SocketTable, Type};
    use agent_proto::{Nic, NicStatus, SwitchError};
    use core::net::SocketAddrV4;
    use drivers::net::{Capabilities, Events, NetDevice, RxToken, Stats, TxToken};

    type Guest = Stack<Failover<MemoryNic, MemoryNic>>;

    /// Port of the bridge facing each NIC.
    fn port(nic: Nic) -> usize {
        match nic {
            Nic::Vf => 0,
            Nic::Virtio => 1,
        }
    }

    /// The peer's card: a learning switch over the far ends of the guest's links.
    struct Bridge {
        ports: [MemoryNic; 2],
        /// The port the guest's MAC was last seen on.
        learned: Option<usize>,
        /// Sends unicast to this port whatever was learned (a switch that has it wrong).
        forced: Option<usize>,
        /// The port to read first (alternates).
        next: usize,
    }

    impl Bridge {
        fn forward(&mut self, frame: &[u8]) {
            let to_all = frame[0] & 1 != 0;
            for p in 0..2 {
                let chosen = self.forced.or(self.learned);
                if to_all || chosen.is_none_or(|c| c == p) {
                    let nic = &mut self.ports[p];
                    let token = nic.transmit().expect("memory cards always have a buffer");
                    token.consume(frame.len(), |b| b.copy_from_slice(frame));
                }
            }
        }
    }

    struct BridgeRx(Vec<u8>);

    impl RxToken for BridgeRx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    struct BridgeTx<'a>(&'a mut Bridge);

    impl TxToken for BridgeTx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut frame = vec![0; len];
            let r = f(&mut frame);
            self.0.forward(&frame);
            r
        }
    }

    impl NetDevice for Bridge {
        type RxToken<'a> = BridgeRx;
        type TxToken<'a> = BridgeTx<'a>;

        fn mac_address(&self) -> MacAddress {
            PEER_MAC
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                max_frame_len: 1514,
                max_burst: None,
                tx_checksum: false,
            }
        }

        fn link_up(&self) -> bool {
            true
        }

        fn receive(&mut self) -> Option<(BridgeRx, BridgeTx<'_>)> {
            for i in 0..2 {
                let p = (self.next + i) % 2;
                let frame = self.ports[p]
                    .receive()
                    .map(|(rx, _)| rx.consume(<[u8]>::to_vec));
                if let Some(frame) = frame {
                    if frame[6..12] == GUEST_MAC.0 {
                        self.learned = Some(p);
                    }
                    self.next = 1 - p;
                    return Some((BridgeRx(frame), BridgeTx(self)));
                }
            }
            None
        }

        fn transmit(&mut self) -> Option<BridgeTx<'_>> {
            Some(BridgeTx(self))
        }

        fn ack_interrupt(&mut self) -> Events {
            Events::default()
        }

        fn stats(&self) -> Stats {
            Stats::default()
        }
    }

    /// The two hosts, their sockets, the clock, and what the peer has seen come back.
    struct Net {
        guest: Guest,
        guest_table: SocketTable,
        peer: Stack<Bridge>,
        peer_table: SocketTable,
        ms: i64,
        /// TCP echo: the guest's server and the peer's client descriptors.
        server: i32,
        client: i32,
        /// Bytes the peer sent and the echo it got back.
        sent: Vec<u8>,
        echoed: Vec<u8>,
        ping: smoltcp::iface::SocketHandle,
        /// Sequence numbers of the echo replies the peer received.
        pongs: Vec<u16>,
    }

    /// Guest and peer with the NICs asked for (the VF configured with the guest's MAC), a
    /// TCP connection from the peer to the guest's echo port and an ICMP socket on the peer.
    fn net(vf: bool, virtio: bool) -> Net {
        let (guest_vf, bridge_vf) = memory::pair(GUEST_MAC, PEER_MAC);
        let (guest_virtio, bridge_virtio) = memory::pair(GUEST_MAC, PEER_MAC);
        // As on host-vmm with a plain virtio-net: the VF offloads checksums, virtio-net not.
        guest_vf.set_checksum_offload(true);
        let failover = Failover::new(vf.then_some(guest_vf), virtio.then_some(guest_virtio));
        let bridge = Bridge {
            ports: [bridge_vf, bridge_virtio],
            learned: None,
            forced: None,
            next: 0,
        };
        let now = Instant::from_millis(0);
        let mut guest = Stack::new(failover, config(GUEST_IP), 1, now);
        let mut peer = Stack::new(bridge, config(PEER_IP), 2, now);
        assert_eq!(guest.check_failover(), None);
        assert!(guest.device().link_up());
        peer.check_link();

        let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 2048]);
        let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 2048]);
        let mut socket = icmp::Socket::new(rx, tx);
        socket.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
        let ping = peer.sockets_mut().add(socket);

        let mut guest_table = SocketTable::new(1);
        let mut peer_table = SocketTable::new(2);
        let listener = guest_table.socket(&mut guest, Type::Stream, true).unwrap();
        guest_table
            .bind(
                &mut guest,
                listener,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7),
            )
            .unwrap();
        guest_table.listen(&mut guest, listener, 1).unwrap();
        let client = peer_table.socket(&mut peer, Type::Stream, true).unwrap();
        let _ = peer_table.connect(&mut peer, client, SocketAddrV4::new(GUEST_IP, 7));
        let mut net = Net {
            guest,
            guest_table,
            peer,
            peer_table,
            ms: 0,
            server: -1,
            client,
            sent: Vec::new(),
            echoed: Vec::new(),
            ping,
            pongs: Vec::new(),
        };
        net.run_until("connection accepted", |n| {
            if let Ok((fd, _)) = n.guest_table.accept(&mut n.guest, listener) {
                n.server = fd;
            }
            n.server >= 0 && n.peer_table.connect_result(&mut n.peer, n.client).is_ok()
        });
        net
    }

    impl Net {
        /// One millisecond: both stacks poll, the guest echoes, the peer collects.
        fn step(&mut self) {
            self.ms += 1;
            let now = Instant::from_millis(self.ms);
            self.guest.poll(now);
            self.peer.poll(now);
            let mut buf = [0u8; 4096];
            if self.server >= 0
                && let Ok((n, _)) =
                    self.guest_table
                        .recv(&mut self.guest, self.server, &mut buf, true)
                && n > 0
            {
                // Echo what fits in the send buffer, and consume exactly that.
                let taken = self
                    .guest_table
                    .send(&mut self.guest, self.server, &buf[..n], None)
                    .unwrap_or(0);
                let mut sink = vec![0; taken];
                let _ = self
                    .guest_table
                    .recv(&mut self.guest, self.server, &mut sink, false);
            }
            while let Ok((n, _)) =
                self.peer_table
                    .recv(&mut self.peer, self.client, &mut buf, false)
                && n > 0
            {
                self.echoed.extend_from_slice(&buf[..n]);
            }
            let socket = self.peer.sockets_mut().get_mut::<icmp::Socket>(self.ping);
            while let Ok((reply, _)) = socket.recv() {
                let packet = Icmpv4Packet::new_checked(reply).unwrap();
                let checksums = smoltcp::phy::ChecksumCapabilities::default();
                if let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) =
                    Icmpv4Repr::parse(&packet, &checksums)
                {
                    self.pongs.push(seq_no);
                }
            }
        }

        /// Steps until `done` (at most 5 simulated seconds); returns the milliseconds taken.
        fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Net) -> bool) -> i64 {
            let start = self.ms;
            for _ in 0..5000 {
                if done(self) {
                    return self.ms - start;
                }
                self.step();
            }
            panic!("{what}: not reached after {} ms", self.ms - start);
        }

        /// The peer queues `len` more bytes of the stream and a ping with `seq`.
        fn send(&mut self, len: usize, seq: u16) {
            let start = self.sent.len();
            let chunk: Vec<u8> = (start..start + len).map(|i| (i % 251) as u8).collect();
            let n = self
                .peer_table
                .send(&mut self.peer, self.client, &chunk, None)
                .unwrap();
            assert_eq!(n, len, "the peer's send buffer takes the chunk");
            self.sent.extend_from_slice(&chunk);
            let request = Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq_no: seq,
                data: b"roam failover ping",
            };
            let socket = self.peer.sockets_mut().get_mut::<icmp::Socket>(self.ping);
            let buf = socket
                .send(request.buffer_len(), IpAddress::Ipv4(GUEST_IP))
                .unwrap();
            let checksums = smoltcp::phy::ChecksumCapabilities::default();
            request.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksums);
        }

        /// Runs until everything sent was echoed and ping `seq` answered; returns the time.
        fn settle(&mut self, seq: u16) -> i64 {
            let ms = self.run_until("echo and ping reply", |n| {
                n.echoed.len() == n.sent.len() && n.pongs.contains(&seq)
            });
            assert_eq!(
                self.echoed, self.sent,
                "the stream comes back intact, in order"
            );
            ms
        }

        fn guest_nic(&self, nic: Nic) -> &MemoryNic {
            let f = self.guest.device();
            match nic {
                Nic::Vf => f.vf().expect("VF present"),
                Nic::Virtio => f.virtio().expect("virtio-net present"),
            }
        }

        fn counters(&self, nic: Nic) -> NicStatus {
            self.guest.device().counters(nic)
        }

        /// Gratuitous ARPs the guest sent through `nic`.
        fn garps(&self, nic: Nic) -> usize {
            self.guest_nic(nic)
                .sent()
                .iter()
                .filter(|f| is_garp(f))
                .count()
        }

        /// Whether the last frame `nic` sent is a gratuitous ARP.
        fn last_is_garp(&self, nic: Nic) -> bool {
            self.guest_nic(nic)
                .sent()
                .last()
                .is_some_and(|f| is_garp(f))
        }
    }

    fn is_garp(frame: &[u8]) -> bool {
        arp(frame).is_some_and(|(dst, repr)| {
            dst == EthernetAddress::BROADCAST
                && repr
                    == ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Request,
                        source_hardware_addr: EthernetAddress(GUEST_MAC.0),
                        source_protocol_addr: GUEST_IP,
                        target_hardware_addr: EthernetAddress([0; 6]),
                        target_protocol_addr: GUEST_IP,
                    }
        })
    }

    #[test]
    fn ten_switches_lose_no_byte_and_no_ping() {
        let mut net = net(true, true);
        assert_eq!(net.guest.device().active(), Some(Nic::Vf));
        assert_eq!(net.garps(Nic::Vf), 1, "link up announced on the VF");
        net.send(1000, 100);
        net.settle(100);
        let mut stragglers = 0;
        for round in 0..10u16 {
            let to = if round % 2 == 0 { Nic::Virtio } else { Nic::Vf };
            let from = to.other();
            // Data and a ping leave the peer toward the NIC in use; the switch happens
            // while they are still in flight.
            net.send(3000, round);
            net.peer.poll(Instant::from_millis(net.ms));
            let in_flight = net.guest_nic(from).waiting();
            assert!(in_flight > 0);
            stragglers += in_flight;
            let garps = net.garps(to);
            let announced = net.guest.announcements();
            let from_rx = net.counters(from).rx;
            let switched = net.guest.switch_nic(to).unwrap();
            assert_eq!(
                switched,
                Switched {
                    from: Some(from),
                    to
                }
            );
            assert_eq!(net.garps(to), garps + 1, "one gratuitous ARP per switch");
            assert_eq!(net.guest.announcements(), announced + 1, "and counted");
            assert!(net.last_is_garp(to), "sent at once, before any other frame");
            let from_tx = net.counters(from).tx;
            let ms = net.settle(round);
            // No retransmission timeout was needed (smoltcp's minimum is 1 s).
            assert!(ms < 100, "round {round} took {ms} ms");
            assert_eq!(
                net.counters(from).tx,
                from_tx,
                "nothing left on the old NIC"
            );
            assert!(net.counters(from).rx >= from_rx + in_flight as u64);
            assert_eq!(net.peer.device().learned, Some(port(to)));
        }
        assert!(stragglers >= 10);
        // Checksums were right whichever NIC (offloading or not) carried a segment, replies
        // across NICs included, and the guest summed in software only what virtio-net
        // brought in.
        assert_eq!(net.peer.software_checksums().bad, 0);
        let guest = net.guest.software_checksums();
        assert_eq!(guest.bad, 0);
        assert!(guest.checked > 0 && guest.checked <= net.counters(Nic::Virtio).rx);
        let f = net.guest.device();
        assert_eq!(f.switches(), 10);
        assert_eq!(
            net.pongs.len(),
            11,
            "every ping answered once: {:?}",
            net.pongs
        );
        // Per-NIC counters add up to what crossed each link, and nothing was dropped.
        let bridge = net.peer.device();
        for nic in [Nic::Vf, Nic::Virtio] {
            let c = f.counters(nic);
            let wire = bridge.ports[port(nic)].stats();
            assert_eq!(c.rx, wire.tx_frames, "{nic}: received all the bridge sent");
            assert_eq!(
                c.tx, wire.rx_frames,
                "{nic}: the bridge received all we sent"
            );
            assert_eq!((c.rx_errors, c.tx_dropped), (0, 0));
            assert!(c.present && c.link_up);
            assert!(c.tx > 10, "{nic} carried traffic");
        }
        let total = f.stats();
        assert_eq!(
            total.rx_frames,
            f.counters(Nic::Vf).rx + f.counters(Nic::Virtio).rx
        );
        assert_eq!(
            total.tx_frames,
            f.counters(Nic::Vf).tx + f.counters(Nic::Virtio).tx
        );
    }

    #[test]
    fn vf_link_down_fails_over_to_virtio_and_back() {
        let mut net = net(true, true);
        net.send(500, 1);
        net.settle(1);
        // The VF's link drops; the peer keeps sending toward it, and those frames are lost.
        net.peer.device().ports[0].set_link(false);
        net.send(2000, 2);
        net.peer.poll(Instant::from_millis(net.ms));
        assert!(!net.guest.device().link_up());
        let switched = net.guest.check_failover();
        assert_eq!(
            switched,
            Some(Switched {
                from: Some(Nic::Vf),
                to: Nic::Virtio
            })
        );
        assert!(net.last_is_garp(Nic::Virtio));
        assert!(net.guest.device().link_up());
        // TCP recovers the lost segments by itself over virtio-net; the lost ping stays lost.
        net.send(1000, 3);
        net.settle(3);
        assert_eq!(net.guest.check_failover(), None, "nothing changed");
        // The link comes back: traffic returns to the VF (nobody pinned virtio-net).
        net.peer.device().ports[0].set_link(true);
        let garps = net.garps(Nic::Vf);
        assert_eq!(net.guest.check_failover().map(|s| s.to), Some(Nic::Vf));
        assert_eq!(net.garps(Nic::Vf), garps + 1);
        let vf_tx = net.counters(Nic::Vf).tx;
        let virtio_tx = net.counters(Nic::Virtio).tx;
        net.send(1000, 4);
        net.settle(4);
        assert!(net.counters(Nic::Vf).tx > vf_tx);
        assert_eq!(net.counters(Nic::Virtio).tx, virtio_tx);
        assert_eq!(net.guest.device().switches(), 2);
    }

    #[test]
    fn vf_removed_then_re_added() {
        let mut net = net(true, true);
        net.send(500, 1);
        net.settle(1);
        // The VF driver notices it was unplugged and reports its link down.
        net.guest.device_mut().vf_mut().unwrap().set_removed(true);
        assert_eq!(net.guest.check_failover().map(|s| s.to), Some(Nic::Virtio));
        assert!(net.last_is_garp(Nic::Virtio));
        let old_vf = net.guest.take_vf().expect("the VF was there");
        assert!(!net.counters(Nic::Vf).present);
        assert_eq!(net.guest.switch_nic(Nic::Vf), Err(SwitchError::NotPresent));
        net.send(2000, 2);
        net.settle(2);
        let before = net.counters(Nic::Vf);
        assert_eq!(before.tx, old_vf.stats().tx_frames, "kept after removal");

        // Re-plugged: a freshly probed VF on a new link to the bridge's first port.
        let (guest_vf, bridge_vf) = memory::pair(GUEST_MAC, PEER_MAC);
        net.peer.device_mut().ports[0] = bridge_vf;
        assert!(net.guest.set_vf(Some(guest_vf)).is_none());
        assert_eq!(net.guest.device().active(), Some(Nic::Vf));
        assert_eq!(net.garps(Nic::Vf), 1, "announced on the new VF");
        net.send(2000, 3);
        net.settle(3);
        let after = net.counters(Nic::Vf);
        assert!(after.present && after.tx > before.tx && after.rx > before.rx);
        assert_eq!(net.peer.device().learned, Some(0));

        // A surprise removal of the active VF moves traffic at once.
        let garps = net.garps(Nic::Virtio);
        assert!(net.guest.take_vf().is_some());
        assert_eq!(net.guest.device().active(), Some(Nic::Virtio));
        assert_eq!(net.garps(Nic::Virtio), garps + 1);
        net.send(1000, 4);
        net.settle(4);
        assert_eq!(net.guest.device().switches(), 3);
    }

    #[test]
    fn frames_on_the_inactive_nic_are_answered_on_the_active_one() {
        let mut net = net(true, true);
        // The bridge sends everything for the guest to virtio-net; the VF stays active.
        net.peer.device_mut().forced = Some(port(Nic::Virtio));
        let vf_before = net.counters(Nic::Vf);
        let virtio_before = net.counters(Nic::Virtio);
        for seq in 0..5 {
            net.send(1500, seq);
            net.settle(seq);
        }
        let vf = net.counters(Nic::Vf);
        let virtio = net.counters(Nic::Virtio);
        assert!(
            virtio.rx >= virtio_before.rx + 10,
            "requests came in on virtio-net"
        );
        assert_eq!(vf.rx, vf_before.rx, "nothing came in on the VF");
        assert_eq!(virtio.tx, 0, "nothing ever left on virtio-net");
        assert!(vf.tx >= vf_before.tx + 10, "every answer left on the VF");
        assert_eq!(net.guest.device().switches(), 0);
    }

    #[test]
    fn one_nic_configurations_work() {
        for (nic, vf, virtio) in [(Nic::Vf, true, false), (Nic::Virtio, false, true)] {
            let mut net = net(vf, virtio);
            assert_eq!(net.guest.device().active(), Some(nic));
            net.send(3000, 1);
            net.settle(1);
            assert_eq!(
                net.guest.switch_nic(nic.other()),
                Err(SwitchError::NotPresent)
            );
            assert_eq!(net.guest.check_failover(), None);
            let c = net.counters(nic);
            assert!(c.present && c.link_up && c.rx > 0 && c.tx > 0);
            assert_eq!(net.counters(nic.other()), NicStatus::default());
            assert_eq!(net.guest.device().switches(), 0);
        }
    }

    #[test]
    fn switching_to_a_down_nic_is_refused_and_sends_nothing() {
        let mut net = net(true, true);
        net.peer.device().ports[port(Nic::Virtio)].set_link(false);
        let sent = [Nic::Vf, Nic::Virtio].map(|n| net.guest_nic(n).sent().len());
        assert_eq!(
            net.guest.switch_nic(Nic::Virtio),
            Err(SwitchError::LinkDown)
        );
        assert_eq!(
            [Nic::Vf, Nic::Virtio].map(|n| net.guest_nic(n).sent().len()),
            sent
        );
        assert_eq!(net.guest.device().active(), Some(Nic::Vf));
        // A switch to the NIC already active succeeds, changes nothing, announces nothing.
        let s = net.guest.switch_nic(Nic::Vf).unwrap();
        assert!(!s.changed());
        assert_eq!(net.guest_nic(Nic::Vf).sent().len(), sent[0]);
        assert_eq!(net.guest.device().switches(), 0);
    }

    #[test]
    fn pinned_virtio_keeps_traffic_when_the_vf_returns() {
        let mut net = net(true, true);
        net.guest.switch_nic(Nic::Virtio).unwrap();
        net.peer.device().ports[0].set_link(false);
        assert_eq!(net.guest.check_failover(), None);
        net.peer.device().ports[0].set_link(true);
        assert_eq!(net.guest.check_failover(), None);
        assert_eq!(net.guest.device().active(), Some(Nic::Virtio));
        let vf_tx = net.counters(Nic::Vf).tx;
        net.send(2000, 1);
        net.settle(1);
        assert_eq!(net.counters(Nic::Vf).tx, vf_tx);
        assert_eq!(net.guest.device().switches(), 1);
    }

    #[test]
    fn unpinning_virtio_moves_traffic_back_to_a_usable_vf_now_or_later() {
        let mut net = net(true, true);
        net.guest.switch_nic(Nic::Virtio).unwrap();
        let garps = net.garps(Nic::Vf);
        assert_eq!(
            net.guest.unpin_virtio().map(|s| (s.from, s.to)),
            Some((Some(Nic::Virtio), Nic::Vf))
        );
        assert!(!net.guest.device().pinned_virtio());
        assert_eq!(net.garps(Nic::Vf), garps + 1, "announced on the VF");
        // With the VF's link down, unpinning changes nothing until the link is back.
        net.guest.switch_nic(Nic::Virtio).unwrap();
        net.peer.device().ports[0].set_link(false);
        assert_eq!(net.guest.unpin_virtio(), None);
        assert_eq!(net.guest.device().active(), Some(Nic::Virtio));
        net.peer.device().ports[0].set_link(true);
        assert_eq!(net.guest.check_failover().map(|s| s.to), Some(Nic::Vf));
        net.send(1000, 1);
        net.settle(1);
    }
}
