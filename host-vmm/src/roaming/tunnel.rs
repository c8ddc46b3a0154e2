//! The guest's NIC backend away from home: its frames become IP-in-IP packets to the home
//! agent, and the home agent's packets for it become its frames ([`super::frames`]). A raw
//! IPv4 socket of protocol 4 carries them (the kernel writes and strips nothing but the
//! outer header's own fields), so no tunnel device and no kernel module is needed.

use super::frames::{self, FromGuest};
use crate::devices::virtio::net::backend::NetBackend;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Answers queued for the guest at most (ARP replies; the guest asks little).
const MAX_ANSWERS: usize = 64;
/// Longest outer packet read (a 1500-byte inner packet and its outer header, with room).
const MAX_PACKET: usize = 2048;

/// Where the guest's tunnel goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The home agent (outer destination of what the guest sends).
    pub home_agent: Ipv4Addr,
    /// The guest's home address.
    pub home: Ipv4Addr,
    /// The guest's MAC (destination of what it receives).
    pub guest_mac: [u8; 6],
}

/// A [`NetBackend`] over an IP-in-IP tunnel to the home agent.
#[derive(Debug)]
pub struct MipTunnel {
    config: TunnelConfig,
    socket: Socket,
    /// Readable when the socket is or an answer is queued.
    ready: Epoll,
    answers_ready: EventFd,
    answers: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

impl MipTunnel {
    /// Opens the raw socket (needs CAP_NET_RAW) for `config`.
    pub fn open(config: TunnelConfig) -> io::Result<MipTunnel> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(frames::IPPROTO_IPIP))),
        )?;
        socket.set_nonblocking(true)?;
        let answers_ready = EventFd::new(libc::EFD_NONBLOCK)?;
        let ready = Epoll::new()?;
        for fd in [socket.as_raw_fd(), answers_ready.as_raw_fd()] {
            ready.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )?;
        }
        Ok(MipTunnel {
            config,
            socket,
            ready,
            answers_ready,
            answers: VecDeque::new(),
            buf: vec![0; MAX_PACKET],
        })
    }

    /// Where it tunnels to.
    pub fn config(&self) -> TunnelConfig {
        self.config
    }
}

impl NetBackend for MipTunnel {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(answer) = self.answers.pop_front() {
            if self.answers.is_empty() {
                let _ = self.answers_ready.read();
            }
            let n = answer.len().min(buf.len());
            buf[..n].copy_from_slice(&answer[..n]);
            return Ok(n);
        }
        // Packets that are not the guest's are skipped until one is, or none is left.
        loop {
            let n = (&self.socket).read(&mut self.buf)?;
            let c = self.config;
            if let Some(frame) = frames::to_guest(&self.buf[..n], c.home_agent, c.home, c.guest_mac)
            {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                return Ok(n);
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match frames::from_guest(frame, self.config.home) {
            FromGuest::Tunnel(packet) => {
                let to = SockAddr::from(SocketAddrV4::new(self.config.home_agent, 0));
                match self.socket.send_to(packet, &to) {
                    Ok(_) => Ok(()),
                    // A full socket buffer drops the packet, as a busy NIC would.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(e) => Err(e),
                }
            }
            FromGuest::Answer(reply) => {
                if self.answers.len() < MAX_ANSWERS {
                    self.answers.push_back(reply);
                    self.answers_ready.write(1)?;
                }
                Ok(())
            }
            FromGuest::Drop => Ok(()),
        }
    }

    fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}
