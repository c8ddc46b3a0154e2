//! The home agent's only `unsafe`: the socket and device calls std has no wrapper for. Each
//! function makes one or two system calls and hands back owned, safe types (`File`,
//! `OwnedFd`); everything above this file is safe code.
//!
//! - a NETLINK_ROUTE socket (configuring routes, neighbour proxy entries, links);
//! - a raw IPv4 socket of one protocol (IP-in-IP, protocol 4): send to an address, receive
//!   with the sender's address;
//! - an AF_PACKET socket that only sends (gratuitous ARP);
//! - a TUN device (`/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`);
//! - a signalfd for SIGTERM and SIGINT.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// `SOL_NETLINK` options (linux/netlink.h).
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// Turns a `-1` return into the `errno` it set.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `socket(2)`, the result owned.
fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); no memory is passed.
    let fd = check(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(2)` with a plain value.
fn set_option<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: `value` lives on this frame for the call and its exact size is passed; the
    // kernel only reads it. Callers pass the C type the option expects (int or timeval).
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A `sockaddr_in` for `addr` (port 0: raw sockets have none).
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// A NETLINK_ROUTE socket talking to the kernel, with extended acknowledgements (the kernel's
/// own error text) and acknowledgements capped to the header (the request is not echoed
/// back). Reads time out after `timeout`, so a lost answer cannot hang the caller.
pub(super) fn netlink_route(timeout: Duration) -> io::Result<File> {
    netlink(libc::NETLINK_ROUTE, timeout)
}

/// A NETLINK_NETFILTER socket (nf_tables), set up as [`netlink_route`]'s.
pub(super) fn netlink_netfilter(timeout: Duration) -> io::Result<File> {
    netlink(libc::NETLINK_NETFILTER, timeout)
}

fn netlink(protocol: libc::c_int, timeout: Duration) -> io::Result<File> {
    let fd = socket(libc::AF_NETLINK, libc::SOCK_RAW, protocol)?;
    // SAFETY: an all-zero sockaddr_nl is valid (port id 0: the kernel picks one).
    let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    local.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `local` is a valid sockaddr_nl of the size passed, read only during the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const local).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    let one: libc::c_int = 1;
    // Older kernels lack these; the answers are then only less detailed.
    let _ = set_option(fd.as_raw_fd(), libc::SOL_NETLINK, NETLINK_EXT_ACK, one);
    let _ = set_option(fd.as_raw_fd(), libc::SOL_NETLINK, NETLINK_CAP_ACK, one);
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    set_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv)?;
    // A netlink socket with no destination set sends to the kernel: read/write serve.
    Ok(File::from(fd))
}

/// A raw IPv4 socket of one IP protocol, bound to a local address: it receives only packets
/// of that protocol addressed to it (outer IP header included) and sends with that source.
#[derive(Debug)]
pub(super) struct RawIp {
    fd: OwnedFd,
}

impl RawIp {
    /// Opens it non-blocking; `ttl` for what it sends; `df: false` clears Don't Fragment
    /// (`IP_PMTUDISC_DONT`: the kernel fragments a packet larger than the path's MTU).
    pub(super) fn open(protocol: u8, local: Ipv4Addr, ttl: u8, df: bool) -> io::Result<RawIp> {
        let fd = socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::c_int::from(protocol),
        )?;
        let addr = sockaddr_in(local);
        // SAFETY: `addr` is a valid sockaddr_in of the size passed, read only during the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        set_option(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_TTL,
            libc::c_int::from(ttl),
        )?;
        let pmtu = if df {
            libc::IP_PMTUDISC_DO
        } else {
            libc::IP_PMTUDISC_DONT
        };
        set_option(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            pmtu,
        )?;
        Ok(RawIp { fd })
    }

    /// Sends `payload` to `to`; the kernel puts the IP header in front.
    pub(super) fn send_to(&self, payload: &[u8], to: Ipv4Addr) -> io::Result<usize> {
        let addr = sockaddr_in(to);
        // SAFETY: `payload` is valid for reads of its length and `addr` is a valid
        // sockaddr_in of the size passed; both outlive the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Receives one packet (IP header included) into `buf`; `WouldBlock` when none waits.
    pub(super) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the whole call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for RawIp {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An AF_PACKET socket that sends whole Ethernet frames out of one interface and receives
/// nothing (protocol 0).
#[derive(Debug)]
pub(super) struct PacketSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSender {
    /// Opens it for the interface with index `ifindex`.
    pub(super) fn open(ifindex: u32) -> io::Result<PacketSender> {
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let ifindex = i32::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?;
        Ok(PacketSender { fd, ifindex })
    }

    /// Sends `frame` (destination MAC first) as it is.
    pub(super) fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set next.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` is valid for reads of its length and `to` is a valid sockaddr_ll
        // of the size passed; both outlive the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Creates TUN device `name` (layer 3, no packet-information prefix: one IPv4 packet per
/// read or write), non-blocking. It exists while the returned file is open; a name already
/// held by another process fails with `EBUSY`.
pub(super) fn open_tun(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a valid interface name",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain C data (a name array and a union of integers, sockaddrs and
    // a pointer) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads (and may update) the
    // `ifreq` on this frame, whose name is NUL-terminated (shorter than IFNAMSIZ, checked
    // above, in a zeroed array).
    check(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    Ok(file)
}
/// A signalfd that reports SIGTERM and SIGINT. The caller must have blocked both in every
/// thread (so they stay pending for this descriptor instead of killing the process).
pub(super) fn termination_signals() -> io::Result<File> {
    let set = vmm_sys_util::signal::create_sigset(&[libc::SIGTERM, libc::SIGINT])
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: `set` is a valid, initialised sigset_t that outlives the call.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by signalfd(2), is open and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}
