//! The guest's Ethernet frames and the IP-in-IP packets of its tunnel to the home agent:
//! what the destination's device path does for a guest away from home, as plain functions
//! over bytes (every length and field is checked; nothing here panics on any input).
//!
//! Out of the guest: an IPv4 frame loses its Ethernet header (and any padding beyond the
//! IP total length) and goes into the tunnel; an ARP request for any address but the
//! guest's own is answered as if by its gateway, so the guest needs no change; anything
//! else is dropped. Into the guest: an IP-in-IP packet from the home agent whose inner
//! destination is the guest's home address gets an Ethernet header to the guest's MAC.

use std::net::Ipv4Addr;

/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
const ETHERTYPE_ARP: u16 = 0x0806;
/// IP protocol number of IP-in-IP (RFC 2003).
pub const IPPROTO_IPIP: u8 = 4;
/// Ethernet header length.
const ETH_LEN: usize = 14;
/// An ARP packet for IPv4 over Ethernet.
const ARP_LEN: usize = 28;
/// The shortest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;

/// The MAC the guest sees for every address it asks about while away from home: locally
/// administered, Roam's own.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x52, 0x4f, 0x41, 0x4d, 0x01];

/// What to do with a frame the guest sent.
#[derive(Debug, PartialEq, Eq)]
pub enum FromGuest<'a> {
    /// This IPv4 packet goes into the tunnel.
    Tunnel(&'a [u8]),
    /// This ARP reply goes back to the guest.
    Answer(Vec<u8>),
    /// Nothing to do (not IPv4 or ARP, malformed, or about the guest itself).
    Drop,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The IPv4 packet at the start of `b`, cut to its total length; `None` if it is not one.
fn ipv4_packet(b: &[u8]) -> Option<&[u8]> {
    let first = *b.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return None;
    }
    let total = usize::from(u16_at(b, 2)?);
    if total < ihl || total > b.len() {
        return None;
    }
    Some(&b[..total])
}

/// Decides what happens to `frame`, sent by the guest whose home address is `home`.
pub fn from_guest(frame: &[u8], home: Ipv4Addr) -> FromGuest<'_> {
    let Some(ethertype) = u16_at(frame, 12) else {
        return FromGuest::Drop;
    };
    let payload = &frame[ETH_LEN.min(frame.len())..];
    match ethertype {
        ETHERTYPE_IPV4 => match ipv4_packet(payload) {
            Some(p) => FromGuest::Tunnel(p),
            None => FromGuest::Drop,
        },
        ETHERTYPE_ARP => {
            arp_answer(frame, payload, home).map_or(FromGuest::Drop, FromGuest::Answer)
        }
        _ => FromGuest::Drop,
    }
}

/// The reply to an ARP request in `arp` (from the frame `frame`), as the gateway would give.
fn arp_answer(frame: &[u8], arp: &[u8], home: Ipv4Addr) -> Option<Vec<u8>> {
    if frame.len() < ETH_LEN {
        return None;
    }
    let request = parse_arp_request(arp)?;
    // The guest probing its own address (or announcing it) needs no answer.
    if request.target_ip == home || request.target_ip == request.sender_ip {
        return None;
    }
    Some(arp_reply(&request, GATEWAY_MAC))
}

/// An ARP request for an IPv4 address over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRequest {
    /// Who asks.
    pub sender_mac: [u8; 6],
    /// Its address.
    pub sender_ip: Ipv4Addr,
    /// The address asked about.
    pub target_ip: Ipv4Addr,
}

/// The ARP request in the Ethernet frame `frame`, if it carries one.
pub fn arp_request(frame: &[u8]) -> Option<ArpRequest> {
    if u16_at(frame, 12)? != ETHERTYPE_ARP {
        return None;
    }
    parse_arp_request(frame.get(ETH_LEN..)?)
}

/// The request in the ARP packet `arp` (Ethernet, IPv4, operation 1).
fn parse_arp_request(arp: &[u8]) -> Option<ArpRequest> {
    if arp.len() < ARP_LEN
        || u16_at(arp, 0)? != 1 // Ethernet
        || u16_at(arp, 2)? != ETHERTYPE_IPV4
        || arp[4] != 6
        || arp[5] != 4
        || u16_at(arp, 6)? != 1
    // request
    {
        return None;
    }
    Some(ArpRequest {
        sender_mac: arp[8..14].try_into().ok()?,
        sender_ip: ip_at(arp, 14)?,
        target_ip: ip_at(arp, 24)?,
    })
}

/// The ARP reply to `request` saying its target address is at `mac`: an Ethernet frame to
/// the asker, padded to the shortest frame.
pub fn arp_reply(request: &ArpRequest, mac: [u8; 6]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(MIN_FRAME);
    reply.extend_from_slice(&request.sender_mac);
    reply.extend_from_slice(&mac);
    reply.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&mac);
    reply.extend_from_slice(&request.target_ip.octets());
    reply.extend_from_slice(&request.sender_mac);
    reply.extend_from_slice(&request.sender_ip.octets());
    reply.resize(MIN_FRAME, 0);
    reply
}

/// The IPv4 packet in the Ethernet frame `frame` (cut to its total length), if it is one.
pub fn ipv4_in(frame: &[u8]) -> Option<&[u8]> {
    if u16_at(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    ipv4_packet(frame.get(ETH_LEN..)?)
}

/// The destination address of the IPv4 packet `packet` (as [`ipv4_in`] gives it).
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    ip_at(packet, 16)
}

/// An Ethernet frame from `src` to `dst` carrying the IPv4 packet `packet`.
pub fn ipv4_frame(dst: [u8; 6], src: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_LEN + packet.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    frame.extend_from_slice(packet);
    frame
}

/// The frame for the guest (MAC `guest_mac`, home address `home`) carried by `packet`, an
/// IPv4 packet as a raw socket of protocol 4 reads it (outer header first) that must come
/// from `home_agent`; `None` for anything else.
pub fn to_guest(
    packet: &[u8],
    home_agent: Ipv4Addr,
    home: Ipv4Addr,
    guest_mac: [u8; 6],
) -> Option<Vec<u8>> {
    let outer = ipv4_packet(packet)?;
    let ihl = usize::from(outer[0] & 0x0f) * 4;
    if outer[9] != IPPROTO_IPIP || ip_at(outer, 12)? != home_agent {
        return None;
    }
    let inner = ipv4_packet(&outer[ihl..])?;
    if ip_at(inner, 16)? != home {
        return None;
    }
    Some(ipv4_frame(guest_mac, GATEWAY_MAC, inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const HA: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 2);
    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A minimal IPv4 header (no checksum: nothing here checks it) and payload.
    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&GUEST_MAC);
        a.extend_from_slice(&HOME.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        eth(ETHERTYPE_ARP, &a)
    }

    #[test]
    fn an_ipv4_frame_goes_into_the_tunnel_without_its_padding() {
        let packet = ipv4(HOME, GW, 1, &[8, 0, 0, 0]);
        let mut frame = eth(ETHERTYPE_IPV4, &packet);
        frame.resize(60, 0xee);
        assert_eq!(from_guest(&frame, HOME), FromGuest::Tunnel(&packet[..]));
    }

    #[test]
    fn the_gateway_is_answered_with_roams_mac_and_the_guest_itself_is_not() {
        let FromGuest::Answer(reply) = from_guest(&arp_request(GW), HOME) else {
            panic!("no answer")
        };
        assert_eq!(&reply[0..6], &GUEST_MAC);
        assert_eq!(&reply[12..14], &[0x08, 0x06]);
        assert_eq!(&reply[20..22], &[0, 2], "a reply");
        assert_eq!(&reply[22..28], &GATEWAY_MAC);
        assert_eq!(&reply[28..32], &GW.octets());
        assert_eq!(&reply[38..42], &HOME.octets());
        assert_eq!(from_guest(&arp_request(HOME), HOME), FromGuest::Drop);
        assert_eq!(from_guest(&eth(0x86dd, &[0; 40]), HOME), FromGuest::Drop);
    }

    #[test]
    fn only_the_home_agents_packets_for_the_home_address_reach_the_guest() {
        let inner = ipv4(GW, HOME, 1, &[0, 0, 0, 0]);
        let outer = ipv4(HA, Ipv4Addr::new(198, 18, 21, 2), IPPROTO_IPIP, &inner);
        let frame = to_guest(&outer, HA, HOME, GUEST_MAC).expect("delivered");
        assert_eq!(&frame[0..6], &GUEST_MAC);
        assert_eq!(&frame[14..], &inner[..]);
        let stranger = ipv4(Ipv4Addr::new(198, 18, 3, 2), HOME, IPPROTO_IPIP, &inner);
        assert_eq!(to_guest(&stranger, HA, HOME, GUEST_MAC), None);
        let other = ipv4(HA, HOME, IPPROTO_IPIP, &ipv4(GW, GW, 1, &[]));
        assert_eq!(to_guest(&other, HA, HOME, GUEST_MAC), None);
        let not_ipip = ipv4(HA, HOME, 17, &inner);
        assert_eq!(to_guest(&not_ipip, HA, HOME, GUEST_MAC), None);
        // An inner length beyond the packet is refused.
        let mut short = outer.clone();
        short.truncate(outer.len() - 2);
        let len = short.len() as u16;
        short[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(to_guest(&short, HA, HOME, GUEST_MAC), None);
    }

    proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = from_guest(&bytes, HOME);
            let _ = to_guest(&bytes, HA, HOME, GUEST_MAC);
        }

        #[test]
        fn what_goes_in_comes_out(payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let inner = ipv4(GW, HOME, 6, &payload);
            let outer = ipv4(HA, HOME, IPPROTO_IPIP, &inner);
            let frame = to_guest(&outer, HA, HOME, GUEST_MAC).unwrap();
            prop_assert_eq!(from_guest(&frame, HOME), FromGuest::Tunnel(&inner[..]));
        }
    }
}
