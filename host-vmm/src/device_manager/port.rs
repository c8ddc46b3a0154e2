//! Where virtio-net's frames go on this host: a TAP, or (a guest away from home) the
//! IP-in-IP tunnel to its home agent, or a TAP this host routes the guest's address into
//! (network paging).
//!
//! A migration reaches the same port through a [`PortHandle`]: in the hand-over window it
//! reads what arrives for the guest while device I/O is parked (to forward it to the other
//! end), and it queues frames the other end forwarded ([`PortHandle::deliver`]), which the
//! device receives before anything newer from the link, in order, at most [`MAX_INBOX`].

use crate::devices::virtio::net::backend::NetBackend;
use crate::devices::virtio::net::checksum::{Partial, RxChecksum};
use crate::roaming::{MipTunnel, RoutedPort};
use crate::tap::Tap;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Most forwarded frames waiting for the guest; more are dropped and counted.
pub const MAX_INBOX: usize = 1024;

/// What carries the guest's frames.
#[derive(Debug)]
pub enum Link {
    /// A TAP interface.
    Tap(Tap),
    /// The tunnel to the home agent.
    Mip(MipTunnel),
    /// A routed TAP (`--net nat`).
    Routed(RoutedPort),
}

impl Link {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tap(t) => t.recv(buf),
            Link::Mip(m) => m.recv(buf),
            Link::Routed(r) => r.recv(buf),
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Link::Tap(t) => t.send(frame),
            Link::Mip(m) => m.send(frame),
            Link::Routed(r) => r.send(frame),
        }
    }

    fn ready_fd(&self) -> RawFd {
        match self {
            Link::Tap(t) => t.ready_fd(),
            Link::Mip(m) => m.ready_fd(),
            Link::Routed(r) => r.ready_fd(),
        }
    }

    fn recv_checksum(&mut self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        match self {
            Link::Tap(t) => t.recv_checksum(buf),
            Link::Mip(m) => m.recv_checksum(buf),
            Link::Routed(r) => r.recv_checksum(buf),
        }
    }

    fn send_partial(&mut self, frame: &mut [u8], partial: Partial) -> io::Result<()> {
        match self {
            Link::Tap(t) => t.send_partial(frame, partial),
            Link::Mip(m) => m.send_partial(frame, partial),
            Link::Routed(r) => r.send_partial(frame, partial),
        }
    }

    fn set_checksum_offload(&mut self, on: bool) -> io::Result<()> {
        match self {
            Link::Tap(t) => t.set_checksum_offload(on),
            Link::Mip(m) => m.set_checksum_offload(on),
            Link::Routed(r) => r.set_checksum_offload(on),
        }
    }
}

#[derive(Debug, Default)]
struct Inbox {
    frames: VecDeque<Vec<u8>>,
    dropped: u64,
}

impl Inbox {
    /// Queues `frames` after those waiting, dropping (and counting) what does not fit;
    /// returns how many were dropped.
    fn push(&mut self, frames: impl IntoIterator<Item = Vec<u8>>) -> u64 {
        let mut dropped = 0;
        for f in frames {
            if self.frames.len() < MAX_INBOX {
                self.frames.push_back(f);
            } else {
                dropped += 1;
            }
        }
        self.dropped += dropped;
        dropped
    }

    /// The oldest frame into `buf` (cut to it); `None` when empty.
    fn pop_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.frames.pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
}

#[derive(Debug)]
struct Shared {
    link: Mutex<Link>,
    ready_fd: RawFd,
    inbox: Mutex<Inbox>,
    /// Whether the inbox may hold a frame: the receive path looks at it before locking.
    inbox_used: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The oldest forwarded frame into `buf`, if one waits.
    fn pop_inbox(&self, buf: &mut [u8]) -> Option<usize> {
        if !self.inbox_used.load(Ordering::Acquire) {
            return None;
        }
        let mut inbox = lock(&self.inbox);
        let n = inbox.pop_into(buf);
        if n.is_none() {
            self.inbox_used.store(false, Ordering::Release);
        }
        n
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.pop_inbox(buf) {
            Some(n) => Ok(n),
            None => lock(&self.link).recv(buf),
        }
    }

    fn recv_checksum(&self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        match self.pop_inbox(buf) {
            // Forwarded frames were read with their checksums complete (`recv`); nobody
            // here checked them, so the guest does.
            Some(n) => Ok((n, RxChecksum::Unknown)),
            None => lock(&self.link).recv_checksum(buf),
        }
    }
}

/// The host end of the guest's network card (virtio-net's backend).
#[derive(Debug)]
pub struct Port(Arc<Shared>);

impl Port {
    /// A port on `link`.
    pub fn new(link: Link) -> Port {
        let ready_fd = link.ready_fd();
        Port(Arc::new(Shared {
            link: Mutex::new(link),
            ready_fd,
            inbox: Mutex::new(Inbox::default()),
            inbox_used: AtomicBool::new(false),
        }))
    }

    /// A TAP's writer, for announcing the guest on it (`None` for the tunnel and the
    /// routed TAP: away from home nobody on this host's links needs the guest's MAC).
    pub fn announce_writer(&self) -> Option<io::Result<crate::tap::TapWriter>> {
        match &*lock(&self.0.link) {
            Link::Tap(tap) => Some(tap.writer()),
            _ => None,
        }
    }

    /// The migration's way in (see the module docs).
    pub fn handle(&self) -> PortHandle {
        PortHandle(self.0.clone())
    }
}

impl NetBackend for Port {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        lock(&self.0.link).send(frame)
    }

    fn ready_fd(&self) -> RawFd {
        self.0.ready_fd
    }

    fn recv_checksum(&mut self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        self.0.recv_checksum(buf)
    }

    fn send_partial(&mut self, frame: &mut [u8], partial: Partial) -> io::Result<()> {
        lock(&self.0.link).send_partial(frame, partial)
    }

    fn set_checksum_offload(&mut self, on: bool) -> io::Result<()> {
        lock(&self.0.link).set_checksum_offload(on)
    }
}

/// A migration's handle on virtio-net's port.
#[derive(Clone, Debug)]
pub struct PortHandle(Arc<Shared>);

impl PortHandle {
    /// The frames waiting on the port that `keep` accepts, oldest first, at most `max`
    /// (the others are read and dropped; never blocks). Call with device I/O parked, or the
    /// device may take some first (they reach the guest then, which is fine, but not in
    /// this list).
    pub fn take_waiting(&self, max: usize, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; crate::devices::virtio::net::MAX_FRAME];
        while out.len() < max {
            match self.0.recv(&mut buf) {
                Ok(n) if n > 0 && keep(&buf[..n]) => out.push(buf[..n].to_vec()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        out
    }

    /// Queues `frames` for the guest, after any queued before them; beyond [`MAX_INBOX`]
    /// waiting they are dropped. Returns how many were dropped. The device takes them at
    /// its next receive pass (kick it).
    pub fn deliver(&self, frames: impl IntoIterator<Item = Vec<u8>>) -> u64 {
        let mut inbox = lock(&self.0.inbox);
        let dropped = inbox.push(frames);
        if !inbox.frames.is_empty() {
            self.0.inbox_used.store(true, Ordering::Release);
        }
        dropped
    }

    /// Frames dropped because the inbox was full, since the port opened.
    pub fn dropped(&self) -> u64 {
        lock(&self.0.inbox).dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_keeps_order_and_its_bound() {
        let mut inbox = Inbox::default();
        assert_eq!(inbox.push([vec![1; 60], vec![2; 61]]), 0);
        let mut buf = [0u8; 100];
        assert_eq!(inbox.pop_into(&mut buf), Some(60));
        assert_eq!(buf[0], 1);
        assert_eq!(inbox.pop_into(&mut buf), Some(61));
        assert_eq!(buf[0], 2);
        assert_eq!(inbox.pop_into(&mut buf), None);
        let many = (0..MAX_INBOX + 5).map(|i| vec![i as u8; 60]);
        assert_eq!(inbox.push(many), 5);
        assert_eq!(inbox.dropped, 5);
        assert_eq!(inbox.frames.len(), MAX_INBOX);
        assert!(
            inbox
                .frames
                .iter()
                .enumerate()
                .all(|(i, f)| f[0] == i as u8)
        );
        let mut small = [0u8; 10];
        assert_eq!(inbox.pop_into(&mut small), Some(10), "cut to the buffer");
    }
}
