//! Test guest for hermit-abi's socket calls used as a client, in both blocking modes.
//!
//! It expects an echo peer (`netprobe serve-echo 7007`) at `peer=ADDRESS` from the command
//! line's network, i.e. at 198.18.0.2, echoing TCP and UDP on port 7007, with port 7008
//! closed. It checks blocking connect, send and receive, receive timeouts, the name calls,
//! socket options, shutdown, a refused connect, a non-blocking connect finished through
//! `poll` and `SO_ERROR`, and UDP. It calls hermit-abi directly because that surface is what
//! it tests. Prints one line per mismatch and `sockcheck: N checks, M failed`; exits 0 only
//! when every check held.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sockcheck is a Roam guest image: build it with `cargo xtask image sockcheck`");
}

#[cfg(target_os = "none")]
mod guest {
    use app_rt::{monotonic_us, println};
    use core::ffi::c_void;
    use core::mem::size_of;
    use hermit_abi as sys;
    use kernel as _;

    const PEER: [u8; 4] = [198, 18, 0, 2];
    const ECHO_PORT: u16 = 7007;
    const CLOSED_PORT: u16 = 7008;

    struct Checks {
        done: u32,
        failed: u32,
    }

    impl Checks {
        fn expect(&mut self, what: &str, got: i64, want: i64) {
            self.done += 1;
            if got != want {
                self.failed += 1;
                println!("sockcheck: {what}: got {got}, expected {want}");
            }
        }

        fn expect_true(&mut self, what: &str, ok: bool) {
            self.expect(what, i64::from(ok), 1);
        }
    }

    fn addr(ip: [u8; 4], port: u16) -> sys::sockaddr_in {
        sys::sockaddr_in {
            sin_len: size_of::<sys::sockaddr_in>() as u8,
            sin_family: sys::AF_INET as u8,
            sin_port: port.to_be(),
            sin_addr: sys::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            ..Default::default()
        }
    }

    const ADDR_LEN: sys::socklen_t = size_of::<sys::sockaddr_in>() as sys::socklen_t;

    fn socket(ty: i32) -> i32 {
        // SAFETY: socket takes no pointers.
        unsafe { sys::socket(sys::AF_INET, ty, 0) }
    }

    fn connect(fd: i32, to: &sys::sockaddr_in) -> i32 {
        // SAFETY: `to` is a valid sockaddr_in of ADDR_LEN bytes.
        unsafe { sys::connect(fd, (to as *const sys::sockaddr_in).cast(), ADDR_LEN) }
    }

    fn send_all(fd: i32, data: &[u8]) -> i64 {
        let mut sent = 0;
        while sent < data.len() {
            // SAFETY: the slice is valid for reads of its length.
            let n = unsafe {
                sys::send(
                    fd,
                    data[sent..].as_ptr().cast::<c_void>(),
                    data.len() - sent,
                    0,
                )
            };
            if n <= 0 {
                return n as i64;
            }
            sent += n as usize;
        }
        sent as i64
    }

    fn recv(fd: i32, buf: &mut [u8]) -> isize {
        // SAFETY: `buf` is valid for writes of its length.
        unsafe { sys::recv(fd, buf.as_mut_ptr(), buf.len(), 0) }
    }

    fn set_opt<T>(fd: i32, level: i32, name: i32, value: &T) -> i32 {
        // SAFETY: `value` is valid for reads of size_of::<T>() bytes.
        unsafe {
            sys::setsockopt(
                fd,
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as sys::socklen_t,
            )
        }
    }

    fn get_int_opt(fd: i32, level: i32, name: i32) -> (i32, i32) {
        let mut value: i32 = -1;
        let mut len = size_of::<i32>() as sys::socklen_t;
        // SAFETY: `value` and `len` are valid for writes.
        let ret = unsafe { sys::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
        (ret, value)
    }

    fn close(fd: i32) -> i32 {
        // SAFETY: close takes no pointers.
        unsafe { sys::close(fd) }
    }

    fn neg(errno: i32) -> i64 {
        -i64::from(errno)
    }

    /// Blocking TCP: connect, names, options, a 40 KiB echo, a receive timeout, shutdown.
    fn blocking_tcp(c: &mut Checks) {
        let fd = socket(sys::SOCK_STREAM);
        c.expect_true("socket(SOCK_STREAM)", fd >= 0);
        c.expect(
            "blocking connect",
            connect(fd, &addr(PEER, ECHO_PORT)).into(),
            0,
        );

        let mut peer = sys::sockaddr_in::default();
        let mut len = ADDR_LEN;
        // SAFETY: `peer` and `len` are valid for writes.
        let ret = unsafe { sys::getpeername(fd, (&raw mut peer).cast(), &mut len) };
        c.expect("getpeername", ret.into(), 0);
        c.expect(
            "peer port",
            u16::from_be(peer.sin_port).into(),
            ECHO_PORT.into(),
        );
        c.expect_true(
            "peer address",
            peer.sin_addr.s_addr == u32::from_ne_bytes(PEER),
        );
        let mut local = sys::sockaddr_in::default();
        let mut len = ADDR_LEN;
        // SAFETY: `local` and `len` are valid for writes.
        let ret = unsafe { sys::getsockname(fd, (&raw mut local).cast(), &mut len) };
        c.expect("getsockname", ret.into(), 0);
        c.expect_true(
            "local port is ephemeral",
            u16::from_be(local.sin_port) >= 1024,
        );

        c.expect(
            "TCP_NODELAY on",
            set_opt(fd, sys::IPPROTO_TCP, sys::TCP_NODELAY, &1i32).into(),
            0,
        );
        let (ret, on) = get_int_opt(fd, sys::IPPROTO_TCP, sys::TCP_NODELAY);
        c.expect(
            "getsockopt(TCP_NODELAY)",
            i64::from(ret) * 10 + i64::from(on != 0),
            1,
        );

        let mut data = [0u8; 40 * 1024];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 7 + i / 251) as u8;
        }
        c.expect(
            "blocking send of 40 KiB",
            send_all(fd, &data),
            data.len() as i64,
        );
        let mut back = [0u8; 40 * 1024];
        let mut got = 0;
        while got < back.len() {
            let n = recv(fd, &mut back[got..]);
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        c.expect(
            "blocking receive of the echo",
            got as i64,
            data.len() as i64,
        );
        c.expect_true("echo is identical", back == data);

        let timeout = sys::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        c.expect(
            "SO_RCVTIMEO",
            set_opt(fd, sys::SOL_SOCKET, sys::SO_RCVTIMEO, &timeout).into(),
            0,
        );
        let start = monotonic_us();
        let mut one = [0u8; 1];
        c.expect(
            "recv times out",
            recv(fd, &mut one) as i64,
            neg(sys::EAGAIN),
        );
        c.expect_true("after about 200 ms", monotonic_us() - start >= 150_000);

        // SAFETY: shutdown takes no pointers.
        let ret = unsafe { sys::shutdown(fd, sys::SHUT_WR) };
        c.expect("shutdown(SHUT_WR)", ret.into(), 0);
        let no_timeout = sys::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        set_opt(fd, sys::SOL_SOCKET, sys::SO_RCVTIMEO, &no_timeout);
        c.expect("peer closes after our FIN", recv(fd, &mut one) as i64, 0);
        c.expect("close", close(fd).into(), 0);
        c.expect("close again", close(fd).into(), neg(sys::EBADF));
    }

    /// A refused connect, and a non-blocking connect finished through poll and SO_ERROR.
    fn connect_paths(c: &mut Checks) {
        let fd = socket(sys::SOCK_STREAM);
        c.expect(
            "connect to a closed port",
            connect(fd, &addr(PEER, CLOSED_PORT)).into(),
            neg(sys::ECONNREFUSED),
        );
        close(fd);

        let fd = socket(sys::SOCK_STREAM | sys::SOCK_NONBLOCK);
        c.expect(
            "non-blocking connect",
            connect(fd, &addr(PEER, ECHO_PORT)).into(),
            neg(sys::EINPROGRESS),
        );
        let mut fds = [sys::pollfd {
            fd,
            events: sys::POLLOUT,
            revents: 0,
        }];
        // SAFETY: `fds` is valid for reads and writes of its length.
        let ready = unsafe { sys::poll(fds.as_mut_ptr(), 1, 5000) };
        c.expect("poll for the connection", ready.into(), 1);
        c.expect_true("writable", fds[0].revents & sys::POLLOUT != 0);
        let (ret, err) = get_int_opt(fd, sys::SOL_SOCKET, sys::SO_ERROR);
        c.expect(
            "SO_ERROR after connecting",
            i64::from(ret) * 1000 + i64::from(err),
            0,
        );
        let mut one = [0u8; 1];
        c.expect(
            "non-blocking recv with nothing",
            recv(fd, &mut one) as i64,
            neg(sys::EAGAIN),
        );
        close(fd);
    }

    /// UDP: a datagram to the peer comes back, with its sender.
    fn udp(c: &mut Checks) {
        let fd = socket(sys::SOCK_DGRAM);
        let to = addr(PEER, ECHO_PORT);
        let msg = b"sockcheck datagram";
        // SAFETY: `msg` and `to` are valid for reads of their sizes.
        let n = unsafe {
            sys::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                ADDR_LEN,
            )
        };
        c.expect("sendto", n as i64, msg.len() as i64);
        let timeout = sys::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        set_opt(fd, sys::SOL_SOCKET, sys::SO_RCVTIMEO, &timeout);
        let mut buf = [0u8; 64];
        let mut from = sys::sockaddr_in::default();
        let mut len = ADDR_LEN;
        // SAFETY: `buf`, `from` and `len` are valid for writes of their sizes.
        let n = unsafe {
            sys::recvfrom(
                fd,
                buf.as_mut_ptr(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        c.expect("recvfrom the echo", n as i64, msg.len() as i64);
        c.expect_true("datagram identical", &buf[..msg.len()] == msg);
        c.expect(
            "from the peer's port",
            u16::from_be(from.sin_port).into(),
            ECHO_PORT.into(),
        );
        close(fd);
    }

    #[unsafe(no_mangle)]
    extern "C" fn runtime_entry(_: i32, _: *const *const u8, _: *const *const u8) -> ! {
        if let Err(e) = app_rt::network_init() {
            app_rt::fail("sockcheck", format_args!("network_init: {e}"));
        }
        let mut c = Checks { done: 0, failed: 0 };
        blocking_tcp(&mut c);
        connect_paths(&mut c);
        udp(&mut c);
        println!("sockcheck: {} checks, {} failed", c.done, c.failed);
        app_rt::exit(if c.failed == 0 { 0 } else { 1 })
    }
}
