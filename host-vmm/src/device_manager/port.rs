//! Where virtio-net's frames go on this host: a TAP, or (a guest away from home) the
//! IP-in-IP tunnel to its home agent, or a TAP this host routes the guest's address into
//! (network paging).

use crate::devices::virtio::net::backend::NetBackend;
use crate::roaming::{MipTunnel, RoutedPort};
use crate::tap::Tap;
use std::io;
use std::os::fd::RawFd;

/// The host end of the guest's network card.
#[derive(Debug)]
pub enum Port {
    /// A TAP interface.
    Tap(Tap),
    /// The tunnel to the home agent.
    Mip(MipTunnel),
    /// A routed TAP (`--net nat`).
    Routed(RoutedPort),
}

impl NetBackend for Port {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Port::Tap(t) => t.recv(buf),
            Port::Mip(m) => m.recv(buf),
            Port::Routed(r) => r.recv(buf),
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Port::Tap(t) => t.send(frame),
            Port::Mip(m) => m.send(frame),
            Port::Routed(r) => r.send(frame),
        }
    }

    fn ready_fd(&self) -> RawFd {
        match self {
            Port::Tap(t) => t.ready_fd(),
            Port::Mip(m) => m.ready_fd(),
            Port::Routed(r) => r.ready_fd(),
        }
    }
}
