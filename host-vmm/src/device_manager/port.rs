//! Where virtio-net's frames go on this host: a TAP, or (a guest away from home) the
//! IP-in-IP tunnel to its home agent, or a TAP this host routes the guest's address into
//! (network paging).

use crate::devices::virtio::net::backend::NetBackend;
use crate::devices::virtio::net::checksum::{Partial, RxChecksum};
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

    fn recv_checksum(&mut self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        match self {
            Port::Tap(t) => t.recv_checksum(buf),
            Port::Mip(m) => m.recv_checksum(buf),
            Port::Routed(r) => r.recv_checksum(buf),
        }
    }

    fn send_partial(&mut self, frame: &mut [u8], partial: Partial) -> io::Result<()> {
        match self {
            Port::Tap(t) => t.send_partial(frame, partial),
            Port::Mip(m) => m.send_partial(frame, partial),
            Port::Routed(r) => r.send_partial(frame, partial),
        }
    }

    fn set_checksum_offload(&mut self, on: bool) -> io::Result<()> {
        match self {
            Port::Tap(t) => t.set_checksum_offload(on),
            Port::Mip(m) => m.set_checksum_offload(on),
            Port::Routed(r) => r.set_checksum_offload(on),
        }
    }
}
