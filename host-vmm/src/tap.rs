//! A Linux TAP device as a [`NetBackend`]: `/dev/net/tun` opened non-blocking with
//! `IFF_TAP | IFF_NO_PI`, one frame per `read`/`write`.
//!
//! virtio-net's TAP ([`Tap::open_with_vnet_header`]) also has `IFF_VNET_HDR` with the
//! 12-byte `virtio_net_hdr` (`TUNSETVNETHDRSZ`) in front of every frame, read and written
//! with the frame in one `readv`/`writev`: the guest's partial checksums go to the host
//! kernel as they are, and once the guest takes them (`TUNSETOFFLOAD` with `TUN_F_CSUM`,
//! [`NetBackend::set_checksum_offload`]) the kernel's checksum status comes back (checked,
//! or left partial by the host's own stack). Without `TUN_F_CSUM` the kernel completes
//! every checksum before the TAP, so plain `recv` (which completes any partial one itself)
//! returns what a TAP without the header would. The VF's TAP stays plain: the VF model does
//! its offloads itself.
//!
//! [`Tap::open`] creates the device when it does not exist (and then brings its link up,
//! since nobody else will) or attaches to an existing one. The `unsafe` here is ioctls:
//! `TUNSETIFF`, `TUNSETVNETHDRSZ` and `TUNSETOFFLOAD` on the tun fd, `SIOCGIFFLAGS`/`SIOCSIFFLAGS` and `SIOCGIFHWADDR` on a
//! socket, and (a guest routed through the TAP, `--net nat`) `SIOCADDRT`/`SIOCDELRT` for a
//! host route into it.

use crate::devices::virtio::net::HEADER_LEN;
use crate::devices::virtio::net::backend::NetBackend;
use crate::devices::virtio::net::checksum::{self, F_DATA_VALID, Partial, RxChecksum};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;

/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a TAP could not be opened. The kernel's error is part of the message (not a
/// `source`), worded for the user: one line says it all.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {}", describe(.0))]
    Open(io::Error),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to TAP `{name}`: {}", describe(.error))]
    Attach {
        /// The interface.
        name: String,
        /// What the kernel said.
        error: io::Error,
    },
    /// The new interface could not be brought up.
    #[error("cannot bring TAP `{name}` up: {}", describe(.error))]
    LinkUp {
        /// The interface.
        name: String,
        /// What the kernel said.
        error: io::Error,
    },
    /// The name does not fit an interface name.
    #[error("`{0}` is not a valid interface name")]
    BadName(String),
}

/// The kernel's reasons in the words a user looks for, with the usual cause.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "permission denied (needs CAP_NET_ADMIN, or a TAP owned by this user)".into()
        }
        Some(libc::EBUSY) => "device busy (another process holds it)".into(),
        Some(libc::EINVAL) => "invalid argument (is it a TUN device, not a TAP?)".into(),
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            "no such device (is the tun module loaded?)".into()
        }
        _ => e.to_string(),
    }
}

/// An open TAP.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
    /// Frames carry a `virtio_net_hdr` ([`HEADER_LEN`] bytes) in front.
    vnet: bool,
}

/// A second descriptor on a TAP's queue, for frames host-vmm itself sends.
#[derive(Debug)]
pub struct TapWriter {
    file: File,
    vnet: bool,
}

impl TapWriter {
    /// Sends one frame (a header saying "nothing to do" in front, on a vnet TAP).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        write_frame(&self.file, self.vnet, None, frame)
    }
}

/// Writes one frame, with a header asking for `partial` in front on a vnet TAP.
fn write_frame(
    mut file: &File,
    vnet: bool,
    partial: Option<Partial>,
    frame: &[u8],
) -> io::Result<()> {
    // One write is one frame; a full TAP queue drops it (the kernel reports success).
    if !vnet {
        return file.write(frame).map(|_| ());
    }
    let header = checksum::tx_header(partial);
    file.write_vectored(&[IoSlice::new(&header), IoSlice::new(frame)])
        .map(|_| ())
}

impl Tap {
    /// Creates TAP `name`, or attaches to it if it exists; a created TAP is brought up.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_flags(name, false)
    }

    /// [`Tap::open`] with a vnet header on every frame (see the module docs).
    pub fn open_with_vnet_header(name: &str) -> Result<Tap, TapError> {
        Tap::open_flags(name, true)
    }

    fn open_flags(name: &str, vnet: bool) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
            return Err(TapError::BadName(name.to_owned()));
        }
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(TapError::Open)
        };
        let base = libc::IFF_TAP | libc::IFF_NO_PI | if vnet { libc::IFF_VNET_HDR } else { 0 };
        // IFF_TUN_EXCL tells creating from attaching without a racy existence check.
        let file = open()?;
        let (file, created) = match set_iff(&file, name, base | libc::IFF_TUN_EXCL) {
            Ok(()) => (file, true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let file = open()?;
                set_iff(&file, name, base).map_err(|error| TapError::Attach {
                    name: name.to_owned(),
                    error,
                })?;
                (file, false)
            }
            Err(error) => {
                return Err(TapError::Attach {
                    name: name.to_owned(),
                    error,
                });
            }
        };
        if vnet {
            set_vnet_header_len(&file).map_err(|error| TapError::Attach {
                name: name.to_owned(),
                error,
            })?;
        }
        if created {
            link_up(name).map_err(|error| TapError::LinkUp {
                name: name.to_owned(),
                error,
            })?;
        }
        log::info!(
            "tap: {} {name}",
            if created { "created" } else { "attached to" }
        );
        Ok(Tap {
            file,
            name: name.to_owned(),
            created,
            vnet,
        })
    }

    /// A second descriptor on the same TAP queue, for frames host-vmm itself sends (the
    /// announcement after a migration) while the device owns the TAP.
    pub fn writer(&self) -> io::Result<TapWriter> {
        Ok(TapWriter {
            file: self.file.try_clone()?,
            vnet: self.vnet,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process created the interface (it goes away with the process).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The MAC of the host's end of the TAP (the kernel's, not the guest's).
    pub fn host_mac(&self) -> io::Result<[u8; 6]> {
        let sock = UnixDatagram::unbound()?;
        let mut req = ifreq(&self.name);
        // SAFETY: `sock` is an open socket; SIOCGIFHWADDR fills the `ifreq` on this stack
        // frame, whose name is NUL-terminated (checked by `open`).
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFHWADDR just wrote the `ifru_hwaddr` member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data) {
            *m = d as u8;
        }
        Ok(mac)
    }

    /// Routes `addr`/32 into this TAP (`ip route replace ADDR/32 dev TAP`, as far as a
    /// route through this TAP goes: one through another interface is an error).
    pub fn add_host_route(&self, addr: std::net::Ipv4Addr) -> io::Result<()> {
        // A route left through this very TAP (an earlier run) is replaced.
        let _ = self.route(libc::SIOCDELRT, addr);
        self.route(libc::SIOCADDRT, addr)
    }

    /// Removes the route [`Tap::add_host_route`] made.
    pub fn delete_host_route(&self, addr: std::net::Ipv4Addr) -> io::Result<()> {
        self.route(libc::SIOCDELRT, addr)
    }

    fn route(&self, request: libc::c_ulong, addr: std::net::Ipv4Addr) -> io::Result<()> {
        // Route ioctls are the IPv4 socket layer's: an AF_INET socket, bound to nothing.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let mut dev: Vec<libc::c_char> = self
            .name
            .bytes()
            .map(|b| b as libc::c_char)
            .chain(std::iter::once(0))
            .collect();
        // SAFETY: `rtentry` is plain C data (integers, sockaddrs and a pointer) for which
        // all-zero bytes are a valid value (a null `rt_dev`).
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(addr);
        rt.rt_genmask = sockaddr_in(std::net::Ipv4Addr::BROADCAST);
        rt.rt_flags = libc::RTF_UP | libc::RTF_HOST;
        rt.rt_dev = dev.as_mut_ptr();
        // SAFETY: `sock` is an open AF_INET socket; the route ioctls read the `rtentry` on
        // this stack frame and the NUL-terminated device name `dev` it points at, both of
        // which outlive the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut rt) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `addr` as the `sockaddr` of an `AF_INET` address (port 0).
fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    // SAFETY: `sockaddr` is plain C data; all-zero bytes are a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_INET as libc::sa_family_t;
    // sockaddr_in: family (2), port (2), address (4) in network order.
    for (d, s) in sa.sa_data[2..6].iter_mut().zip(addr.octets()) {
        *d = s as libc::c_char;
    }
    sa
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain C data (a name array and a union of integers, sockaddrs and a
    // pointer) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Makes the vnet header [`HEADER_LEN`] bytes (the kernel's default is the 10-byte legacy
/// one, without `num_buffers`).
fn set_vnet_header_len(file: &File) -> io::Result<()> {
    let len = HEADER_LEN as libc::c_int;
    // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETVNETHDRSZ reads the int `len`
    // on this stack frame, which outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TUNSETOFFLOAD`: with `TUN_F_CSUM` the kernel may hand over checked and partial frames.
fn set_offload(file: &File, csum: bool) -> io::Result<()> {
    let flags = if csum { libc::TUN_F_CSUM } else { 0 };
    // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETOFFLOAD takes its argument by
    // value (an unsigned long of flags) and touches no memory of ours.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_iff(file: &File, name: &str, flags: libc::c_int) -> io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: `file` is an open /dev/net/tun descriptor and TUNSETIFF reads (and may update)
    // the `ifreq` it points at, which lives on this stack frame for the whole call. The name
    // is NUL-terminated: it is at most IFNAMSIZ - 1 bytes (checked by `open`) in a zeroed array.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn link_up(name: &str) -> io::Result<()> {
    // Any socket in this network namespace carries interface ioctls.
    let sock = UnixDatagram::unbound()?;
    let mut req = ifreq(name);
    // SAFETY: `sock` is an open socket; SIOCGIFFLAGS fills the `ifreq` on this stack frame.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just wrote the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the `ifreq`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (len, status) = self.recv_checksum(buf)?;
        if let RxChecksum::Partial(p) = status {
            // Only with TUN_F_CSUM set; the kernel's offsets always fit.
            p.complete(&mut buf[..len]);
        }
        Ok(len)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        write_frame(&self.file, self.vnet, None, frame)
    }

    fn ready_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv_checksum(&mut self, buf: &mut [u8]) -> io::Result<(usize, RxChecksum)> {
        if !self.vnet {
            return self.file.read(buf).map(|len| (len, RxChecksum::Unknown));
        }
        let mut header = [0u8; HEADER_LEN];
        let n = self
            .file
            .read_vectored(&mut [IoSliceMut::new(&mut header), IoSliceMut::new(buf)])?;
        let Some(len) = n.checked_sub(HEADER_LEN) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TAP read shorter than its vnet header",
            ));
        };
        let status = match checksum::header_partial(&header) {
            Some(p) => RxChecksum::Partial(p),
            None if header[0] & F_DATA_VALID != 0 => RxChecksum::Valid,
            None => RxChecksum::Unknown,
        };
        Ok((len, status))
    }

    fn send_partial(&mut self, frame: &mut [u8], partial: Partial) -> io::Result<()> {
        if !self.vnet {
            partial.complete(frame);
            return self.send(frame);
        }
        write_frame(&self.file, true, Some(partial), frame)
    }

    fn set_checksum_offload(&mut self, on: bool) -> io::Result<()> {
        if self.vnet {
            set_offload(&self.file, on)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_fail_before_any_syscall() {
        assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
        assert!(matches!(
            Tap::open("sixteen-chars-xx"),
            Err(TapError::BadName(_))
        ));
    }

    #[test]
    fn errors_name_the_cause() {
        let e = TapError::Attach {
            name: "tap0".into(),
            error: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(
            e.to_string(),
            "cannot attach to TAP `tap0`: device busy (another process holds it)"
        );
        let e = TapError::Open(io::Error::from_raw_os_error(libc::EACCES));
        assert!(e.to_string().contains("permission denied"), "{e}");
    }
}
