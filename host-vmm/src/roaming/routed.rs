//! The guest's NIC backend at a foreign site under network paging (`--net nat`): a TAP the
//! site host *routes* the guest's address into, rather than bridges. The guest does not
//! know it moved: it still believes in its home subnet and its gateway there, whose MAC it
//! has cached. So, like the Mobile IP tunnel backend (the same [`frames::from_guest`]):
//!
//! - out of the guest: an IPv4 frame gets the TAP's own (kernel-side) MAC as destination,
//!   so the site host takes it in and routes it, whatever MAC the guest addressed; an ARP
//!   request for any address but the guest's own is answered with Roam's gateway MAC, so a
//!   guest whose cache expired here still finds "its gateway"; anything else is dropped;
//! - into the guest: IPv4 frames for the guest's address go to the guest's MAC (from Roam's
//!   gateway MAC); the site host's ARP request for the guest's address is answered here,
//!   with the guest's MAC, so the kernel never waits on the guest; anything else is dropped.
//!
//! On open, the TAP is created (or attached to) and `ADDRESS/32 dev TAP` routed into it, so
//! the site host's only configuration is forwarding and its location address (the
//! translation is the site edge's, `host-vmm nat-edge --role site`). The route goes when
//! the port is dropped (and with the TAP, if this process created it).

use super::frames::{self, FromGuest, GATEWAY_MAC};
use crate::devices::virtio::net::backend::NetBackend;
use crate::tap::{Tap, TapError};
use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Answers queued for the guest at most (ARP replies; the guest asks little).
const MAX_ANSWERS: usize = 64;
/// Longest frame read from the TAP (a 1500-byte packet and its header, with room).
const MAX_FRAME: usize = 2048;

/// What to do with a frame the guest sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// This frame goes to the site host (through the TAP).
    Host(Vec<u8>),
    /// This ARP reply goes back to the guest.
    Answer(Vec<u8>),
    /// Nothing to do.
    Drop,
}

/// What to do with a frame read from the TAP.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// This frame goes to the guest.
    Guest(Vec<u8>),
    /// This ARP reply goes back to the site host (through the TAP).
    Answer(Vec<u8>),
    /// Nothing to do (not for the guest, or not IPv4 or ARP).
    Drop,
}

/// Where the guest is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutedConfig {
    /// The guest's address (the route into the TAP, the ARP answered for it).
    pub home: Ipv4Addr,
    /// The guest's MAC.
    pub guest_mac: [u8; 6],
}

/// Decides what happens to `frame`, sent by the guest; `host_mac` is the TAP's own MAC.
pub fn outbound(frame: &[u8], config: &RoutedConfig, host_mac: [u8; 6]) -> Outbound {
    match frames::from_guest(frame, config.home) {
        FromGuest::Tunnel(packet) => {
            Outbound::Host(frames::ipv4_frame(host_mac, config.guest_mac, packet))
        }
        FromGuest::Answer(reply) => Outbound::Answer(reply),
        FromGuest::Drop => Outbound::Drop,
    }
}

/// Decides what happens to `frame`, read from the TAP.
pub fn inbound(frame: &[u8], config: &RoutedConfig) -> Inbound {
    if let Some(packet) = frames::ipv4_in(frame) {
        return match frames::ipv4_destination(packet) {
            Some(dst) if dst == config.home => {
                Inbound::Guest(frames::ipv4_frame(config.guest_mac, GATEWAY_MAC, packet))
            }
            _ => Inbound::Drop,
        };
    }
    match frames::arp_request(frame) {
        Some(req) if req.target_ip == config.home && req.sender_ip != config.home => {
            Inbound::Answer(frames::arp_reply(&req, config.guest_mac))
        }
        _ => Inbound::Drop,
    }
}

/// Why the port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RoutedError {
    /// The TAP itself.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Its MAC could not be read.
    #[error("cannot read the MAC of TAP `{tap}`: {error}")]
    Mac {
        /// The TAP.
        tap: String,
        /// What the kernel said.
        error: io::Error,
    },
    /// The route into it could not be made.
    #[error(
        "cannot route {home}/32 into TAP `{tap}` (needs CAP_NET_ADMIN; is the TAP up?): {error}"
    )]
    Route {
        /// The guest's address.
        home: Ipv4Addr,
        /// The TAP.
        tap: String,
        /// What the kernel said.
        error: io::Error,
    },
    /// An eventfd or epoll descriptor.
    #[error("routed port: {0}")]
    Io(#[from] io::Error),
}

/// A [`NetBackend`] over a TAP the site host routes the guest's address into.
#[derive(Debug)]
pub struct RoutedPort {
    config: RoutedConfig,
    tap: Tap,
    host_mac: [u8; 6],
    /// Readable when the TAP is or an answer is queued.
    ready: Epoll,
    answers_ready: EventFd,
    answers: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

impl RoutedPort {
    /// Opens (or creates) TAP `name` and routes `config.home` into it.
    pub fn open(name: &str, config: RoutedConfig) -> Result<RoutedPort, RoutedError> {
        let tap = Tap::open(name)?;
        let host_mac = tap.host_mac().map_err(|error| RoutedError::Mac {
            tap: name.to_owned(),
            error,
        })?;
        tap.add_host_route(config.home)
            .map_err(|error| RoutedError::Route {
                home: config.home,
                tap: name.to_owned(),
                error,
            })?;
        let answers_ready = EventFd::new(libc::EFD_NONBLOCK)?;
        let ready = Epoll::new()?;
        for fd in [tap.ready_fd(), answers_ready.as_raw_fd()] {
            ready.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )?;
        }
        log::info!(
            "roaming: {}/32 routed into TAP {name} (host side {})",
            config.home,
            mac_text(host_mac)
        );
        Ok(RoutedPort {
            config,
            tap,
            host_mac,
            ready,
            answers_ready,
            answers: VecDeque::new(),
            buf: vec![0; MAX_FRAME],
        })
    }

    /// What it routes.
    pub fn config(&self) -> RoutedConfig {
        self.config
    }

    /// The TAP's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Drop for RoutedPort {
    fn drop(&mut self) {
        // A TAP this process created takes the route with it; an attached one keeps
        // existing, so its route is removed here.
        if let Err(e) = self.tap.delete_host_route(self.config.home)
            && !self.tap.created()
        {
            log::warn!(
                "roaming: removing the route of {} into {}: {e}",
                self.config.home,
                self.tap.name()
            );
        }
    }
}

impl NetBackend for RoutedPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(answer) = self.answers.pop_front() {
            if self.answers.is_empty() {
                let _ = self.answers_ready.read();
            }
            let n = answer.len().min(buf.len());
            buf[..n].copy_from_slice(&answer[..n]);
            return Ok(n);
        }
        // Frames that are not the guest's are skipped (or answered) until one is, or none
        // is left.
        loop {
            let n = self.tap.recv(&mut self.buf)?;
            match inbound(&self.buf[..n], &self.config) {
                Inbound::Guest(frame) => {
                    let n = frame.len().min(buf.len());
                    buf[..n].copy_from_slice(&frame[..n]);
                    return Ok(n);
                }
                Inbound::Answer(reply) => self.tap.send(&reply)?,
                Inbound::Drop => {}
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match outbound(frame, &self.config, self.host_mac) {
            Outbound::Host(frame) => self.tap.send(&frame),
            Outbound::Answer(reply) => {
                if self.answers.len() < MAX_ANSWERS {
                    self.answers.push_back(reply);
                    self.answers_ready.write(1)?;
                }
                Ok(())
            }
            Outbound::Drop => Ok(()),
        }
    }

    fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
    const SITE: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 2);
    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    /// The MAC the guest has cached for its home gateway.
    const HOME_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const HOST_MAC: [u8; 6] = [0x0a, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
    const CONFIG: RoutedConfig = RoutedConfig {
        home: HOME,
        guest_mac: GUEST_MAC,
    };

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&sender_mac);
        a.extend_from_slice(&sender.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        eth([0xff; 6], sender_mac, 0x0806, &a)
    }

    #[test]
    fn the_guests_packets_go_to_the_taps_own_mac_whatever_it_addressed() {
        let packet = ipv4(HOME, CN, &[1, 2, 3, 4]);
        let mut frame = eth(HOME_GW_MAC, GUEST_MAC, 0x0800, &packet);
        frame.resize(60, 0xee);
        let Outbound::Host(out) = outbound(&frame, &CONFIG, HOST_MAC) else {
            panic!("not routed")
        };
        assert_eq!(&out[0..6], &HOST_MAC, "to the site host's end of the TAP");
        assert_eq!(&out[6..12], &GUEST_MAC);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert_eq!(
            &out[14..],
            &packet[..],
            "the packet unchanged, without padding"
        );
    }

    #[test]
    fn the_guest_asking_for_its_gateway_gets_roams_mac() {
        let Outbound::Answer(reply) =
            outbound(&arp_request(GUEST_MAC, HOME, GW), &CONFIG, HOST_MAC)
        else {
            panic!("no answer")
        };
        assert_eq!(&reply[0..6], &GUEST_MAC);
        assert_eq!(&reply[22..28], &GATEWAY_MAC);
        assert_eq!(&reply[28..32], &GW.octets());
        // Its own address (a probe or an announcement) is not answered; IPv6 is dropped.
        assert_eq!(
            outbound(&arp_request(GUEST_MAC, HOME, HOME), &CONFIG, HOST_MAC),
            Outbound::Drop
        );
        let v6 = eth(HOME_GW_MAC, GUEST_MAC, 0x86dd, &[0x60; 40]);
        assert_eq!(outbound(&v6, &CONFIG, HOST_MAC), Outbound::Drop);
    }

    #[test]
    fn the_site_hosts_packets_for_the_guest_reach_it() {
        let packet = ipv4(CN, HOME, &[9; 30]);
        let frame = eth(GUEST_MAC, HOST_MAC, 0x0800, &packet);
        let Inbound::Guest(out) = inbound(&frame, &CONFIG) else {
            panic!("not delivered")
        };
        assert_eq!(&out[0..6], &GUEST_MAC);
        assert_eq!(&out[6..12], &GATEWAY_MAC, "as if from its gateway");
        assert_eq!(&out[14..], &packet[..]);
        // Not for the guest (e.g. the host's own multicast): dropped.
        let other = eth([0xff; 6], HOST_MAC, 0x0800, &ipv4(SITE, GW, &[]));
        assert_eq!(inbound(&other, &CONFIG), Inbound::Drop);
        let v6 = eth([0x33, 0x33, 0, 0, 0, 2], HOST_MAC, 0x86dd, &[0x60; 40]);
        assert_eq!(inbound(&v6, &CONFIG), Inbound::Drop);
    }

    #[test]
    fn the_site_hosts_arp_for_the_guest_is_answered_with_the_guests_mac() {
        let Inbound::Answer(reply) = inbound(&arp_request(HOST_MAC, SITE, HOME), &CONFIG) else {
            panic!("no answer")
        };
        assert_eq!(&reply[0..6], &HOST_MAC, "to the asker");
        assert_eq!(&reply[12..14], &[0x08, 0x06]);
        assert_eq!(&reply[20..22], &[0, 2], "a reply");
        assert_eq!(&reply[22..28], &GUEST_MAC);
        assert_eq!(&reply[28..32], &HOME.octets());
        assert_eq!(&reply[32..38], &HOST_MAC);
        assert_eq!(&reply[38..42], &SITE.octets());
        // Other addresses are not ours to answer.
        assert_eq!(
            inbound(&arp_request(HOST_MAC, SITE, GW), &CONFIG),
            Inbound::Drop
        );
    }

    proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = outbound(&bytes, &CONFIG, HOST_MAC);
            let _ = inbound(&bytes, &CONFIG);
        }

        #[test]
        fn a_packet_crosses_both_ways_unchanged(payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let packet = ipv4(CN, HOME, &payload);
            let Inbound::Guest(to_guest) = inbound(&eth(GUEST_MAC, HOST_MAC, 0x0800, &packet), &CONFIG) else {
                panic!("not delivered")
            };
            let Outbound::Host(back) = outbound(&to_guest, &CONFIG, HOST_MAC) else {
                panic!("not routed")
            };
            prop_assert_eq!(&back[14..], &packet[..]);
        }
    }
}
