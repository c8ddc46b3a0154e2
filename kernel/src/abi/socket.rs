//! Sockets: hermit-abi's BSD-style calls over netstack's `SocketTable`.
//!
//! This module only converts between C and Rust (pointers, `sockaddr_in`, `timeval`,
//! option values, `-errno`) and implements waiting: a call that would block either returns
//! `-EAGAIN` (non-blocking sockets) or halts in the idle loop until the network has been
//! polled again, then retries, up to the socket's `SO_RCVTIMEO`/`SO_SNDTIMEO`. The socket
//! semantics themselves live in `netstack::socket`, where they are unit-tested.
//!
//! The first socket call brings the network up if the app did not call `network_init`.
//! Only IPv4 (hermit-abi's `AF_INET`) exists.

use super::fail;
use crate::net::{self, Device, InitError};
use crate::timer;
use alloc::vec;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::mem::size_of;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::ptr;
use hermit_abi::{
    AF_INET, AF_INET6, EADDRINUSE, EADDRNOTAVAIL, EAFNOSUPPORT, EAGAIN, EALREADY, EBADF,
    ECONNREFUSED, EDESTADDRREQ, EFAULT, EINPROGRESS, EINVAL, EISCONN, EMFILE, EMSGSIZE, ENETDOWN,
    ENETUNREACH, ENOBUFS, ENOPROTOOPT, ENOTCONN, EOPNOTSUPP, EPIPE, EPROTONOSUPPORT,
    ESOCKTNOSUPPORT, ETIMEDOUT, F_GETFD, F_GETFL, F_SETFD, F_SETFL, FIONBIO, IPPROTO_TCP,
    IPPROTO_UDP, MSG_PEEK, O_NONBLOCK, O_RDWR, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT,
    POLLRDNORM, POLLWRNORM, SHUT_RD, SHUT_RDWR, SHUT_WR, SO_BROADCAST, SO_ERROR, SO_KEEPALIVE,
    SO_RCVBUF, SO_RCVTIMEO, SO_REUSEADDR, SO_SNDBUF, SO_SNDTIMEO, SOCK_CLOEXEC, SOCK_DGRAM,
    SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, STDERR_FILENO, STDOUT_FILENO, TCP_NODELAY, in_addr,
    nfds_t, pollfd, sockaddr, sockaddr_in, socklen_t, timeval,
};
use netstack::Stack;
use netstack::socket::{Error, Opt, Shutdown, SocketTable, Type};

/// Most descriptors one `poll` call looks at.
const MAX_POLL_FDS: nfds_t = 1024;

/// The errno for a socket error.
fn errno(e: Error) -> i32 {
    match e {
        Error::WouldBlock => EAGAIN,
        Error::BadFd => EBADF,
        Error::Invalid => EINVAL,
        Error::AddressFamily => EAFNOSUPPORT,
        Error::SocketType => ESOCKTNOSUPPORT,
        Error::Protocol => EPROTONOSUPPORT,
        Error::TooManySockets => EMFILE,
        Error::AddressInUse => EADDRINUSE,
        Error::AddressNotAvailable => EADDRNOTAVAIL,
        Error::NotConnected => ENOTCONN,
        Error::IsConnected => EISCONN,
        Error::Already => EALREADY,
        Error::InProgress => EINPROGRESS,
        Error::ConnectionRefused => ECONNREFUSED,
        Error::BrokenPipe => EPIPE,
        Error::DestinationRequired => EDESTADDRREQ,
        Error::MessageTooLong => EMSGSIZE,
        Error::NotSupported => EOPNOTSUPP,
        Error::Unreachable => ENETUNREACH,
        Error::NoBuffers => ENOBUFS,
    }
}

/// Socket calls without a network fail with `ENETDOWN` (the log says why).
fn init_errno(_: InitError) -> i32 {
    ENETDOWN
}

/// Runs `op` once, without waiting.
fn once<T>(
    op: impl FnOnce(&mut SocketTable, &mut Stack<Device>) -> Result<T, Error>,
) -> Result<T, i32> {
    net::with_sockets(op).map_err(init_errno)?.map_err(errno)
}

/// Runs `op` on existing sockets only: `-EBADF` when there is no network (hence no socket).
fn on_socket<T>(
    op: impl FnOnce(&mut SocketTable, &mut Stack<Device>) -> Result<T, Error>,
) -> Result<T, i32> {
    if !net::is_up() {
        return Err(EBADF);
    }
    once(op)
}

/// Like `on_socket` for calls that only read socket state (no stack poll after).
fn query<T>(op: impl FnOnce(&SocketTable, &Stack<Device>) -> Result<T, Error>) -> Result<T, i32> {
    if !net::is_up() {
        return Err(EBADF);
    }
    net::query_sockets(|t, s| op(t, s))
        .map_err(init_errno)?
        .map_err(errno)
}

/// `Ok` if `s` is a socket, else `-EBADF`.
fn check_socket(s: i32) -> Result<(), i32> {
    query(|t, _| {
        if t.is_socket(s) {
            Ok(())
        } else {
            Err(Error::BadFd)
        }
    })
}

/// Which timeout bounds a wait.
#[derive(Clone, Copy)]
enum Wait {
    Recv,
    Send,
}

/// Runs `op` until it does not report `WouldBlock`, halting between tries, unless `fd` is
/// non-blocking; gives up with `-EAGAIN` after the socket's timeout for `wait`.
fn blocking<T>(
    fd: i32,
    wait: Wait,
    mut op: impl FnMut(&mut SocketTable, &mut Stack<Device>) -> Result<T, Error>,
) -> Result<T, i32> {
    if !net::is_up() {
        return Err(EBADF);
    }
    let mut deadline = None;
    loop {
        let mut step = |t: &mut SocketTable, s: &mut Stack<Device>| {
            let r = op(t, s);
            let timeouts = t.timeouts(fd).unwrap_or((None, None));
            let timeout = match wait {
                Wait::Recv => timeouts.0,
                Wait::Send => timeouts.1,
            };
            (r, t.nonblocking(fd).unwrap_or(true), timeout)
        };
        // Receiving queues nothing to send (see `net::query_sockets`); sending does.
        let (result, nonblocking, timeout) = match wait {
            Wait::Recv => net::query_sockets(&mut step),
            Wait::Send => net::with_sockets(&mut step),
        }
        .map_err(init_errno)?;
        match result {
            Err(Error::WouldBlock) if !nonblocking => {
                let deadline = *deadline
                    .get_or_insert_with(|| timeout.map(|t| timer::now_ns().saturating_add(t)));
                if !net::wait_for_progress(deadline) {
                    return Err(EAGAIN);
                }
            }
            r => return r.map_err(errno),
        }
    }
}

/// `Ok(n)` as the ABI's `n`, `Err(e)` as `-e`.
fn ret(r: Result<i32, i32>) -> i32 {
    r.unwrap_or_else(fail)
}

fn ret_size(r: Result<usize, i32>) -> isize {
    match r {
        Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
        Err(e) => fail(e) as isize,
    }
}

/// Reads an IPv4 socket address.
///
/// # Safety
/// `name` must be null or valid for reads of `len` bytes.
unsafe fn read_addr(name: *const sockaddr, len: socklen_t) -> Result<SocketAddrV4, i32> {
    if name.is_null() {
        return Err(EFAULT);
    }
    if (len as usize) < size_of::<sockaddr_in>() {
        return Err(EINVAL);
    }
    // SAFETY: the caller guarantees `len` readable bytes, at least a `sockaddr_in`;
    // `read_unaligned` copes with any alignment and every bit pattern is valid.
    let sin = unsafe { name.cast::<sockaddr_in>().read_unaligned() };
    if i32::from(sin.sin_family) != AF_INET {
        return Err(EAFNOSUPPORT);
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sin.sin_port),
    ))
}

/// The reply of the name calls: the address written out and 0, or `-errno`.
///
/// # Safety
/// As for [`write_addr`].
unsafe fn reply_addr(
    addr: Result<SocketAddrV4, i32>,
    name: *mut sockaddr,
    len: *mut socklen_t,
) -> i32 {
    match addr {
        Ok(addr) => {
            // SAFETY: forwarded from the caller.
            unsafe { write_addr(addr, name, len) };
            0
        }
        Err(e) => fail(e),
    }
}

/// Writes `addr` as a `sockaddr_in` to `name` (cut to `*len` bytes) and sets `*len` to its
/// full size. Nothing happens if either pointer is null (callers may not want the address).
///
/// # Safety
/// `len` must be null or valid for a read and a write of a `socklen_t`; `name` must be null
/// or valid for writes of `*len` bytes.
unsafe fn write_addr(addr: SocketAddrV4, name: *mut sockaddr, len: *mut socklen_t) {
    if name.is_null() || len.is_null() {
        return;
    }
    let sin = sockaddr_in {
        sin_len: size_of::<sockaddr_in>() as u8,
        sin_family: AF_INET as u8,
        sin_port: addr.port().to_be(),
        sin_addr: in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the caller guarantees `len` is valid for reads and writes, and `name` for
    // `*len` bytes, of which we write at most that many.
    unsafe {
        let n = (len.read() as usize).min(size_of::<sockaddr_in>());
        ptr::copy_nonoverlapping((&raw const sin).cast::<u8>(), name.cast::<u8>(), n);
        len.write(size_of::<sockaddr_in>() as socklen_t);
    }
}

/// The app's buffer as a slice (empty for `len == 0`, whatever the pointer).
///
/// # Safety
/// `buf` must be valid for reads and writes of `len` bytes, or `len` must be 0.
unsafe fn buffer<'a>(buf: *mut u8, len: usize) -> Result<&'a mut [u8], i32> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(EFAULT);
    }
    if isize::try_from(len).is_err() {
        return Err(EINVAL);
    }
    // SAFETY: the caller guarantees `len` valid bytes at the non-null `buf`.
    Ok(unsafe { core::slice::from_raw_parts_mut(buf, len) })
}

/// Creates a socket: `AF_INET` with `SOCK_STREAM` (TCP) or `SOCK_DGRAM` (UDP), optionally
/// `| SOCK_NONBLOCK` (`SOCK_CLOEXEC` is accepted and means nothing: there is no exec).
#[unsafe(no_mangle)]
pub extern "C" fn sys_socket(domain: i32, type_: i32, protocol: i32) -> i32 {
    let r = (|| {
        if domain == AF_INET6 || domain != AF_INET {
            return Err(EAFNOSUPPORT);
        }
        let ty = match type_ & !(SOCK_NONBLOCK | SOCK_CLOEXEC) {
            SOCK_STREAM => Type::Stream,
            SOCK_DGRAM => Type::Datagram,
            _ => return Err(EINVAL),
        };
        match (ty, protocol) {
            (_, 0) | (Type::Stream, IPPROTO_TCP) | (Type::Datagram, IPPROTO_UDP) => {}
            _ => return Err(EPROTONOSUPPORT),
        }
        once(|t, s| t.socket(s, ty, type_ & SOCK_NONBLOCK != 0))
    })();
    ret(r)
}

/// Binds socket `s` to the IPv4 address at `name`.
///
/// # Safety
/// `name` must be null or valid for reads of `namelen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_bind(s: i32, name: *const sockaddr, namelen: socklen_t) -> i32 {
    // SAFETY: forwarded from the caller.
    let addr = match unsafe { read_addr(name, namelen) } {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    ret(on_socket(|t, st| t.bind(st, s, addr)).map(|()| 0))
}

/// Makes socket `s` listen, with up to `backlog` pending connections (capped at
/// `netstack::socket::MAX_BACKLOG`, 128).
#[unsafe(no_mangle)]
pub extern "C" fn sys_listen(s: i32, backlog: i32) -> i32 {
    ret(on_socket(|t, st| t.listen(st, s, backlog)).map(|()| 0))
}

/// Accepts a connection on listener `s`: the new socket, and the peer's address in
/// `addr` (if not null). Waits unless `s` is non-blocking.
///
/// # Safety
/// `addrlen` must be null or valid for a read and a write; `addr` null or valid for writes
/// of `*addrlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_accept(s: i32, addr: *mut sockaddr, addrlen: *mut socklen_t) -> i32 {
    match blocking(s, Wait::Recv, |t, st| t.accept(st, s)) {
        Ok((fd, peer)) => {
            // SAFETY: forwarded from the caller.
            unsafe { write_addr(peer, addr, addrlen) };
            fd
        }
        Err(e) => fail(e),
    }
}

/// Connects socket `s` to the address at `name`. TCP waits for the handshake (bounded by
/// `SO_SNDTIMEO`, else by the stack's 60 s) unless `s` is non-blocking, which gets
/// `-EINPROGRESS`; completion then shows as `POLLOUT`, and `SO_ERROR` tells the outcome.
///
/// # Safety
/// `name` must be null or valid for reads of `namelen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_connect(s: i32, name: *const sockaddr, namelen: socklen_t) -> i32 {
    // SAFETY: forwarded from the caller.
    let addr = match unsafe { read_addr(name, namelen) } {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    match on_socket(|t, st| t.connect(st, s, addr)) {
        Ok(()) => 0,
        Err(EINPROGRESS) => match query(|t, _| t.nonblocking(s)) {
            Ok(false) => match blocking(s, Wait::Send, |t, st| t.connect_result(st, s)) {
                Ok(()) => 0,
                Err(EAGAIN) => fail(ETIMEDOUT),
                Err(e) => fail(e),
            },
            _ => fail(EINPROGRESS),
        },
        Err(e) => fail(e),
    }
}

/// Receives into `buf`; `MSG_PEEK` leaves the data queued. 0 means end of stream.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (or `len` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_recv(s: i32, buf: *mut u8, len: usize, flags: i32) -> isize {
    // SAFETY: forwarded from the caller; `from` pointers are null.
    unsafe { sys_recvfrom(s, buf, len, flags, ptr::null_mut(), ptr::null_mut()) }
}

/// Receives into `buf`, with the sender's address in `addr` (if not null).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (or `len` 0); `addrlen` null or valid for
/// a read and a write; `addr` null or valid for writes of `*addrlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_recvfrom(
    s: i32,
    buf: *mut u8,
    len: usize,
    flags: i32,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> isize {
    // SAFETY: forwarded from the caller.
    let buf = match unsafe { buffer(buf, len) } {
        Ok(b) => b,
        Err(e) => return fail(e) as isize,
    };
    let peek = flags & MSG_PEEK != 0;
    match blocking(s, Wait::Recv, |t, st| t.recv(st, s, buf, peek)) {
        Ok((n, from)) => {
            if n > 0 && !peek {
                net::poll_soon();
            }
            if let Some(from) = from {
                // SAFETY: forwarded from the caller.
                unsafe { write_addr(from, addr, addrlen) };
            } else if !addr.is_null()
                && let Ok(peer) = on_socket(|t, st| t.peer_addr(st, s))
            {
                // SAFETY: as above.
                unsafe { write_addr(peer, addr, addrlen) };
            }
            ret_size(Ok(n))
        }
        Err(e) => ret_size(Err(e)),
    }
}

/// Sends `len` bytes from `buf`. A blocking TCP socket waits until all of it is queued.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes (or `len` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_send(s: i32, buf: *const c_void, len: usize, _flags: i32) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { send(s, buf, len, None) }
}

/// Sends one datagram (UDP) to the address at `to`; TCP ignores the address.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes (or `len` 0); `to` null or valid for reads
/// of `tolen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_sendto(
    s: i32,
    buf: *const c_void,
    len: usize,
    _flags: i32,
    to: *const sockaddr,
    tolen: socklen_t,
) -> isize {
    let to = if to.is_null() {
        None
    } else {
        // SAFETY: forwarded from the caller.
        match unsafe { read_addr(to, tolen) } {
            Ok(a) => Some(a),
            Err(e) => return fail(e) as isize,
        }
    };
    // SAFETY: forwarded from the caller.
    unsafe { send(s, buf, len, to) }
}

/// Sends on socket `s` (also used by `sys_write`).
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes (or `len` 0).
pub unsafe fn send(s: i32, buf: *const c_void, len: usize, to: Option<SocketAddrV4>) -> isize {
    // SAFETY: forwarded from the caller; the data is only read.
    let data: &[u8] = match unsafe { buffer(buf.cast_mut().cast(), len) } {
        Ok(b) => b,
        Err(e) => return fail(e) as isize,
    };
    let mut sent = 0;
    let r = blocking(s, Wait::Send, |t, st| {
        let is_stream = t.socket_type(s)? == Type::Stream;
        loop {
            match t.send(st, s, &data[sent..], to) {
                Ok(n) => {
                    sent += n;
                    // A blocking stream socket takes everything before returning.
                    if !is_stream || sent == data.len() || t.nonblocking(s)? {
                        return Ok(sent);
                    }
                    if n == 0 {
                        return Err(Error::WouldBlock);
                    }
                }
                // Partial progress counts as success once the caller has to wait.
                Err(Error::WouldBlock) if sent > 0 && t.nonblocking(s)? => return Ok(sent),
                Err(e) => return Err(e),
            }
        }
    });
    match r {
        Err(_) if sent > 0 => ret_size(Ok(sent)),
        r => ret_size(r),
    }
}

/// Receives on socket `s` (used by `sys_read`).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (or `len` 0).
pub unsafe fn recv(s: i32, buf: *mut u8, len: usize) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { sys_recvfrom(s, buf, len, 0, ptr::null_mut(), ptr::null_mut()) }
}

/// Whether `fd` is an open socket.
pub fn is_socket(fd: i32) -> bool {
    check_socket(fd).is_ok()
}

/// Shuts down the read (`SHUT_RD`), write (`SHUT_WR`) or both halves of a connection.
#[unsafe(no_mangle)]
pub extern "C" fn sys_shutdown(s: i32, how: i32) -> i32 {
    let how = match how {
        SHUT_RD => Shutdown::Read,
        SHUT_WR => Shutdown::Write,
        SHUT_RDWR => Shutdown::Both,
        _ => return fail(EINVAL),
    };
    ret(on_socket(|t, st| t.shutdown(st, s, how)).map(|()| 0))
}

/// The deprecated name of `sys_shutdown`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_shutdown_socket(s: i32, how: i32) -> i32 {
    sys_shutdown(s, how)
}

/// Closes socket `fd`; other descriptors (the console) cannot be closed: `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_close(fd: i32) -> i32 {
    ret(on_socket(|t, st| t.close(st, fd)).map(|()| 0))
}

/// The local address of socket `s`.
///
/// # Safety
/// As for `sys_accept`'s address arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getsockname(
    s: i32,
    name: *mut sockaddr,
    namelen: *mut socklen_t,
) -> i32 {
    if name.is_null() || namelen.is_null() {
        return fail(EFAULT);
    }
    // SAFETY: forwarded from the caller.
    unsafe { reply_addr(query(|t, st| t.local_addr(st, s)), name, namelen) }
}

/// The peer address of connected socket `s`.
///
/// # Safety
/// As for `sys_accept`'s address arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getpeername(
    s: i32,
    name: *mut sockaddr,
    namelen: *mut socklen_t,
) -> i32 {
    if name.is_null() || namelen.is_null() {
        return fail(EFAULT);
    }
    // SAFETY: forwarded from the caller.
    unsafe { reply_addr(on_socket(|t, st| t.peer_addr(st, s)), name, namelen) }
}

/// The boolean socket options, by level and name.
fn flag_option(level: i32, name: i32) -> Option<Opt> {
    match (level, name) {
        (SOL_SOCKET, SO_REUSEADDR) => Some(Opt::ReuseAddr),
        (SOL_SOCKET, SO_KEEPALIVE) => Some(Opt::KeepAlive),
        (SOL_SOCKET, SO_BROADCAST) => Some(Opt::Broadcast),
        (IPPROTO_TCP, TCP_NODELAY) => Some(Opt::NoDelay),
        _ => None,
    }
}

/// A `timeval` as a timeout in ns; zero means none. `None` for a malformed value.
fn timeval_ns(tv: timeval) -> Option<Option<u64>> {
    let secs = u64::try_from(tv.tv_sec).ok()?;
    let usecs = u64::try_from(tv.tv_usec).ok().filter(|u| *u < 1_000_000)?;
    let ns = secs.checked_mul(1_000_000_000)?.checked_add(usecs * 1000)?;
    Some((ns != 0).then_some(ns))
}

/// Sets an option: `SO_REUSEADDR`, `SO_KEEPALIVE`, `SO_BROADCAST`, `TCP_NODELAY` (an
/// `int`), `SO_RCVTIMEO`, `SO_SNDTIMEO` (a `timeval`). Others get `-ENOPROTOOPT`.
///
/// # Safety
/// `optval` must be null or valid for reads of `optlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_setsockopt(
    s: i32,
    level: i32,
    optname: i32,
    optval: *const c_void,
    optlen: socklen_t,
) -> i32 {
    if let Err(e) = check_socket(s) {
        return fail(e);
    }
    if optval.is_null() {
        return fail(EFAULT);
    }
    if let Some(opt) = flag_option(level, optname) {
        if (optlen as usize) < size_of::<i32>() {
            return fail(EINVAL);
        }
        // SAFETY: the caller guarantees `optlen` (>= 4) readable bytes.
        let on = unsafe { optval.cast::<i32>().read_unaligned() } != 0;
        return ret(on_socket(|t, st| t.set_option(st, s, opt, on)).map(|()| 0));
    }
    match (level, optname) {
        (SOL_SOCKET, SO_RCVTIMEO | SO_SNDTIMEO) => {
            if (optlen as usize) < size_of::<timeval>() {
                return fail(EINVAL);
            }
            // SAFETY: the caller guarantees `optlen` (>= a timeval) readable bytes.
            let tv = unsafe { optval.cast::<timeval>().read_unaligned() };
            let Some(ns) = timeval_ns(tv) else {
                return fail(EINVAL);
            };
            let recv = optname == SO_RCVTIMEO;
            ret(on_socket(|t, _| t.set_timeout(s, recv, ns)).map(|()| 0))
        }
        _ => fail(ENOPROTOOPT),
    }
}

/// Reads an option: the ones `sys_setsockopt` sets, plus `SO_ERROR` (takes the pending
/// error) and `SO_RCVBUF`/`SO_SNDBUF`.
///
/// # Safety
/// `optlen` must be null or valid for a read and a write; `optval` null or valid for
/// writes of `*optlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getsockopt(
    s: i32,
    level: i32,
    optname: i32,
    optval: *mut c_void,
    optlen: *mut socklen_t,
) -> i32 {
    if let Err(e) = check_socket(s) {
        return fail(e);
    }
    if optval.is_null() || optlen.is_null() {
        return fail(EFAULT);
    }
    // SAFETY: the caller guarantees `optlen` is valid for reads.
    let room = unsafe { optlen.read() } as usize;
    let int = |value: i32| -> i32 {
        if room < size_of::<i32>() {
            return fail(EINVAL);
        }
        // SAFETY: the caller guarantees `*optlen` (>= 4) writable bytes at `optval`, and a
        // writable `optlen`.
        unsafe {
            optval.cast::<i32>().write_unaligned(value);
            optlen.write(size_of::<i32>() as socklen_t);
        }
        0
    };
    if let Some(opt) = flag_option(level, optname) {
        return match query(|t, _| t.option(s, opt)) {
            Ok(on) => int(i32::from(on)),
            Err(e) => fail(e),
        };
    }
    match (level, optname) {
        (SOL_SOCKET, SO_ERROR) => match on_socket(|t, _| t.take_error(s)) {
            Ok(e) => int(e.map_or(0, errno)),
            Err(e) => fail(e),
        },
        (SOL_SOCKET, SO_RCVBUF | SO_SNDBUF) => match query(|t, _| t.buffer_size(s)) {
            Ok(n) => int(i32::try_from(n).unwrap_or(i32::MAX)),
            Err(e) => fail(e),
        },
        (SOL_SOCKET, SO_RCVTIMEO | SO_SNDTIMEO) => {
            if room < size_of::<timeval>() {
                return fail(EINVAL);
            }
            let ns = match query(|t, _| t.timeouts(s)) {
                Ok((r, w)) => if optname == SO_RCVTIMEO { r } else { w }.unwrap_or(0),
                Err(e) => return fail(e),
            };
            let tv = timeval {
                tv_sec: (ns / 1_000_000_000) as i64,
                tv_usec: (ns % 1_000_000_000 / 1000) as i32,
            };
            // SAFETY: the caller guarantees `*optlen` (>= a timeval) writable bytes.
            unsafe {
                optval.cast::<timeval>().write_unaligned(tv);
                optlen.write(size_of::<timeval>() as socklen_t);
            }
            0
        }
        _ => fail(ENOPROTOOPT),
    }
}

/// `FIONBIO` (`*argp` is an `int`: non-zero = non-blocking) on a socket; other requests get
/// `-EINVAL`.
///
/// # Safety
/// `argp` must be null or valid for reads of an `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_ioctl(s: i32, cmd: i32, argp: *mut c_void) -> i32 {
    if cmd != FIONBIO {
        return ret(check_socket(s).and(Err(EINVAL)));
    }
    if argp.is_null() {
        return fail(EFAULT);
    }
    // SAFETY: the caller guarantees an `int` at `argp`.
    let on = unsafe { argp.cast::<i32>().read_unaligned() } != 0;
    ret(on_socket(|t, _| t.set_nonblocking(s, on)).map(|()| 0))
}

/// `F_GETFL`/`F_SETFL` (`O_NONBLOCK` only) and `F_GETFD`/`F_SETFD` (no flags) on a socket.
#[unsafe(no_mangle)]
pub extern "C" fn sys_fcntl(fd: i32, cmd: i32, arg: i32) -> i32 {
    ret(on_socket(|t, _| match cmd {
        F_GETFL => Ok(O_RDWR | if t.nonblocking(fd)? { O_NONBLOCK } else { 0 }),
        F_SETFL => t.set_nonblocking(fd, arg & O_NONBLOCK != 0).map(|()| 0),
        F_GETFD | F_SETFD => t.nonblocking(fd).map(|_| 0),
        _ => t.nonblocking(fd).and(Err(Error::Invalid)),
    }))
}

/// Waits until one of `fds` is ready (sockets: `POLLIN`, `POLLOUT`, and always `POLLHUP`,
/// `POLLERR`, `POLLNVAL`; stdout and stderr are always writable), or `timeout` ms pass
/// (negative: forever). Returns how many entries have events.
///
/// # Safety
/// `fds` must be valid for reads and writes of `nfds` entries (or `nfds` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_poll(fds: *mut pollfd, nfds: nfds_t, timeout: i32) -> i32 {
    if nfds > MAX_POLL_FDS {
        return fail(EINVAL);
    }
    if nfds > 0 && fds.is_null() {
        return fail(EFAULT);
    }
    let fds: &mut [pollfd] = if nfds == 0 {
        &mut []
    } else {
        // SAFETY: the caller guarantees `nfds` valid entries at the non-null `fds`.
        unsafe { core::slice::from_raw_parts_mut(fds, nfds) }
    };
    let deadline = u64::try_from(timeout)
        .ok()
        .map(|ms| timer::now_ns().saturating_add(ms.saturating_mul(1_000_000)));
    // After a first look at every entry, a wake looks only at the sockets the stack worked
    // on meanwhile (`SocketTable::woken`): with 1,000 connections a frame then costs one
    // readiness check, not 1,000.
    let mut woken = Vec::new();
    let mut by_fd: Option<Vec<u32>> = None;
    let mut first = true;
    loop {
        let ready = if net::is_up() {
            let look = |t: &mut SocketTable, st: &mut Stack<Device>| {
                woken.clear();
                let only_woken = t.woken(st, &mut woken) && !first;
                if !only_woken {
                    return scan(fds, Some((t, st)));
                }
                let by_fd = by_fd.get_or_insert_with(|| index_by_fd(fds));
                let mut ready = 0;
                for fd in &woken {
                    let Some(&i) = usize::try_from(*fd).ok().and_then(|f| by_fd.get(f)) else {
                        continue;
                    };
                    if let Some(p) = fds.get_mut(i as usize) {
                        ready += scan(core::slice::from_mut(p), Some((&mut *t, &mut *st)));
                    }
                }
                ready
            };
            match net::query_sockets(look) {
                Ok(n) => n,
                Err(e) => return fail(init_errno(e)),
            }
        } else {
            scan(fds, None)
        };
        first = false;
        if ready > 0 || timeout == 0 {
            if ready > 0 && by_fd.is_some() {
                // A partial look leaves the others at 0, which they were: count them all.
                return fds.iter().filter(|p| p.revents != 0).count() as i32;
            }
            return ready;
        }
        let progressed = if net::is_up() {
            net::wait_for_progress(deadline)
        } else {
            timer::idle(deadline, || false)
        };
        if !progressed {
            return 0;
        }
    }
}

/// The entry of each descriptor in `fds` (`u32::MAX` for none), indexed by descriptor.
fn index_by_fd(fds: &[pollfd]) -> Vec<u32> {
    let top = fds.iter().map(|p| p.fd).max().unwrap_or(0);
    let mut by_fd = vec![u32::MAX; usize::try_from(top).unwrap_or(0) + 1];
    for (i, p) in fds.iter().enumerate() {
        if let Ok(fd) = usize::try_from(p.fd) {
            // `fds` has at most MAX_POLL_FDS entries.
            by_fd[fd] = i as u32;
        }
    }
    by_fd
}

/// Fills in `revents` for every entry; returns how many have any.
fn scan(fds: &mut [pollfd], mut sockets: Option<(&mut SocketTable, &mut Stack<Device>)>) -> i32 {
    let mut ready = 0;
    for p in fds.iter_mut() {
        p.revents = if p.fd < 0 {
            0
        } else if p.fd == STDOUT_FILENO || p.fd == STDERR_FILENO {
            p.events & (POLLOUT | POLLWRNORM)
        } else {
            match sockets.as_mut().map(|(t, st)| t.readiness(st, p.fd)) {
                Some(Ok(r)) => {
                    let mut events = 0;
                    if r.readable {
                        events |= p.events & (POLLIN | POLLRDNORM);
                    }
                    if r.writable {
                        events |= p.events & (POLLOUT | POLLWRNORM);
                    }
                    if r.hangup {
                        events |= POLLHUP;
                    }
                    if r.error {
                        events |= POLLERR;
                    }
                    events
                }
                _ => POLLNVAL,
            }
        };
        if p.revents != 0 {
            ready += 1;
        }
    }
    ready
}
