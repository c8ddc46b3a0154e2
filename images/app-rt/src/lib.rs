//! What Roam's guest apps share: safe wrappers over the `hermit-abi` calls they use.
//!
//! Apps talk to the kernel only through hermit-abi (ARCHITECTURE.md); this crate keeps the
//! pointer-passing `unsafe` of those calls in one place, so an app is plain safe Rust. It is
//! a library, not an image: `cargo xtask image` builds only crates with a `src/main.rs`.
//!
//! Errors are hermit-abi errno values ([`Errno`]); sockets are owned and closed on drop.

#![no_std]

use core::ffi::c_void;
use core::fmt::{self, Write};
use core::mem::size_of;
use core::net::{Ipv4Addr, SocketAddrV4};
pub use hermit_abi as abi;

/// An errno value from hermit-abi (positive, e.g. `abi::EAGAIN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The call would block (non-blocking socket).
    pub const AGAIN: Errno = Errno(abi::EAGAIN);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

fn check(ret: isize) -> Result<usize, Errno> {
    usize::try_from(ret).map_err(|_| Errno(i32::try_from(-ret).unwrap_or(i32::MAX)))
}

/// Writes `args` to stdout in one `write` call (lines longer than 256 bytes are cut).
pub fn print(args: fmt::Arguments<'_>) {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    let _ = line.write_fmt(args);
    // SAFETY: the buffer is valid for reads of `len` bytes.
    unsafe { abi::write(abi::STDOUT_FILENO, line.buf.as_ptr(), line.len) };
}

/// `print!` for guests.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::print(format_args!($($arg)*)) };
}

/// `println!` for guests.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Ends the guest with `status`.
pub fn exit(status: i32) -> ! {
    // SAFETY: exit takes no pointers and does not return.
    unsafe { abi::exit(status) }
}

/// Prints `app: FAILED: what` and exits 1.
pub fn fail(app: &str, what: fmt::Arguments<'_>) -> ! {
    print(format_args!("{app}: FAILED: {what}\n"));
    exit(1)
}

/// The app's arguments after `argv[0]` (the words after `--` on the kernel command line,
/// docs/boot-abi.md §8); a word that is not UTF-8 comes out empty.
///
/// # Safety
///
/// `argc` and `argv` must be what `runtime_entry` was given: `argc` NUL-terminated strings
/// that live for good (the kernel leaks them).
pub unsafe fn args(argc: i32, argv: *const *const u8) -> impl Iterator<Item = &'static str> {
    let n = usize::try_from(argc).unwrap_or(0);
    (1..n).map(move |i| {
        // SAFETY: the caller promises `argc` valid entries; `i < argc`.
        let word = unsafe { *argv.add(i) };
        // SAFETY: each entry is a NUL-terminated string that lives for good.
        let bytes = unsafe { core::ffi::CStr::from_ptr(word.cast()) }.to_bytes();
        core::str::from_utf8(bytes).unwrap_or("")
    })
}

/// Microseconds on the monotonic clock.
pub fn monotonic_us() -> u64 {
    let mut now = abi::timespec::default();
    // SAFETY: `now` is valid for writes.
    unsafe { abi::clock_gettime(abi::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

/// Brings the network up (address from the kernel command line).
pub fn network_init() -> Result<(), Errno> {
    // SAFETY: network_init takes no arguments.
    check(unsafe { abi::network_init() } as isize).map(|_| ())
}

/// An IPv4 address and port.
pub type Addr = abi::sockaddr_in;

/// A socket, closed when dropped.
#[derive(Debug)]
pub struct Socket(i32);

impl Socket {
    /// A new non-blocking IPv4 socket of `ty` (`SOCK_STREAM` or `SOCK_DGRAM`).
    pub fn new(ty: i32) -> Result<Socket, Errno> {
        // SAFETY: socket takes no pointers.
        let fd = check(unsafe { abi::socket(abi::AF_INET, ty | abi::SOCK_NONBLOCK, 0) } as isize)?;
        Ok(Socket(fd as i32))
    }

    /// A non-blocking TCP socket listening on `port` (any address, SO_REUSEADDR).
    pub fn listen_tcp(port: u16, backlog: i32) -> Result<Socket, Errno> {
        let s = Socket::new(abi::SOCK_STREAM)?;
        s.set_int_opt(abi::SOL_SOCKET, abi::SO_REUSEADDR, 1)?;
        s.bind(port)?;
        // SAFETY: listen takes no pointers.
        check(unsafe { abi::listen(s.0, backlog) } as isize)?;
        Ok(s)
    }

    /// A non-blocking UDP socket bound to `port` (any address).
    pub fn bind_udp(port: u16) -> Result<Socket, Errno> {
        let s = Socket::new(abi::SOCK_DGRAM)?;
        s.bind(port)?;
        Ok(s)
    }

    fn bind(&self, port: u16) -> Result<(), Errno> {
        let addr = Addr {
            sin_len: size_of::<Addr>() as u8,
            sin_family: abi::AF_INET as u8,
            sin_port: port.to_be(),
            ..Default::default()
        };
        // SAFETY: `addr` is a valid sockaddr_in for the duration of the call.
        let ret = unsafe {
            abi::bind(
                self.0,
                (&raw const addr).cast(),
                size_of::<Addr>() as abi::socklen_t,
            )
        };
        check(ret as isize).map(|_| ())
    }

    /// The descriptor, for [`PollFd`].
    pub fn fd(&self) -> i32 {
        self.0
    }

    /// Sets an integer socket option.
    pub fn set_int_opt(&self, level: i32, name: i32, value: i32) -> Result<(), Errno> {
        // SAFETY: `value` is a valid int for the duration of the call.
        let ret = unsafe {
            abi::setsockopt(
                self.0,
                level,
                name,
                (&raw const value).cast(),
                size_of::<i32>() as abi::socklen_t,
            )
        };
        check(ret as isize).map(|_| ())
    }

    /// Accepts one pending connection as a non-blocking socket with TCP_NODELAY.
    pub fn accept(&self) -> Result<Socket, Errno> {
        // SAFETY: null address pointers are allowed: the peer address is not wanted.
        let fd = check(
            unsafe { abi::accept(self.0, core::ptr::null_mut(), core::ptr::null_mut()) } as isize,
        )?;
        let s = Socket(fd as i32);
        let on: i32 = 1;
        // SAFETY: `on` is a valid int for the duration of the call.
        let ret = unsafe { abi::ioctl(s.0, abi::FIONBIO, (&raw const on).cast_mut().cast()) };
        check(ret as isize)?;
        s.set_int_opt(abi::IPPROTO_TCP, abi::TCP_NODELAY, 1)?;
        Ok(s)
    }

    /// The address of the connected peer.
    pub fn peer_addr(&self) -> Result<SocketAddrV4, Errno> {
        let mut addr = Addr::default();
        let mut len = size_of::<Addr>() as abi::socklen_t;
        // SAFETY: `addr` and `len` are valid for writes of their sizes.
        let ret = unsafe { abi::getpeername(self.0, (&raw mut addr).cast(), &mut len) };
        check(ret as isize)?;
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(addr.sin_port),
        ))
    }

    /// Receives into `buf`; `Ok(0)` is the end of the stream.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        // SAFETY: `buf` is valid for writes of its length.
        check(unsafe { abi::recv(self.0, buf.as_mut_ptr(), buf.len(), 0) })
    }

    /// Sends from `buf`; returns how much was taken.
    pub fn send(&self, buf: &[u8]) -> Result<usize, Errno> {
        // SAFETY: `buf` is valid for reads of its length.
        check(unsafe { abi::send(self.0, buf.as_ptr().cast::<c_void>(), buf.len(), 0) })
    }

    /// Receives one datagram and its sender.
    pub fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, Addr), Errno> {
        let mut from = Addr::default();
        let mut len = size_of::<Addr>() as abi::socklen_t;
        // SAFETY: `buf`, `from` and `len` are valid for writes of their sizes.
        let n = check(unsafe {
            abi::recvfrom(
                self.0,
                buf.as_mut_ptr(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        })?;
        Ok((n, from))
    }

    /// Sends one datagram to `to`.
    pub fn send_to(&self, buf: &[u8], to: &Addr) -> Result<usize, Errno> {
        // SAFETY: `buf` is valid for reads of its length and `to` is a valid sockaddr_in.
        check(unsafe {
            abi::sendto(
                self.0,
                buf.as_ptr().cast::<c_void>(),
                buf.len(),
                0,
                (to as *const Addr).cast(),
                size_of::<Addr>() as abi::socklen_t,
            )
        })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: close takes no pointers; the descriptor is ours and closed once.
        unsafe { abi::close(self.0) };
    }
}

/// One entry of a [`poll`] set.
pub type PollFd = abi::pollfd;

/// A poll entry waiting for `events` on `fd` (a negative `fd` is ignored).
pub fn poll_fd(fd: i32, events: i16) -> PollFd {
    PollFd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until an entry is ready or `timeout_ms` passes (-1: forever); the guest halts meanwhile.
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> Result<usize, Errno> {
    // SAFETY: `fds` is valid for reads and writes of its length.
    check(unsafe { abi::poll(fds.as_mut_ptr(), fds.len(), timeout_ms) } as isize)
}
