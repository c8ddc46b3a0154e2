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
    use crate::socket::{Error, FIRST_FD, MAX_SOCKETS, Opt, Shutdown, SocketTable, Type};
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

    /// Runs both hosts (polls, reaping closed sockets) over simulated time `ms`.
    fn run(a: &mut Host, b: &mut Host, ms: &mut i64) {
        for _ in 0..8 {
            *ms += 1;
            let now = Instant::from_millis(*ms);
            a.stack.poll(now);
            b.stack.poll(now);
            a.table.reap(&mut a.stack);
            b.table.reap(&mut b.stack);
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
            a.stack.sockets().iter().count() == 0 && b.stack.sockets().iter().count() == 0
        });
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
        let open = a.stack.sockets().iter().count();
        a.table.close(&mut a.stack, server).unwrap();
        // A reset frees the guest's socket at once; a FIN would leave it in FIN-WAIT
        // while the peer keeps its end open.
        run_until(&mut a, &mut b, &mut ms, |a, _| {
            a.stack.sockets().iter().count() == open - 1
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
