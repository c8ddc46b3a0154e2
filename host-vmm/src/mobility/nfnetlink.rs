//! A move's nftables transaction spoken directly (NETLINK_NETFILTER), not through `nft`:
//! the same batch [`super::nft::swap`] writes as text — `delete element` of the old entries
//! and `add element` of the new ones in both maps, between a batch begin and end, so the
//! kernel applies it as one transaction or not at all — on a socket the edge keeps open.
//!
//! Why not `nft -f -`: measured on these machines, a batch that deletes an element takes
//! `nft` about 15 ms, of which ~12 ms is nft closing its netlink socket (the kernel's
//! deferred cleanup of the removed element) *after* the new map is live, and ~2.5 ms is
//! starting the process. The edge answers a registration once the transaction is applied,
//! and the guest is paused until then: here the acknowledgement arrives right after the
//! commit (well under a millisecond).
//!
//! Layout (linux/netfilter/nfnetlink.h, nf_tables.h): each message is a `nlmsghdr`, a
//! 4-byte `nfgenmsg` (family, version 0, resource id big-endian), then attributes; the
//! element list is nested: `ELEMENTS { LIST_ELEM { KEY { VALUE addr } [DATA { VALUE addr
//! }] } }`. Begin and end carry family `AF_UNSPEC` and the nf_tables subsystem as resource
//! id. Every element message asks for an acknowledgement; the kernel sends them (and any
//! error) once the batch is committed or aborted.

use super::netlink::{Ack, NetlinkError, Request, parse_messages};
use super::nft::{Role, TABLE};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const AF_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
/// How long the kernel may take to answer a batch.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// One attribute's bytes (length, type, value, padding to 4), for nesting.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity((len + 3) & !3);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize((len + 3) & !3, 0);
    out
}

/// A NUL-terminated name.
fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// `nfgenmsg`.
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, 0, id[0], id[1]]
}

/// The message deleting `key` from map `set`, or (with `value`) adding `key : value`.
fn element(set: &str, key: Ipv4Addr, value: Option<Ipv4Addr>) -> Request {
    let mut elem = nla(
        NFTA_SET_ELEM_KEY | NLA_F_NESTED,
        &nla(NFTA_DATA_VALUE, &key.octets()),
    );
    let (kind, flags) = match value {
        Some(v) => {
            elem.extend(nla(
                NFTA_SET_ELEM_DATA | NLA_F_NESTED,
                &nla(NFTA_DATA_VALUE, &v.octets()),
            ));
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK)
        }
        None => (NFT_MSG_DELSETELEM, NLM_F_ACK),
    };
    Request::new(
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        flags,
        &nfgenmsg(NFPROTO_IPV4, 0),
    )
    .attr(NFTA_SET_ELEM_LIST_TABLE, &name(TABLE))
    .attr(NFTA_SET_ELEM_LIST_SET, &name(set))
    .attr(
        NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
        &nla(NFTA_LIST_ELEM | NLA_F_NESTED, &elem),
    )
}

/// The element messages of a move of `home` from `old` to `new` (see [`super::nft::swap`]),
/// deletions first; none if nothing changes.
pub fn swap_messages(
    role: Role,
    home: Ipv4Addr,
    old: Option<Ipv4Addr>,
    new: Option<Ipv4Addr>,
) -> Vec<Request> {
    let mut out = Vec::new();
    if old == new {
        return out;
    }
    if let Some(loc) = old {
        let e = role.entries(home, loc);
        out.push(element("inbound", e.inbound.0, None));
        out.push(element("outbound", e.outbound.0, None));
    }
    if let Some(loc) = new {
        let e = role.entries(home, loc);
        out.push(element("inbound", e.inbound.0, Some(e.inbound.1)));
        out.push(element("outbound", e.outbound.0, Some(e.outbound.1)));
    }
    out
}

/// `messages` between a batch begin and end, numbered from `first_seq`: one datagram, one
/// transaction.
pub fn batch(messages: &[Request], first_seq: u32) -> Vec<u8> {
    let edge = |kind| Request::new(kind, 0, &nfgenmsg(AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
    let mut out = edge(NFNL_MSG_BATCH_BEGIN).encode(first_seq);
    let mut seq = first_seq;
    for m in messages {
        seq = seq.wrapping_add(1);
        out.extend(m.encode(seq));
    }
    out.extend(edge(NFNL_MSG_BATCH_END).encode(seq.wrapping_add(1)));
    out
}

/// A NETLINK_NETFILTER socket kept open for the edge's transactions.
#[derive(Debug)]
pub struct Nftables {
    socket: File,
    seq: u32,
}

impl Nftables {
    /// Opens the socket.
    pub fn open() -> Result<Nftables, NetlinkError> {
        let socket = super::sys::netlink_netfilter(ANSWER_TIMEOUT).map_err(NetlinkError::Socket)?;
        Ok(Nftables { socket, seq: 0 })
    }

    /// Applies the move of `home` from `old` to `new` to table `roam_nat` as one
    /// transaction; returns once the kernel acknowledged every message (or the first error:
    /// then nothing of the batch applied). How long it took.
    pub fn swap(
        &mut self,
        role: Role,
        home: Ipv4Addr,
        old: Option<Ipv4Addr>,
        new: Option<Ipv4Addr>,
    ) -> Result<Duration, NetlinkError> {
        let start = Instant::now();
        let messages = swap_messages(role, home, old, new);
        if messages.is_empty() {
            return Ok(Duration::ZERO);
        }
        let what = format!(
            "{home}: {} -> {}",
            old.map_or("-".into(), |a| a.to_string()),
            new.map_or("-".into(), |a| a.to_string())
        );
        let first = self.seq.wrapping_add(1);
        self.seq = first.wrapping_add(messages.len() as u32 + 1);
        let no_answer = |reason: String| NetlinkError::NoAnswer {
            request: "nf_tables batch",
            what: what.clone(),
            reason,
        };
        self.socket
            .write_all(&batch(&messages, first))
            .map_err(|e| no_answer(format!("cannot send: {e}")))?;
        // The element messages are first+1 ..= first+len; each is acknowledged.
        let wanted = |seq: u32| seq.wrapping_sub(first).wrapping_sub(1) < messages.len() as u32;
        let mut acked = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while acked < messages.len() {
            let n = self
                .socket
                .read(&mut buf)
                .map_err(|e| no_answer(format!("no answer: {e}")))?;
            for m in parse_messages(&buf[..n]).map_err(|e| no_answer(e.to_string()))? {
                if m.kind != NLMSG_ERROR || !wanted(m.seq) {
                    // Late answers to an earlier batch, or notifications.
                    continue;
                }
                let ack = Ack::parse(m.flags, m.payload).map_err(|e| no_answer(e.to_string()))?;
                if ack.error != 0 {
                    return Err(NetlinkError::Refused {
                        request: "nf_tables batch",
                        what,
                        errno: -ack.error,
                        message: ack.message,
                    });
                }
                acked += 1;
            }
        }
        Ok(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const LA: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 10);
    const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 22, 10);

    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut h = len.to_ne_bytes().to_vec();
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    /// What `nft` 1.0.6 itself sends for `delete element ip roam_nat inbound {
    /// 198.18.0.10 }` (read with strace), byte for byte but for `NLM_F_ACK`, which we ask
    /// for (nft does not: it waits for errors only).
    #[test]
    fn a_deletion_is_what_nft_sends() {
        let got = element("inbound", A, None).encode(7);
        let mut want = header(68, 0x0a0e, 0x0001 | 0x0004, 7);
        want.extend_from_slice(&[2, 0, 0, 0]); // nfgenmsg: AF_INET, v0, res_id 0
        want.extend_from_slice(&[13, 0, 1, 0]);
        want.extend_from_slice(b"roam_nat\0\0\0\0");
        want.extend_from_slice(&[12, 0, 2, 0]);
        want.extend_from_slice(b"inbound\0");
        want.extend_from_slice(&[20, 0, 3, 0x80, 16, 0, 1, 0x80, 12, 0, 1, 0x80, 8, 0, 1, 0]);
        want.extend_from_slice(&A.octets());
        assert_eq!(got, want);
    }

    #[test]
    fn an_addition_carries_the_key_and_the_value() {
        let got = element("outbound", LA, Some(A)).encode(1);
        assert_eq!(got.len(), 16 + 4 + 16 + 16 + 32);
        assert_eq!(&got[4..6], &0x0a0cu16.to_ne_bytes(), "NEWSETELEM");
        assert_eq!(&got[6..8], &(0x0001u16 | 0x0004 | 0x0400).to_ne_bytes());
        // ELEMENTS { LIST_ELEM { KEY { VALUE LA } DATA { VALUE A } } }
        let tail = &got[got.len() - 32..];
        assert_eq!(&tail[0..4], &[32, 0, 3, 0x80]);
        assert_eq!(&tail[4..8], &[28, 0, 1, 0x80]);
        assert_eq!(&tail[8..16], &[12, 0, 1, 0x80, 8, 0, 1, 0]);
        assert_eq!(&tail[16..20], &LA.octets());
        assert_eq!(&tail[20..28], &[12, 0, 2, 0x80, 8, 0, 1, 0]);
        assert_eq!(&tail[28..32], &A.octets());
    }

    #[test]
    fn a_move_is_one_batch_deletions_first() {
        let m = swap_messages(Role::Client, A, Some(LA), Some(LB));
        assert_eq!(m.len(), 4);
        let kinds: Vec<u16> = m
            .iter()
            .map(|r| u16::from_ne_bytes([r.encode(0)[4], r.encode(0)[5]]) & 0xff)
            .collect();
        assert_eq!(kinds, [14, 14, 12, 12]);
        // The client edge: inbound A -> LB, outbound LB -> A (the last message).
        let last = m[3].encode(0);
        assert_eq!(&last[last.len() - 16..last.len() - 12], &LB.octets());
        assert_eq!(&last[last.len() - 4..], &A.octets());
        assert!(swap_messages(Role::Site, A, Some(LA), Some(LA)).is_empty());
        assert_eq!(swap_messages(Role::Site, A, None, Some(LA)).len(), 2);
        assert_eq!(swap_messages(Role::Site, A, Some(LA), None).len(), 2);

        let b = batch(&m, 100);
        let parsed = parse_messages(&b).unwrap();
        assert_eq!(parsed.len(), 6);
        assert_eq!(
            parsed.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104, 105]
        );
        assert_eq!((parsed[0].kind, parsed[5].kind), (0x10, 0x11));
        // Begin and end name the nf_tables subsystem, big-endian.
        assert_eq!(parsed[0].payload, &[0, 0, 0, 10]);
        assert_eq!(parsed[5].payload, &[0, 0, 0, 10]);
    }
}
