//! Gratuitous ARP on the home link when a mobile node leaves home: an ARP request whose
//! sender and target IP are both the home address and whose sender MAC is the home link's,
//! broadcast [`GARP_COUNT`] times [`GARP_INTERVAL`] apart (ARP is unreliable), so hosts and
//! routers that cached the mobile node's own MAC send to the home agent instead (Linux
//! overrides an existing entry on such a frame). Answering ARP requests afterwards is the
//! kernel's job, through the neighbour proxy entry (see `mod.rs`).

use super::sys::PacketSender;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How many gratuitous ARPs announce one move away from home.
pub const GARP_COUNT: u8 = 3;
/// The gap between them.
pub const GARP_INTERVAL: Duration = Duration::from_millis(50);

/// The smallest Ethernet frame without its FCS; shorter ARP frames are padded to it.
const MIN_FRAME: usize = 60;

/// The gratuitous ARP request for `ip` from `mac`, padded to the minimum frame size.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&[0xFF; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]); // Ethernet, IPv4, sizes
    f.extend_from_slice(&[0x00, 0x01]); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(MIN_FRAME, 0);
    f
}

/// Gratuitous ARPs still to send: one series per home address, each frame at its time.
#[derive(Debug, Default)]
pub struct GarpSchedule {
    /// (when the next one is due, home address, how many are left).
    pending: Vec<(Instant, Ipv4Addr, u8)>,
}

impl GarpSchedule {
    /// Starts a series for `home`, the first due at `now` (a running series restarts).
    pub fn start(&mut self, home: Ipv4Addr, now: Instant) {
        self.cancel(home);
        self.pending.push((now, home, GARP_COUNT));
    }

    /// Stops the series for `home` (it went home or its binding ended).
    pub fn cancel(&mut self, home: Ipv4Addr) {
        self.pending.retain(|(_, h, _)| *h != home);
    }

    /// The home addresses due for a frame at `now`; each series moves on to its next time.
    pub fn due(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        for (at, home, left) in &mut self.pending {
            if *at <= now {
                out.push(*home);
                *left -= 1;
                *at = now + GARP_INTERVAL;
            }
        }
        self.pending.retain(|(_, _, left)| *left > 0);
        out
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(at, _, _)| *at).min()
    }
}

/// Sends gratuitous ARPs out of the home link.
#[derive(Debug)]
pub struct Announcer {
    socket: PacketSender,
    mac: [u8; 6],
}

impl Announcer {
    /// An announcer on the link with index `ifindex` and MAC `mac`.
    pub fn open(ifindex: u32, mac: [u8; 6]) -> io::Result<Announcer> {
        Ok(Announcer {
            socket: PacketSender::open(ifindex)?,
            mac,
        })
    }

    /// Broadcasts one gratuitous ARP for `home`.
    pub fn announce(&self, home: Ipv4Addr) -> io::Result<()> {
        self.socket.send(&gratuitous_arp(self.mac, home))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_an_arp_request_for_the_home_address_from_the_home_link() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let f = gratuitous_arp(mac, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xFF; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &[198, 18, 0, 10], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC");
        assert_eq!(&f[38..42], &[198, 18, 0, 10], "target IP = sender IP");
        assert!(f[42..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_series_is_three_frames_fifty_ms_apart_and_can_be_cancelled() {
        let home = Ipv4Addr::new(198, 18, 0, 10);
        let t0 = Instant::now();
        let mut s = GarpSchedule::default();
        assert_eq!(s.next_due(), None);
        s.start(home, t0);
        assert_eq!(s.due(t0), vec![home]);
        assert_eq!(s.next_due(), Some(t0 + GARP_INTERVAL));
        assert!(s.due(t0 + Duration::from_millis(10)).is_empty());
        let t1 = t0 + GARP_INTERVAL;
        assert_eq!(s.due(t1), vec![home]);
        let t2 = t1 + GARP_INTERVAL;
        assert_eq!(s.due(t2), vec![home]);
        assert_eq!(s.next_due(), None, "three and done");
        s.start(home, t2);
        s.cancel(home);
        assert!(s.due(t2).is_empty());
    }
}
