//! The user-space IP-in-IP data path (RFC 2003), for kernels without the `ipip` module.
//!
//! - **Forward** (correspondent → mobile node): the host route `HOME/32 dev <tun>` makes
//!   the kernel hand every packet for a bound home address to the TUN device, after its
//!   usual forwarding (TTL decremented, ICMP errors for it sent). The home agent reads the
//!   packet and sends it unchanged as the payload of a raw `AF_INET`/protocol-4 socket to
//!   the care-of address; the kernel adds the outer header: source = the home agent's
//!   address (the socket is bound to it), TTL 64, protocol 4, **DF cleared** (the kernel
//!   fragments an outer packet larger than the path's MTU instead of dropping it; the inner
//!   packet keeps its own DF, so end-to-end path-MTU discovery still sees the inner one
//!   through the TUN's MTU), TOS 0.
//! - **Reverse** (RFC 3024; mobile node → correspondent): the raw socket receives protocol-4
//!   packets addressed to the home agent. One whose outer source is a bound care-of address
//!   and whose inner source is the home address bound there (with T) is decapsulated and
//!   written into the TUN; the kernel forwards it as if it came in on that device (its
//!   `rp_filter` is set loose, so a correspondent's address is a fine destination). Anything
//!   else is dropped and counted.
//!
//! The TUN's MTU is the home link's, so a packet the kernel hands over fits the home link
//! and its IP-in-IP form is 20 bytes larger (the WAN path must carry that, e.g. MTU 1600,
//! or the outer packet is fragmented).

use super::sys::{self, RawIp};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

/// IP protocol number of IP-in-IP (RFC 2003).
pub const IPPROTO_IPIP: u8 = 4;
/// The outer header's TTL.
pub const OUTER_TTL: u8 = 64;
/// Packets handled per readiness before the loop looks at its other sources again.
const BATCH: usize = 64;

/// The source and destination of an IPv4 packet, if it is a plausible one (version 4, a
/// whole header).
pub fn ipv4_addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0F) * 4;
    if ihl < 20 || ihl > packet.len() {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src, dst))
}

/// Why a received packet was not decapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTunnelled {
    /// The outer header is broken or not IP-in-IP.
    BadOuter,
    /// The inner packet is not a whole IPv4 packet.
    BadInner,
}

/// An IP-in-IP packet as the raw socket receives it (outer header first), taken apart:
/// `(outer source, inner source, inner packet)`.
pub fn decapsulate(packet: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, &[u8]), NotTunnelled> {
    let (outer_src, _) = ipv4_addrs(packet).ok_or(NotTunnelled::BadOuter)?;
    let ihl = usize::from(packet[0] & 0x0F) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if packet[9] != IPPROTO_IPIP || total < ihl || total > packet.len() {
        return Err(NotTunnelled::BadOuter);
    }
    let inner = &packet[ihl..total];
    let (inner_src, _) = ipv4_addrs(inner).ok_or(NotTunnelled::BadInner)?;
    let inner_total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
    if inner_total < 20 || inner_total > inner.len() {
        return Err(NotTunnelled::BadInner);
    }
    Ok((outer_src, inner_src, &inner[..inner_total]))
}

/// What the data path did, for the log at exit and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets tunnelled to a care-of address.
    pub encapsulated: u64,
    /// Reverse-tunnelled packets forwarded.
    pub decapsulated: u64,
    /// Packets from the TUN for an address with no binding (a route left behind).
    pub unbound: u64,
    /// Tunnelled packets from an address that is not that home address's care-of address,
    /// without reverse tunnelling, or malformed.
    pub refused: u64,
    /// Send or write errors.
    pub errors: u64,
}

/// Which half of a [`Tunnel`] could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The TUN device.
    Tun(io::Error),
    /// The raw IP-in-IP socket.
    Raw(io::Error),
}

/// The TUN device and the raw IP-in-IP socket.
#[derive(Debug)]
pub struct Tunnel {
    tun: File,
    raw: RawIp,
    name: String,
    buf: Vec<u8>,
    /// What happened so far.
    pub counters: Counters,
}

impl Tunnel {
    /// Creates TUN `name` and the raw socket bound to `local` (the home agent's address).
    pub fn open(name: &str, local: Ipv4Addr) -> Result<Tunnel, OpenError> {
        let tun = sys::open_tun(name).map_err(OpenError::Tun)?;
        let raw = RawIp::open(IPPROTO_IPIP, local, OUTER_TTL, false).map_err(OpenError::Raw)?;
        Ok(Tunnel {
            tun,
            raw,
            name: name.to_owned(),
            buf: vec![0u8; 65536],
            counters: Counters::default(),
        })
    }

    /// The TUN's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Readable when the kernel routed packets into the TUN.
    pub fn tun_fd(&self) -> RawFd {
        self.tun.as_raw_fd()
    }

    /// Readable when IP-in-IP packets arrived for the home agent.
    pub fn raw_fd(&self) -> RawFd {
        self.raw.as_raw_fd()
    }

    /// Tunnels what waits on the TUN (up to a batch) to the care-of address `care_of` gives
    /// for each packet's destination.
    pub fn forward(&mut self, care_of: impl Fn(Ipv4Addr) -> Option<Ipv4Addr>) {
        for _ in 0..BATCH {
            let n = match self.tun.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.counters.errors += 1;
                    log::warn!("home agent: reading {}: {e}", self.name);
                    return;
                }
            };
            let packet = &self.buf[..n];
            let Some(to) = ipv4_addrs(packet).and_then(|(_, dst)| care_of(dst)) else {
                self.counters.unbound += 1;
                continue;
            };
            match self.raw.send_to(packet, to) {
                Ok(_) => self.counters.encapsulated += 1,
                Err(e) => {
                    self.counters.errors += 1;
                    log::debug!("home agent: tunnelling to {to}: {e}");
                }
            }
        }
    }

    /// Decapsulates what waits on the raw socket (up to a batch): a packet goes into the TUN
    /// when `allowed(outer source, inner source)`.
    pub fn reverse(&mut self, allowed: impl Fn(Ipv4Addr, Ipv4Addr) -> bool) {
        for _ in 0..BATCH {
            let n = match self.raw.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.counters.errors += 1;
                    log::warn!("home agent: receiving IP-in-IP: {e}");
                    return;
                }
            };
            let inner = match decapsulate(&self.buf[..n]) {
                Ok((care_of, home, inner)) if allowed(care_of, home) => inner,
                _ => {
                    self.counters.refused += 1;
                    continue;
                }
            };
            // One write is one packet: the TUN takes it whole or not at all.
            match self.tun.write(inner) {
                Ok(n) if n == inner.len() => self.counters.decapsulated += 1,
                Ok(_) => self.counters.errors += 1,
                Err(e) => {
                    self.counters.errors += 1;
                    log::debug!("home agent: writing to {}: {e}", self.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header of `total` bytes from `src` to `dst` with `protocol`.
    fn header(src: [u8; 4], dst: [u8; 4], protocol: u8, total: u16) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    fn echo_request(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = header(src, dst, 1, 28);
        p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        p
    }

    #[test]
    fn addresses_come_from_a_whole_ipv4_header_only() {
        let p = echo_request([198, 18, 3, 2], [198, 18, 0, 10]);
        assert_eq!(
            ipv4_addrs(&p),
            Some((Ipv4Addr::new(198, 18, 3, 2), Ipv4Addr::new(198, 18, 0, 10)))
        );
        assert_eq!(ipv4_addrs(&p[..19]), None);
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert_eq!(ipv4_addrs(&v6), None);
        let mut long_ihl = p.clone();
        long_ihl[0] = 0x4F; // 60-byte header in a 28-byte packet
        assert_eq!(ipv4_addrs(&long_ihl), None);
    }

    #[test]
    fn a_reverse_tunnelled_packet_yields_its_care_of_home_and_inner_packet() {
        let inner = echo_request([198, 18, 0, 10], [198, 18, 3, 2]);
        let mut outer = header([198, 18, 21, 2], [198, 18, 20, 2], 4, 48);
        outer.extend_from_slice(&inner);
        // Trailing bytes past the total length (link padding) are not part of it.
        outer.extend_from_slice(&[0xEE; 6]);
        let (care_of, home, got) = decapsulate(&outer).unwrap();
        assert_eq!(care_of, Ipv4Addr::new(198, 18, 21, 2));
        assert_eq!(home, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(got, &inner[..]);
    }

    #[test]
    fn broken_or_foreign_packets_are_not_decapsulated() {
        let inner = echo_request([198, 18, 0, 10], [198, 18, 3, 2]);
        let mut gre = header([198, 18, 21, 2], [198, 18, 20, 2], 47, 48);
        gre.extend_from_slice(&inner);
        assert_eq!(decapsulate(&gre), Err(NotTunnelled::BadOuter));
        let mut short = header([198, 18, 21, 2], [198, 18, 20, 2], 4, 200);
        short.extend_from_slice(&inner);
        assert_eq!(decapsulate(&short), Err(NotTunnelled::BadOuter));
        let mut cut = header([198, 18, 21, 2], [198, 18, 20, 2], 4, 40);
        cut.extend_from_slice(&inner[..20]);
        assert_eq!(decapsulate(&cut), Err(NotTunnelled::BadInner));
        let mut lying = header([198, 18, 21, 2], [198, 18, 20, 2], 4, 48);
        let mut bad_inner = inner.clone();
        bad_inner[2..4].copy_from_slice(&500u16.to_be_bytes());
        lying.extend_from_slice(&bad_inner);
        assert_eq!(decapsulate(&lying), Err(NotTunnelled::BadInner));
        assert_eq!(decapsulate(&[0x45; 10]), Err(NotTunnelled::BadOuter));
    }
}
