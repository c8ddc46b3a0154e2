//! `netecho`: the network smoke test guest.
//!
//! It brings the network up through hermit-abi's `network_init` (the kernel reads
//! `ip=ADDRESS/PREFIX gw=ADDRESS` from its command line; ARP and ping are answered by the
//! kernel), then echoes TCP and UDP on port 7 (RFC 862) with one `poll` loop over
//! non-blocking sockets: up to eight TCP clients at once, every UDP datagram sent back to
//! its sender. Its first line, `netecho: listening on port 7 ...` (with how long
//! `network_init` took), tells tests it is ready.
//! It runs until the VM is stopped; it exits 1 if the network cannot come up.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    use core::ffi::c_void;
    use core::fmt::{self, Write};
    use core::mem::size_of;
    use core::ptr;
    use hermit_abi as abi;
    use kernel as _;

    const PORT: u16 = 7;
    const MAX_CLIENTS: usize = 8;
    const BUFFER: usize = 2048;

    /// One TCP client and the echo data it has not taken yet.
    struct Client {
        fd: i32,
        buf: [u8; BUFFER],
        start: usize,
        end: usize,
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(
        _argc: i32,
        _argv: *const *const u8,
        _env: *const *const u8,
    ) -> ! {
        let start = monotonic_us();
        // SAFETY: network_init takes no arguments.
        let ret = unsafe { abi::network_init() };
        if ret != 0 {
            fail(format_args!("network_init returned {ret}"));
        }
        let took = monotonic_us().saturating_sub(start);
        let udp = open(abi::SOCK_DGRAM);
        let tcp = open(abi::SOCK_STREAM);
        let one: i32 = 1;
        // SAFETY: `one` is a valid int for the duration of the call.
        let ret = unsafe {
            abi::setsockopt(
                tcp,
                abi::SOL_SOCKET,
                abi::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<i32>() as abi::socklen_t,
            )
        };
        check("setsockopt(SO_REUSEADDR)", ret);
        // SAFETY: listen takes no pointers.
        check("listen", unsafe { abi::listen(tcp, MAX_CLIENTS as i32) });
        say(format_args!(
            "netecho: listening on port {PORT} (TCP and UDP); network_init took {took} us\n"
        ));

        let mut clients: [Option<Client>; MAX_CLIENTS] = [const { None }; MAX_CLIENTS];
        let mut fds = [abi::pollfd::default(); MAX_CLIENTS + 2];
        loop {
            fds[0] = poll_entry(tcp, abi::POLLIN);
            fds[1] = poll_entry(udp, abi::POLLIN);
            for (slot, client) in fds[2..].iter_mut().zip(&clients) {
                *slot = match client {
                    Some(c) if c.start < c.end => poll_entry(c.fd, abi::POLLOUT),
                    Some(c) => poll_entry(c.fd, abi::POLLIN),
                    None => poll_entry(-1, 0),
                };
            }
            // SAFETY: `fds` is valid for reads and writes of its length.
            let ready = unsafe { abi::poll(fds.as_mut_ptr(), fds.len(), -1) };
            if ready < 0 {
                fail(format_args!("poll returned {ready}"));
            }
            if fds[0].revents != 0 {
                accept_all(tcp, &mut clients);
            }
            if fds[1].revents != 0 {
                echo_datagrams(udp);
            }
            for (entry, client) in fds[2..].iter().zip(clients.iter_mut()) {
                if entry.revents != 0
                    && let Some(c) = client
                    && !serve(c)
                {
                    // SAFETY: close takes no pointers.
                    unsafe { abi::close(c.fd) };
                    *client = None;
                }
            }
        }
    }

    /// A non-blocking socket of `ty`, bound to port 7 on every address.
    fn open(ty: i32) -> i32 {
        // SAFETY: socket takes no pointers.
        let fd = unsafe { abi::socket(abi::AF_INET, ty | abi::SOCK_NONBLOCK, 0) };
        check("socket", fd);
        let addr = abi::sockaddr_in {
            sin_len: size_of::<abi::sockaddr_in>() as u8,
            sin_family: abi::AF_INET as u8,
            sin_port: PORT.to_be(),
            ..Default::default()
        };
        // SAFETY: `addr` is a valid sockaddr_in for the duration of the call.
        let ret = unsafe {
            abi::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<abi::sockaddr_in>() as abi::socklen_t,
            )
        };
        check("bind", ret);
        fd
    }

    fn poll_entry(fd: i32, events: i16) -> abi::pollfd {
        abi::pollfd {
            fd,
            events,
            revents: 0,
        }
    }

    /// Accepts every pending connection; closes those beyond [`MAX_CLIENTS`].
    fn accept_all(tcp: i32, clients: &mut [Option<Client>]) {
        loop {
            // SAFETY: null address pointers are allowed: the peer address is not wanted.
            let fd = unsafe { abi::accept(tcp, ptr::null_mut(), ptr::null_mut()) };
            if fd < 0 {
                return;
            }
            let on: i32 = 1;
            // SAFETY: `on` is a valid int for both calls.
            unsafe {
                abi::ioctl(fd, abi::FIONBIO, (&raw const on).cast_mut().cast());
                abi::setsockopt(
                    fd,
                    abi::IPPROTO_TCP,
                    abi::TCP_NODELAY,
                    (&raw const on).cast(),
                    size_of::<i32>() as abi::socklen_t,
                );
            }
            match clients.iter_mut().find(|c| c.is_none()) {
                Some(slot) => {
                    *slot = Some(Client {
                        fd,
                        buf: [0; BUFFER],
                        start: 0,
                        end: 0,
                    })
                }
                // SAFETY: close takes no pointers.
                None => unsafe {
                    abi::close(fd);
                },
            }
        }
    }

    /// Sends every waiting datagram back to its sender.
    fn echo_datagrams(udp: i32) {
        let mut buf = [0u8; BUFFER];
        loop {
            let mut from = abi::sockaddr_in::default();
            let mut from_len = size_of::<abi::sockaddr_in>() as abi::socklen_t;
            // SAFETY: `buf`, `from` and `from_len` are valid for writes of their sizes.
            let n = unsafe {
                abi::recvfrom(
                    udp,
                    buf.as_mut_ptr(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return;
            };
            // SAFETY: `buf` holds `n` bytes; `from` is the sender's address.
            unsafe {
                abi::sendto(
                    udp,
                    buf.as_ptr().cast::<c_void>(),
                    n,
                    0,
                    (&raw const from).cast(),
                    from_len,
                )
            };
        }
    }

    /// Moves data for one TCP client: sends what is pending, else receives and echoes.
    /// `false` when the client is done (end of stream or error).
    fn serve(c: &mut Client) -> bool {
        if c.start == c.end {
            // SAFETY: `c.buf` is valid for writes of its length.
            let n = unsafe { abi::recv(c.fd, c.buf.as_mut_ptr(), c.buf.len(), 0) };
            match n {
                0 => return false,
                n if n < 0 => return n == -(abi::errno::EAGAIN as isize),
                n => {
                    c.start = 0;
                    c.end = n as usize;
                }
            }
        }
        // SAFETY: `c.buf[c.start..c.end]` is initialised and valid for reads.
        let n = unsafe {
            abi::send(
                c.fd,
                c.buf[c.start..].as_ptr().cast::<c_void>(),
                c.end - c.start,
                0,
            )
        };
        match n {
            n if n >= 0 => c.start += n as usize,
            n => return n == -(abi::errno::EAGAIN as isize),
        }
        true
    }

    fn monotonic_us() -> u64 {
        let mut now = abi::timespec::default();
        // SAFETY: `now` is valid for writes.
        unsafe { abi::clock_gettime(abi::CLOCK_MONOTONIC, &mut now) };
        (now.tv_sec as u64) * 1_000_000 + now.tv_nsec as u64 / 1000
    }

    fn check(what: &str, ret: i32) {
        if ret < 0 {
            fail(format_args!("{what} returned {ret}"));
        }
    }

    fn fail(what: fmt::Arguments<'_>) -> ! {
        say(format_args!("netecho: FAILED: {what}\n"));
        // SAFETY: exit takes no pointers and does not return.
        unsafe { abi::exit(1) }
    }

    /// Formats into a line buffer and writes it with one call.
    fn say(args: fmt::Arguments<'_>) {
        let mut line = Line {
            buf: [0; 160],
            len: 0,
        };
        let _ = line.write_fmt(args);
        // SAFETY: the buffer is valid for reads of `len` bytes.
        unsafe { abi::write(abi::STDOUT_FILENO, line.buf.as_ptr(), line.len) };
    }

    struct Line {
        buf: [u8; 160],
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
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("netecho is a Roam guest image: build it with `cargo xtask image netecho`");
    std::process::exit(2);
}
