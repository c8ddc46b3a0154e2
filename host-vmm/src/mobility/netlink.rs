//! rtnetlink (NETLINK_ROUTE), just what the home agent configures: host routes into its TUN,
//! neighbour proxy entries on the home link, a link's state and MTU, and reading a link's
//! index, MAC and addresses. No `ip` is run.
//!
//! [`Request`] builds a message (the 16-byte `nlmsghdr`, a family header, then attributes,
//! each padded to 4 bytes; integers in host order, addresses in network order, as
//! linux/netlink.h and linux/rtnetlink.h lay them out); [`parse_messages`] splits what the
//! kernel answers and [`Ack`] reads an `NLMSG_ERROR`, whose error 0 is the acknowledgement.
//! [`Netlink`] sends one request at a time on its socket and waits for its answer, matched
//! by sequence number. Every error names the request, the errno and, when the kernel gave
//! one (extended ACK), its own message.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::time::Duration;

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR`: extended-ACK attributes follow the echoed header.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// In an `NLMSG_ERROR`: only the header of the request is echoed.
const NLM_F_CAPPED: u16 = 0x100;
const NLMSGERR_ATTR_MSG: u16 = 1;

// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
// linux/neighbour.h
const NDA_DST: u16 = 1;
const NTF_PROXY: u8 = 0x08;
const NUD_PERMANENT: u16 = 0x80;
// linux/if_link.h, linux/if_addr.h
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 0x1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;

/// How long one answer may take before the request counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Rounds `len` up to netlink's 4-byte alignment.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One netlink message being built: header, family header, attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    kind: u16,
    flags: u16,
    buf: Vec<u8>,
}

impl Request {
    /// A request of message type `kind` with `flags` (`NLM_F_REQUEST` is always set) and the
    /// family header `header`.
    pub(super) fn new(kind: u16, flags: u16, header: &[u8]) -> Request {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(header);
        buf.resize(align(buf.len()), 0);
        Request { kind, flags, buf }
    }

    /// Appends attribute `kind` with `value` (`rtattr`: length, type, value, padding).
    pub(super) fn attr(mut self, kind: u16, value: &[u8]) -> Request {
        let len = 4 + value.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    /// The bytes to send, with the total length and sequence number `seq` filled in.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out = self.buf.clone();
        let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        out
    }

    /// The message type's name, for errors.
    pub fn name(&self) -> &'static str {
        match self.kind {
            RTM_NEWLINK => "RTM_NEWLINK",
            RTM_GETLINK => "RTM_GETLINK",
            RTM_GETADDR => "RTM_GETADDR",
            RTM_NEWROUTE => "RTM_NEWROUTE",
            RTM_DELROUTE => "RTM_DELROUTE",
            RTM_NEWNEIGH => "RTM_NEWNEIGH",
            RTM_DELNEIGH => "RTM_DELNEIGH",
            _ => "netlink request",
        }
    }

    /// `rtmsg` for an IPv4 /32 in the main table.
    fn rtmsg_host(protocol: u8, scope: u8, kind: u8) -> [u8; 12] {
        [
            AF_INET,
            32,
            0,
            0,
            RT_TABLE_MAIN,
            protocol,
            scope,
            kind,
            0,
            0,
            0,
            0,
        ]
    }

    /// `ip route replace ADDR/32 dev IFINDEX` (scope link, proto static, main table).
    pub fn replace_host_route(addr: Ipv4Addr, ifindex: u32) -> Request {
        Request::new(
            RTM_NEWROUTE,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &Request::rtmsg_host(RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST),
        )
        .attr(RTA_DST, &addr.octets())
        .attr(RTA_OIF, &ifindex.to_ne_bytes())
    }

    /// `ip route del ADDR/32 dev IFINDEX` (any protocol, scope and type).
    pub fn delete_host_route(addr: Ipv4Addr, ifindex: u32) -> Request {
        Request::new(
            RTM_DELROUTE,
            NLM_F_ACK,
            &Request::rtmsg_host(0, RT_SCOPE_NOWHERE, 0),
        )
        .attr(RTA_DST, &addr.octets())
        .attr(RTA_OIF, &ifindex.to_ne_bytes())
    }

    /// `ndmsg` for a proxy entry on `ifindex`.
    fn ndmsg_proxy(ifindex: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = AF_INET;
        h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        h[8..10].copy_from_slice(&NUD_PERMANENT.to_ne_bytes());
        h[10] = NTF_PROXY;
        h
    }

    /// `ip neigh replace proxy ADDR dev IFINDEX`: the kernel answers ARP for ADDR there.
    pub fn add_proxy_neigh(addr: Ipv4Addr, ifindex: u32) -> Request {
        Request::new(
            RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &Request::ndmsg_proxy(ifindex),
        )
        .attr(NDA_DST, &addr.octets())
    }

    /// `ip neigh del proxy ADDR dev IFINDEX`.
    pub fn delete_proxy_neigh(addr: Ipv4Addr, ifindex: u32) -> Request {
        Request::new(RTM_DELNEIGH, NLM_F_ACK, &Request::ndmsg_proxy(ifindex))
            .attr(NDA_DST, &addr.octets())
    }

    /// `ifinfomsg` for link `ifindex` changing the flags in `change` to `flags`.
    fn ifinfomsg(ifindex: u32, flags: u32, change: u32) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0] = AF_UNSPEC;
        h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        h[8..12].copy_from_slice(&flags.to_ne_bytes());
        h[12..16].copy_from_slice(&change.to_ne_bytes());
        h
    }

    /// `ip link set IFINDEX up mtu MTU`.
    pub fn link_up(ifindex: u32, mtu: u32) -> Request {
        Request::new(
            RTM_NEWLINK,
            NLM_F_ACK,
            &Request::ifinfomsg(ifindex, IFF_UP, IFF_UP),
        )
        .attr(IFLA_MTU, &mtu.to_ne_bytes())
    }

    /// `ip link show NAME`: answered with one `RTM_NEWLINK`.
    pub fn get_link(name: &str) -> Request {
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        Request::new(RTM_GETLINK, 0, &Request::ifinfomsg(0, 0, 0)).attr(IFLA_IFNAME, &value)
    }

    /// `ip -4 addr show`: a dump of every IPv4 address.
    pub fn dump_ipv4_addrs() -> Request {
        Request::new(RTM_GETADDR, NLM_F_DUMP, &[AF_INET, 0, 0, 0, 0, 0, 0, 0])
    }
}

/// One message of an answer: its type, flags and payload (after the 16-byte header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

/// A malformed answer from the kernel (which would be a bug there or here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink answer: {0}")]
pub struct Malformed(&'static str);

/// Splits a datagram from the kernel into its messages.
pub fn parse_messages(buf: &[u8]) -> Result<Vec<Message<'_>>, Malformed> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(Malformed("a header is cut short"));
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Malformed("a message length runs past the datagram"));
        }
        out.push(Message {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// The attributes (`rtattr`/`nlattr`: type, value) in `buf`, stopping at the first that does
/// not fit.
pub fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 4 || len > rest.len() {
            break;
        }
        // The top two bits are the nested and byte-order flags.
        out.push((
            u16::from_ne_bytes([rest[2], rest[3]]) & 0x3FFF,
            &rest[4..len],
        ));
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

/// The content of an `NLMSG_ERROR`: 0 acknowledges, else a negative errno, with the
/// kernel's text when it sent one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// `-errno`, or 0.
    pub error: i32,
    /// `NLMSGERR_ATTR_MSG`, when present.
    pub message: Option<String>,
}

impl Ack {
    /// Reads the payload of an `NLMSG_ERROR` message with `flags`.
    pub fn parse(flags: u16, payload: &[u8]) -> Result<Ack, Malformed> {
        if payload.len() < 4 + NLMSG_HDRLEN {
            return Err(Malformed("an error message is cut short"));
        }
        let error = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let mut message = None;
        if flags & NLM_F_ACK_TLVS != 0 {
            // After the error code: the request's header, and its body unless capped.
            let echoed = if flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize
            };
            let tlvs = payload.get(4 + align(echoed)..).unwrap_or(&[]);
            message = attrs(tlvs)
                .into_iter()
                .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| {
                    String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
                })
                .filter(|m| !m.is_empty());
        }
        Ok(Ack { error, message })
    }
}

/// What a link is, as `RTM_NEWLINK` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// `ifi_type` (`ARPHRD_*`: 1 is Ethernet).
    pub kind: u16,
    /// `ifi_index`.
    pub index: u32,
    /// `IFLA_ADDRESS` (the MAC for Ethernet; empty for a TUN).
    pub address: Vec<u8>,
    /// `IFLA_MTU`.
    pub mtu: u32,
}

impl Link {
    /// Reads an `RTM_NEWLINK` payload.
    pub fn parse(payload: &[u8]) -> Result<Link, Malformed> {
        if payload.len() < 16 {
            return Err(Malformed("an ifinfomsg is cut short"));
        }
        let index = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
        let mut link = Link {
            kind: u16::from_ne_bytes([payload[2], payload[3]]),
            index,
            address: Vec::new(),
            mtu: 0,
        };
        for (kind, value) in attrs(&payload[16..]) {
            match kind {
                IFLA_ADDRESS => link.address = value.to_vec(),
                IFLA_MTU if value.len() == 4 => {
                    link.mtu = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
                }
                _ => {}
            }
        }
        Ok(link)
    }
}

/// Reads an `RTM_NEWADDR` payload: the link index and the IPv4 address, if it is one.
fn parse_addr(payload: &[u8]) -> Option<(u32, Ipv4Addr)> {
    if payload.len() < 8 || payload[0] != AF_INET {
        return None;
    }
    let index = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let found = attrs(&payload[8..]);
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point.
    [IFA_LOCAL, IFA_ADDRESS].iter().find_map(|want| {
        found.iter().find_map(|(kind, v)| {
            (kind == want && v.len() == 4).then(|| (index, Ipv4Addr::new(v[0], v[1], v[2], v[3])))
        })
    })
}

/// A request the kernel refused or that got no answer.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    /// The kernel answered with an errno.
    #[error("{request} {what}: {}{}", describe(*.errno), .message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        /// The request's type name.
        request: &'static str,
        /// What it was about (`198.18.0.10/32 dev 7`).
        what: String,
        /// The positive errno.
        errno: i32,
        /// The kernel's extended-ACK text.
        message: Option<String>,
    },
    /// No answer came in time, or it made no sense.
    #[error("{request} {what}: {reason}")]
    NoAnswer {
        /// The request's type name.
        request: &'static str,
        /// What it was about.
        what: String,
        /// Why.
        reason: String,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// An errno as its symbol and text (`EPERM: Operation not permitted`).
fn describe(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    if name.is_empty() {
        text
    } else {
        format!("{name}: {text}")
    }
}

/// A NETLINK_ROUTE socket, one request at a time.
#[derive(Debug)]
pub struct Netlink {
    socket: File,
    seq: u32,
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let socket = super::sys::netlink_route(ANSWER_TIMEOUT).map_err(NetlinkError::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `request` and returns every message answering it (up to `NLMSG_DONE` for a dump,
    /// else the one answer), each as owned `(type, flags, payload)`.
    fn exchange(
        &mut self,
        request: &Request,
        what: &str,
    ) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let no_answer = |reason: String| NetlinkError::NoAnswer {
            request: request.name(),
            what: what.to_owned(),
            reason,
        };
        self.socket
            .write_all(&request.encode(seq))
            .map_err(|e| no_answer(format!("cannot send: {e}")))?;
        let dump = request.flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .read(&mut buf)
                .map_err(|e| no_answer(format!("no answer: {e}")))?;
            let messages = parse_messages(&buf[..n]).map_err(|e| no_answer(e.to_string()))?;
            for m in messages {
                if m.seq != seq {
                    // A late answer to an earlier request that timed out.
                    continue;
                }
                match m.kind {
                    NLMSG_ERROR => {
                        let ack =
                            Ack::parse(m.flags, m.payload).map_err(|e| no_answer(e.to_string()))?;
                        if ack.error != 0 {
                            return Err(NetlinkError::Refused {
                                request: request.name(),
                                what: what.to_owned(),
                                errno: -ack.error,
                                message: ack.message,
                            });
                        }
                        return Ok(answers);
                    }
                    NLMSG_DONE => return Ok(answers),
                    kind => {
                        answers.push((kind, m.payload.to_vec()));
                        if !dump {
                            return Ok(answers);
                        }
                    }
                }
            }
        }
    }

    /// Sends `request` (one with `NLM_F_ACK`) and waits for its acknowledgement.
    pub fn execute(&mut self, request: &Request, what: &str) -> Result<(), NetlinkError> {
        self.exchange(request, what).map(|_| ())
    }

    /// Index, MAC and MTU of link `name`.
    pub fn link(&mut self, name: &str) -> Result<Link, NetlinkError> {
        let request = Request::get_link(name);
        let answers = self.exchange(&request, name)?;
        let bad = |reason: &str| NetlinkError::NoAnswer {
            request: request.name(),
            what: name.to_owned(),
            reason: reason.to_owned(),
        };
        let (_, payload) = answers
            .into_iter()
            .find(|(kind, _)| *kind == RTM_NEWLINK)
            .ok_or_else(|| bad("no link in the answer"))?;
        Link::parse(&payload).map_err(|e| bad(&e.to_string()))
    }

    /// The IPv4 addresses of link `ifindex`.
    pub fn ipv4_addrs(&mut self, ifindex: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let answers = self.exchange(&Request::dump_ipv4_addrs(), "")?;
        Ok(answers
            .iter()
            .filter(|(kind, _)| *kind == RTM_NEWADDR)
            .filter_map(|(_, payload)| parse_addr(payload))
            .filter(|(index, _)| *index == ifindex)
            .map(|(_, addr)| addr)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn u32s(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    /// The header `Request::encode` writes: length, type, flags, seq, port 0.
    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&u32s(len));
        h.extend_from_slice(&u16s(kind));
        h.extend_from_slice(&u16s(flags));
        h.extend_from_slice(&u32s(seq));
        h.extend_from_slice(&u32s(0));
        h
    }

    #[test]
    fn a_host_route_into_the_tun_is_encoded_as_iproute2_would() {
        let bytes = Request::replace_host_route(Ipv4Addr::new(198, 18, 0, 10), 7).encode(42);
        let mut want = header(16 + 12 + 8 + 8, 24, 0x1 | 0x4 | 0x400 | 0x100, 42);
        // rtmsg: AF_INET, /32, src 0, tos 0, main table, proto static, scope link, unicast.
        want.extend_from_slice(&[2, 32, 0, 0, 254, 4, 253, 1, 0, 0, 0, 0]);
        // RTA_DST (1): 198.18.0.10; RTA_OIF (4): 7.
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(1));
        want.extend_from_slice(&[198, 18, 0, 10]);
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(4));
        want.extend_from_slice(&u32s(7));
        assert_eq!(bytes, want);
    }

    #[test]
    fn a_route_delete_matches_any_scope_protocol_and_type() {
        let bytes = Request::delete_host_route(Ipv4Addr::new(198, 18, 0, 10), 7).encode(1);
        assert_eq!(&bytes[4..6], &u16s(25));
        assert_eq!(&bytes[6..8], &u16s(0x1 | 0x4));
        assert_eq!(&bytes[16..28], &[2, 32, 0, 0, 254, 0, 255, 0, 0, 0, 0, 0]);
        assert_eq!(bytes.len(), 44);
    }

    #[test]
    fn a_proxy_neighbour_entry_is_encoded_with_ntf_proxy() {
        let bytes = Request::add_proxy_neigh(Ipv4Addr::new(198, 18, 0, 10), 3).encode(5);
        let mut want = header(16 + 12 + 8, 28, 0x1 | 0x4 | 0x400 | 0x100, 5);
        // ndmsg: AF_INET, pads, ifindex 3, NUD_PERMANENT, NTF_PROXY, type 0.
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&u32s(3));
        want.extend_from_slice(&u16s(0x80));
        want.extend_from_slice(&[0x08, 0]);
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(1));
        want.extend_from_slice(&[198, 18, 0, 10]);
        assert_eq!(bytes, want);
        let del = Request::delete_proxy_neigh(Ipv4Addr::new(198, 18, 0, 10), 3).encode(6);
        assert_eq!(&del[4..6], &u16s(29));
        assert_eq!(&del[16..], &want[16..]);
    }

    #[test]
    fn link_up_sets_iff_up_in_flags_and_change_and_the_mtu() {
        let bytes = Request::link_up(9, 1500).encode(2);
        let mut want = header(16 + 16 + 8, 16, 0x1 | 0x4, 2);
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&u32s(9));
        want.extend_from_slice(&u32s(1));
        want.extend_from_slice(&u32s(1));
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(4));
        want.extend_from_slice(&u32s(1500));
        assert_eq!(bytes, want);
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        // "home0\0" is 6 bytes: attribute length 10, padded to 12.
        let bytes = Request::get_link("home0").encode(3);
        assert_eq!(bytes.len(), 16 + 16 + 12);
        assert_eq!(&bytes[32..34], &u16s(10));
        assert_eq!(&bytes[36..42], b"home0\0");
        assert_eq!(&bytes[42..44], &[0, 0]);
        let dump = Request::dump_ipv4_addrs().encode(4);
        assert_eq!(&dump[6..8], &u16s(0x301));
        assert_eq!(dump.len(), 24);
    }

    /// An `NLMSG_ERROR` answer to `seq` with `error`, capped, optionally with a message.
    fn error_message(seq: u32, error: i32, text: Option<&str>) -> Vec<u8> {
        let mut payload = error.to_ne_bytes().to_vec();
        payload.extend_from_slice(&header(44, 24, 0x405, seq));
        let mut flags = NLM_F_CAPPED;
        if let Some(text) = text {
            flags |= NLM_F_ACK_TLVS;
            let mut v = text.as_bytes().to_vec();
            v.push(0);
            payload.extend_from_slice(&u16s(4 + v.len() as u16));
            payload.extend_from_slice(&u16s(NLMSGERR_ATTR_MSG));
            payload.extend_from_slice(&v);
            payload.resize(align(payload.len()), 0);
        }
        let mut out = header(16 + payload.len() as u32, NLMSG_ERROR, flags, seq);
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn acks_and_errors_are_told_apart_with_the_kernels_text() {
        let ok = error_message(7, 0, None);
        let msgs = parse_messages(&ok).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].kind, msgs[0].seq), (NLMSG_ERROR, 7));
        let ack = Ack::parse(msgs[0].flags, msgs[0].payload).unwrap();
        assert_eq!(
            ack,
            Ack {
                error: 0,
                message: None
            }
        );

        let refused = error_message(8, -libc::ENODEV, Some("Device not found"));
        let msgs = parse_messages(&refused).unwrap();
        let ack = Ack::parse(msgs[0].flags, msgs[0].payload).unwrap();
        assert_eq!(ack.error, -libc::ENODEV);
        assert_eq!(ack.message.as_deref(), Some("Device not found"));
        let e = NetlinkError::Refused {
            request: "RTM_NEWROUTE",
            what: "198.18.0.10/32 dev mip0".into(),
            errno: -ack.error,
            message: ack.message,
        };
        assert_eq!(
            e.to_string(),
            "RTM_NEWROUTE 198.18.0.10/32 dev mip0: ENODEV: No such device (Device not found)"
        );
    }

    #[test]
    fn broken_answers_are_errors_not_panics() {
        assert!(parse_messages(&[1, 2, 3]).is_err());
        let mut long = header(200, 3, 0, 1);
        long.extend_from_slice(&[0; 4]);
        assert!(parse_messages(&long).is_err());
        assert!(Ack::parse(0, &[0; 8]).is_err());
        assert!(Link::parse(&[0; 4]).is_err());
        // An attribute that claims more than there is ends the list.
        assert!(attrs(&[200, 0, 1, 0, 9, 9]).is_empty());
        assert_eq!(parse_messages(&[]).unwrap(), vec![]);
    }

    #[test]
    fn a_link_and_an_address_are_read_from_their_messages() {
        let mut link = vec![0u8; 16];
        link[2..4].copy_from_slice(&u16s(1));
        link[4..8].copy_from_slice(&u32s(3));
        link.extend_from_slice(&u16s(10));
        link.extend_from_slice(&u16s(IFLA_ADDRESS));
        link.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0]);
        link.extend_from_slice(&u16s(8));
        link.extend_from_slice(&u16s(IFLA_MTU));
        link.extend_from_slice(&u32s(1500));
        let link = Link::parse(&link).unwrap();
        assert_eq!((link.kind, link.index), (1, 3));
        assert_eq!(link.address, vec![2, 0, 0, 0, 0, 1]);
        assert_eq!(link.mtu, 1500);

        let mut addr = vec![AF_INET, 24, 0, 0];
        addr.extend_from_slice(&u32s(3));
        addr.extend_from_slice(&u16s(8));
        addr.extend_from_slice(&u16s(IFA_LOCAL));
        addr.extend_from_slice(&[198, 18, 0, 1]);
        assert_eq!(parse_addr(&addr), Some((3, Ipv4Addr::new(198, 18, 0, 1))));
        addr[0] = 10; // AF_INET6
        assert_eq!(parse_addr(&addr), None);
    }
}
