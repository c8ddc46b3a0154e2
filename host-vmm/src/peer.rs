//! Who is at the other end of a Unix socket (`SO_PEERCRED`), and whether they may drive
//! this host-vmm: the user host-vmm runs as, or root. The API socket checks every
//! connection with it; its two libc calls are the module's only `unsafe`.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// The credentials the kernel recorded for a socket's peer when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The peer's process id.
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

/// The peer credentials of a connected Unix socket.
pub fn of(socket: &impl AsFd) -> io::Result<Credentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred of `len` bytes that outlives the call, and the fd
    // is borrowed open for its duration.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SO_PEERCRED returned {len} bytes"),
        ));
    }
    Ok(Credentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// This process's effective user id.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a peer with `credentials` may drive this host-vmm: same user, or root.
pub fn allowed(credentials: Credentials) -> bool {
    credentials.uid == 0 || credentials.uid == own_uid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socket_pair_sees_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = of(&a).unwrap();
        assert_eq!(c.pid as u32, std::process::id());
        assert_eq!(c.uid, own_uid());
        assert!(allowed(c));
    }

    #[test]
    fn only_the_same_user_or_root_is_allowed() {
        let me = own_uid();
        let other = if me == 65534 { 65533 } else { 65534 };
        let with = |uid| Credentials {
            pid: 1,
            uid,
            gid: 0,
        };
        assert!(allowed(with(0)));
        assert!(allowed(with(me)));
        assert!(!allowed(with(other)));
    }
}
