//! Passing the guest-RAM memfd over a Unix stream (SCM_RIGHTS), for zero-copy migration.
//!
//! The fd rides on one ordinary `migration_wire` frame of kind [`kind::MEMFD`] whose payload is
//! a caller-chosen tag (e.g. what the fd is), so it is versioned and checksummed like every
//! other message. The receiver reads exactly that frame with `recvmsg`, never beyond it, so
//! plain frames can follow on the same stream; a frame without exactly one fd is refused (and
//! any fds that did come are closed: every fd a read brings is owned at once, and fds
//! beyond the room of the control buffer are discarded by the kernel, MSG_CTRUNC).
//!
//! Linux delivers a stream's file descriptors with the first bytes of the write that carried
//! them and never merges later data into that read, but it may merge earlier, unread bytes
//! in front: send the memfd only when the peer has consumed everything before it (after its
//! `Accept`), as the protocol does.

use migration_wire::{
    FrameHeader, HEADER_LEN, TRAILER_LEN, WireError, encode_frame, kind, kind_name, verify_checksum,
};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The longest tag accepted with a memfd.
pub const MAX_TAG: usize = 4096;
/// Room for this many fds in one read's control buffer: a sender that attaches more gets
/// refused all the same (the kernel discards the rest and says so).
const FD_ROOM: usize = 4;

/// Sends `fd` with `tag` as one memfd frame.
pub fn send_fd(sock: &UnixStream, fd: BorrowedFd<'_>, tag: &[u8]) -> Result<(), WireError> {
    if tag.len() > MAX_TAG {
        return Err(WireError::TooLarge {
            len: tag.len() as u64,
            max: MAX_TAG as u64,
        });
    }
    let mut frame = Vec::new();
    encode_frame(kind::MEMFD, tag, &mut frame)?;
    let sent = loop {
        match sock.send_with_fd(frame.as_slice(), fd.as_raw_fd()) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(WireError::Io(e.into())),
        }
    };
    // The fd went with the first byte; a short write only leaves plain bytes to follow.
    let mut w = sock;
    w.write_all(&frame[sent..])?;
    Ok(())
}

/// Receives one memfd frame: the fd and its tag. Refuses a frame that came without a file
/// descriptor or with more than one, or that is not a memfd frame.
pub fn recv_fd(sock: &UnixStream) -> Result<(OwnedFd, Vec<u8>), WireError> {
    let mut fd: Option<OwnedFd> = None;
    let mut header = [0; HEADER_LEN];
    recv_full(sock, &mut header, &mut fd, "a memfd frame header")?;
    let h = FrameHeader::parse(&header)?;
    if h.kind != kind::MEMFD {
        return Err(if fd.is_some() {
            WireError::Malformed(format!(
                "a file descriptor came with a {} message, not a memfd message",
                kind_name(h.kind)
            ))
        } else {
            WireError::MissingFd
        });
    }
    if h.len as usize > MAX_TAG {
        return Err(WireError::TooLarge {
            len: h.len.into(),
            max: MAX_TAG as u64,
        });
    }
    let mut rest = vec![0; h.len as usize + TRAILER_LEN];
    recv_full(sock, &mut rest, &mut fd, "a memfd frame's tag and checksum")?;
    let (tag, trailer) = rest.split_at(h.len as usize);
    let trailer: [u8; TRAILER_LEN] = trailer
        .try_into()
        .map_err(|_| WireError::Malformed("memfd frame trailer is not four bytes".into()))?;
    verify_checksum(&header, tag, &trailer)?;
    let fd = fd.ok_or(WireError::MissingFd)?;
    rest.truncate(h.len as usize);
    Ok((fd, rest))
}

/// Fills `buf` with `recvmsg`, taking at most one fd over all the reads; any more is an
/// error (every fd received is closed as it drops).
fn recv_full(
    sock: &UnixStream,
    buf: &mut [u8],
    fd: &mut Option<OwnedFd>,
    what: &'static str,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let msg = match r {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(WireError::Io(e.into())),
        };
        let mut came: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                came.extend(fds);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) || came.len() + usize::from(fd.is_some()) > 1 {
            // `came` and `fd` close as they drop.
            return Err(WireError::ExtraFds);
        }
        if let Some(f) = came.pop() {
            *fd = Some(f);
        }
        if msg.bytes == 0 {
            return Err(WireError::Truncated {
                what,
                needed: buf.len(),
                got,
            });
        }
        got += msg.bytes;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use migration_wire::{Message, read_message, write_message};
    use std::os::fd::AsFd;
    use vm_memory::{Bytes, GuestAddress};

    const RAM: u64 = 1 << 20;

    #[test]
    fn the_received_memfd_maps_the_same_guest_ram() {
        let (a, b) = UnixStream::pair().unwrap();
        let ram = GuestRam::new(RAM).unwrap();
        ram.memory()
            .write_slice(b"before the move", GuestAddress(0x3000))
            .unwrap();
        send_fd(&a, ram.memfd(), b"guest-ram 1048576").unwrap();
        // Plain frames still follow on the same stream.
        write_message(&mut &a, &Message::Done).unwrap();

        let (fd, tag) = recv_fd(&b).unwrap();
        assert_eq!(tag, b"guest-ram 1048576");
        let there = GuestRam::from_memfd(std::fs::File::from(fd), RAM).unwrap();
        let mut seen = [0; 15];
        there
            .memory()
            .read_slice(&mut seen, GuestAddress(0x3000))
            .unwrap();
        assert_eq!(&seen, b"before the move");
        // And back: one file, two mappings.
        there
            .memory()
            .write_slice(b"after", GuestAddress(RAM - 5))
            .unwrap();
        let mut back = [0; 5];
        ram.memory()
            .read_slice(&mut back, GuestAddress(RAM - 5))
            .unwrap();
        assert_eq!(&back, b"after");
        assert_eq!(read_message(&mut &b).unwrap(), Message::Done);
    }

    #[test]
    fn a_memfd_frame_without_an_fd_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut frame = Vec::new();
        encode_frame(kind::MEMFD, b"guest-ram", &mut frame).unwrap();
        (&a).write_all(&frame).unwrap();
        assert!(matches!(recv_fd(&b), Err(WireError::MissingFd)));
        // Any other plain message where the memfd should be is refused the same way.
        write_message(&mut &a, &Message::Done).unwrap();
        assert!(matches!(recv_fd(&b), Err(WireError::MissingFd)));
    }

    #[test]
    fn two_fds_or_an_fd_on_another_message_are_refused() {
        let ram = GuestRam::new(RAM).unwrap();
        let mut frame = Vec::new();
        encode_frame(kind::MEMFD, b"x", &mut frame).unwrap();
        let fd = ram.memfd().as_raw_fd();
        // Two, or more than the control buffer has room for: refused, and all closed. The
        // fds sent are copies of one end of a probe pair: once every copy is closed, its
        // other end reads end of stream; one left open would keep it waiting.
        for n in [2, 3, 9] {
            let (a, b) = UnixStream::pair().unwrap();
            let (probe, far) = UnixStream::pair().unwrap();
            a.send_with_fds(&[frame.as_slice()], &vec![probe.as_raw_fd(); n])
                .unwrap();
            drop(probe);
            let r = recv_fd(&b);
            assert!(matches!(r, Err(WireError::ExtraFds)), "{n}: {r:?}");
            drop(a);
            drop(b);
            far.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut byte = [0];
            let end = std::io::Read::read(&mut &far, &mut byte);
            assert!(matches!(end, Ok(0)), "{n} fds sent, one left open: {end:?}");
        }

        let (a, b) = UnixStream::pair().unwrap();
        let done = Message::Done.encode().unwrap();
        a.send_with_fd(done.as_slice(), fd).unwrap();
        assert!(matches!(recv_fd(&b), Err(WireError::Malformed(_))));
    }

    #[test]
    fn a_corrupt_or_cut_memfd_frame_is_refused() {
        let ram = GuestRam::new(RAM).unwrap();
        let mut frame = Vec::new();
        encode_frame(kind::MEMFD, b"guest-ram", &mut frame).unwrap();
        let last = frame.len() - 1;
        frame[last] ^= 1;
        let (a, b) = UnixStream::pair().unwrap();
        a.send_with_fd(frame.as_slice(), ram.memfd().as_raw_fd())
            .unwrap();
        assert!(matches!(recv_fd(&b), Err(WireError::BadChecksum { .. })));

        let (a, b) = UnixStream::pair().unwrap();
        a.send_with_fd(&frame[..HEADER_LEN + 3], ram.memfd().as_raw_fd())
            .unwrap();
        drop(a);
        assert!(matches!(recv_fd(&b), Err(WireError::Truncated { .. })));

        let (a, _b) = UnixStream::pair().unwrap();
        let e = send_fd(&a, ram.memfd().as_fd(), &[0; MAX_TAG + 1]).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { .. }));
    }
}
