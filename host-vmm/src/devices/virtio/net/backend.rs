//! Where a network device's frames go: the [`NetBackend`] trait, and [`MemBackend`], an
//! in-memory pair for tests and host-side harnesses. The production backend is the TAP in
//! [`crate::tap`].
//!
//! A backend moves whole Ethernet frames, without any virtio header (the device adds and
//! strips it), and never blocks: `recv` says `WouldBlock` when nothing is waiting, and its
//! [`NetBackend::ready_fd`] becomes readable (edge-triggered) when something arrives.
//!
//! Checksum offload is optional: a backend that can carry partial checksums (a TAP with a
//! vnet header) overrides [`NetBackend::recv_checksum`], [`NetBackend::send_partial`] and
//! [`NetBackend::set_checksum_offload`]; the others complete checksums in software.

use super::checksum::{Partial, RxChecksum};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// A source and sink of Ethernet frames.
pub trait NetBackend: Send {
    /// Reads one frame into `buf` and returns its length (a frame longer than `buf` is cut);
    /// `ErrorKind::WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame. A full or absent peer may drop it; that is not an error.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The descriptor that becomes readable when a frame is waiting.
    fn ready_fd(&self) -> RawFd;
    /// Like `recv`, with what is known of the frame's checksums: once
    /// [`NetBackend::set_checksum_offload`] allowed it, a frame may come checked or with a
    /// partial checksum. (`recv` always returns complete checksums.)
    fn recv_checksum(&mut self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        self.recv(buf).map(|len| (len, RxChecksum::Unknown))
    }
    /// Sends `frame` with `partial` left to the other side (its offsets fit the frame);
    /// by default it is completed here first.
    fn send_partial(&mut self, frame: &mut [u8], partial: Partial) -> io::Result<()> {
        partial.complete(frame);
        self.send(frame)
    }
    /// Whether [`NetBackend::recv_checksum`] may hand over checked and partial frames (the
    /// guest takes them). Off until asked.
    fn set_checksum_offload(&mut self, _on: bool) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Link {
    /// Frames from the peer to the device, with their checksum status.
    to_device: VecDeque<(Vec<u8>, RxChecksum)>,
    /// Frames the device sent.
    from_device: VecDeque<Vec<u8>>,
    /// The device allowed checked and partial frames.
    offload: bool,
}

/// The device's end of an in-memory link.
#[derive(Debug)]
pub struct MemBackend {
    link: Arc<Mutex<Link>>,
    ready: Arc<EventFd>,
}

/// The test's end of an in-memory link.
#[derive(Debug, Clone)]
pub struct MemPeer {
    link: Arc<Mutex<Link>>,
    ready: Arc<EventFd>,
}

/// A connected pair: what the peer injects the backend receives, and back.
pub fn mem_pair() -> io::Result<(MemBackend, MemPeer)> {
    let link = Arc::new(Mutex::new(Link::default()));
    let ready = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    Ok((
        MemBackend {
            link: link.clone(),
            ready: ready.clone(),
        },
        MemPeer { link, ready },
    ))
}

fn lock(link: &Mutex<Link>) -> std::sync::MutexGuard<'_, Link> {
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemPeer {
    /// Queues `frame` for the device and signals readiness.
    pub fn inject(&self, frame: &[u8]) {
        self.inject_checksum(frame, RxChecksum::Unknown);
    }

    /// Queues `frame` with a checksum status (as a TAP's vnet header gives it; without
    /// offload allowed the backend completes and forgets it, as the kernel does).
    pub fn inject_checksum(&self, frame: &[u8], checksum: RxChecksum) {
        lock(&self.link)
            .to_device
            .push_back((frame.to_vec(), checksum));
        let _ = self.ready.write(1);
    }

    /// Whether the device allowed checked and partial frames.
    pub fn offload(&self) -> bool {
        lock(&self.link).offload
    }

    /// The oldest frame the device sent, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        lock(&self.link).from_device.pop_front()
    }

    /// Frames injected but not yet received by the device.
    pub fn waiting(&self) -> usize {
        lock(&self.link).to_device.len()
    }
}

impl NetBackend for MemBackend {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, checksum) = self.recv_checksum(buf)?;
        if let RxChecksum::Partial(p) = checksum {
            p.complete(&mut buf[..n]);
        }
        Ok(n)
    }

    fn set_checksum_offload(&mut self, on: bool) -> io::Result<()> {
        lock(&self.link).offload = on;
        Ok(())
    }

    fn recv_checksum(&mut self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        let mut link = lock(&self.link);
        let offload = link.offload;
        match link.to_device.pop_front() {
            Some((frame, mut checksum)) => {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                if !offload {
                    if let RxChecksum::Partial(p) = checksum {
                        p.complete(&mut buf[..n]);
                    }
                    checksum = RxChecksum::Unknown;
                }
                Ok((n, checksum))
            }
            None => {
                // Drained: reset the counter so the next inject is a fresh edge.
                let _ = self.ready.read();
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        lock(&self.link).from_device.push_back(frame.to_vec());
        Ok(())
    }

    fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_the_pair_in_order() {
        let (mut dev, peer) = mem_pair().unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            dev.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        peer.inject(b"one");
        peer.inject(b"longer");
        assert_eq!(peer.waiting(), 2);
        assert_eq!(dev.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(dev.recv(&mut buf).unwrap(), 4, "cut to the buffer");
        dev.send(b"back").unwrap();
        assert_eq!(peer.take().as_deref(), Some(&b"back"[..]));
        assert_eq!(peer.take(), None);
    }
}
