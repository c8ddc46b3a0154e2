//! `iperf3`: an iperf3 server for the stock iperf3 client (protocol in `proto.rs`), so the
//! client's own report measures the guest's TCP throughput.
//!
//! Listens on port 5201 and serves one test after another: TCP, 1 to 8 parallel streams
//! (`-P`), either direction (`-R`: the server sends), any `-t`. One `poll` loop over
//! non-blocking sockets; received payload is counted, never looked at, and what the server
//! sends is one buffer filled once. Streams the server received on are read until the
//! client closes them (10 s at most) after their test, so no client is left pushing bytes
//! at a closed socket. A connection that arrives while a test runs gets
//! `ACCESS_DENIED`, as from iperf3's own server. A client that hangs up, sends garbage or
//! stalls (10 s without its cookie, 30 s without a byte later on) loses its test, with one
//! log line, and the next client is served; UDP, `--bidir` and more than 8 streams get
//! iperf3's "not implemented" error. The first line, `iperf3: listening on port 5201`, tells
//! tests it is ready.

#![cfg_attr(target_os = "none", no_std, no_main)]

// Guest code and host unit tests use the protocol; the host stub binary does not.
#[cfg(any(test, target_os = "none"))]
mod json;
#[cfg(any(test, target_os = "none"))]
mod proto;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("iperf3 is a Roam guest image: build it with `cargo xtask image iperf3`");
}

#[cfg(target_os = "none")]
mod app {
    extern crate alloc;

    use crate::proto::{self, COOKIE_LEN, Control, Cookie, Event, Params, Phase, state};
    use alloc::vec;
    use alloc::vec::Vec;
    use app_rt::abi::{POLLERR, POLLHUP, POLLIN, POLLOUT};
    use app_rt::{Errno, PollFd, Socket, fail, monotonic_us, poll, poll_fd, println};
    use core::fmt;
    use core::net::SocketAddrV4;
    use kernel as _;

    const PORT: u16 = 5201;
    /// Bytes per `recv`/`send` on a data stream: the kernel's whole TCP buffer.
    const CHUNK: usize = 16 * 1024;
    /// A test that moves no byte for this long is dropped.
    const IDLE_US: u64 = 30_000_000;
    /// A connection that does not send its cookie within this long is closed (or, for a
    /// control connection, its test dropped).
    const COOKIE_US: u64 = 10_000_000;
    /// Connections waiting to send their cookie, at most.
    const MAX_PENDING: usize = 4;
    /// Connections accepted per wake-up, at most.
    const MAX_ACCEPTS: usize = 8;
    /// Streams of finished tests drained until the client closes them, at most.
    const MAX_DRAINING: usize = 2 * proto::MAX_STREAMS as usize;
    /// How long a finished test's stream is drained, at most.
    const DRAIN_US: u64 = 10_000_000;
    /// Control bytes buffered, at most (a JSON blob and a bit).
    const MAX_INPUT: usize = 2 * proto::MAX_JSON;

    /// One data stream; `socket` is `None` once the client closed it.
    struct Stream {
        socket: Option<Socket>,
        bytes: u64,
    }

    /// A connection that may be a data stream: its cookie is still arriving.
    struct Pending {
        socket: Socket,
        cookie: [u8; COOKIE_LEN],
        got: usize,
        since_us: u64,
    }

    /// A stream of a finished test, read until the client closes it (or `until_us`).
    struct Drain {
        socket: Socket,
        until_us: u64,
    }

    /// The test being served.
    struct Test {
        ctrl: Socket,
        peer: Option<SocketAddrV4>,
        control: Control,
        input: Vec<u8>,
        output: Vec<u8>,
        params: Option<Params>,
        streams: Vec<Stream>,
        start_us: u64,
        elapsed_us: u64,
        last_us: u64,
    }

    impl Test {
        fn new(ctrl: Socket, now: u64) -> Test {
            Test {
                peer: ctrl.peer_addr().ok(),
                ctrl,
                control: Control::new(),
                input: Vec::new(),
                output: Vec::new(),
                params: None,
                streams: Vec::new(),
                start_us: now,
                elapsed_us: 0,
                last_us: now,
            }
        }

        fn reverse(&self) -> bool {
            self.params.is_some_and(|p| p.reverse)
        }

        /// Whether the data streams are polled: from `TEST_RUNNING` on.
        fn flowing(&self) -> bool {
            !matches!(
                self.control.phase(),
                Phase::Cookie | Phase::ParamLen | Phase::Params(_) | Phase::Streams
            )
        }

        /// Sends what it can of the queued control bytes.
        fn flush(&mut self) -> Result<(), Errno> {
            while !self.output.is_empty() {
                match self.ctrl.send(&self.output) {
                    Ok(n) => drop(self.output.drain(..n)),
                    Err(e) if e == Errno::AGAIN => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    /// Why a test was dropped.
    enum Why {
        Protocol(proto::Error),
        Socket(&'static str, Errno),
        Stalled(Phase, u64),
    }

    impl fmt::Display for Why {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Why::Protocol(e) => write!(f, "{e}"),
                Why::Socket(what, e) => write!(f, "{what}: {e}"),
                Why::Stalled(p, us) => {
                    write!(f, "no progress for {} s in phase {p:?}", us / 1_000_000)
                }
            }
        }
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(_: i32, _: *const *const u8, _: *const *const u8) -> ! {
        if let Err(e) = app_rt::network_init() {
            fail("iperf3", format_args!("network_init: {e}"));
        }
        let listener = Socket::listen_tcp(PORT, MAX_PENDING as i32)
            .unwrap_or_else(|e| fail("iperf3", format_args!("listen on {PORT}: {e}")));
        println!("iperf3: listening on port {PORT}");
        // What reverse tests send, filled once; and where received payload lands, unread.
        let data: Vec<u8> = (0..CHUNK).map(|i| b'0' + (i % 10) as u8).collect();
        let mut scratch = vec![0u8; CHUNK];
        let mut test: Option<Test> = None;
        let mut pending: Vec<Pending> = Vec::with_capacity(MAX_PENDING);
        let mut draining: Vec<Drain> = Vec::with_capacity(MAX_DRAINING);
        let max_fds = 2 + proto::MAX_STREAMS as usize + MAX_PENDING + MAX_DRAINING;
        let mut fds: Vec<PollFd> = Vec::with_capacity(max_fds);
        loop {
            fds.clear();
            fds.push(poll_fd(listener.fd(), POLLIN));
            if let Some(t) = &test {
                let out = if t.output.is_empty() { 0 } else { POLLOUT };
                fds.push(poll_fd(t.ctrl.fd(), POLLIN | out));
                let sending = t.reverse() && t.control.phase() == Phase::Running;
                let events = if sending { POLLOUT } else { POLLIN };
                for s in &t.streams {
                    let fd = match &s.socket {
                        Some(socket) if t.flowing() => socket.fd(),
                        _ => -1,
                    };
                    fds.push(poll_fd(fd, events));
                }
            }
            let pending_at = fds.len();
            for p in &pending {
                fds.push(poll_fd(p.socket.fd(), POLLIN));
            }
            let draining_at = fds.len();
            for d in &draining {
                fds.push(poll_fd(d.socket.fd(), POLLIN));
            }
            // Wake at least once a second while anything has a deadline.
            let timeout = if test.is_none() && pending.is_empty() && draining.is_empty() {
                -1
            } else {
                1000
            };
            if let Err(e) = poll(&mut fds, timeout) {
                fail("iperf3", format_args!("poll: {e}"));
            }
            let now = monotonic_us();

            // Before the test: an ended test adds streams here, not polled this time.
            let mut slot = draining_at;
            draining.retain(|d| {
                let revents = fds[slot].revents;
                slot += 1;
                if now > d.until_us {
                    return false;
                }
                revents == 0 || matches!(d.socket.recv(&mut scratch), Ok(1..) | Err(Errno::AGAIN))
            });

            if let Some(t) = &mut test
                && let Some(end) = serve(t, &fds[1..pending_at], &data, &mut scratch, now)
            {
                report(t, end);
                // Read what the client still sends on its streams until it closes them:
                // a socket closed with unread data would leave the client's unsent bytes
                // knocking on a zero window for minutes.
                for s in t.streams.drain(..) {
                    if let Some(socket) = s.socket {
                        if draining.len() == MAX_DRAINING {
                            draining.remove(0);
                        }
                        draining.push(Drain {
                            socket,
                            until_us: now + DRAIN_US,
                        });
                    }
                }
                test = None;
            }

            // In accept order, so streams get the ids the client gave them.
            let mut i = 0;
            let mut slot = pending_at;
            while i < pending.len() {
                let revents = fds[slot].revents;
                slot += 1;
                match read_cookie(&mut pending[i], revents, now) {
                    Some(true) => i += 1,
                    Some(false) => drop(pending.remove(i)),
                    None => admit(&mut test, pending.remove(i), now),
                }
            }

            if fds[0].revents != 0 {
                for _ in 0..MAX_ACCEPTS {
                    let socket = match listener.accept() {
                        Ok(s) => s,
                        Err(e) if e == Errno::AGAIN => break,
                        Err(e) => {
                            println!("iperf3: accept: {e}");
                            break;
                        }
                    };
                    match &test {
                        None => {
                            test = Some(Test::new(socket, now));
                        }
                        Some(t)
                            if t.control.phase() == Phase::Streams
                                && pending.len() < MAX_PENDING =>
                        {
                            pending.push(Pending {
                                socket,
                                cookie: [0; COOKIE_LEN],
                                got: 0,
                                since_us: now,
                            });
                        }
                        Some(_) => deny(&socket),
                    }
                }
            }
        }
    }

    fn deny(socket: &Socket) {
        let _ = socket.send(&[proto::byte(state::ACCESS_DENIED)]);
    }

    /// Reads what there is of a pending connection's cookie: `Some(true)` to keep waiting,
    /// `Some(false)` to drop it (closed, error, too slow), `None` when the cookie is whole.
    fn read_cookie(p: &mut Pending, revents: i16, now: u64) -> Option<bool> {
        if now.saturating_sub(p.since_us) > COOKIE_US {
            return Some(false);
        }
        if revents == 0 {
            return Some(true);
        }
        // Read the cookie only: data that follows stays in the socket.
        match p.socket.recv(&mut p.cookie[p.got..]) {
            Ok(0) => Some(false),
            Ok(n) => {
                p.got += n;
                (p.got < COOKIE_LEN).then_some(true)
            }
            Err(e) => Some(e == Errno::AGAIN),
        }
    }

    /// A connection sent a whole cookie: a data stream of the test, or denied.
    fn admit(test: &mut Option<Test>, p: Pending, now: u64) {
        let cookie = Cookie::parse(&p.cookie);
        let Some(t) = test else {
            return deny(&p.socket);
        };
        let Some(params) = t.params else {
            return deny(&p.socket);
        };
        let wanted = params.parallel as usize;
        if cookie.is_none()
            || cookie != t.control.cookie()
            || t.control.phase() != Phase::Streams
            || t.streams.len() >= wanted
        {
            return deny(&p.socket);
        }
        t.streams.push(Stream {
            socket: Some(p.socket),
            bytes: 0,
        });
        t.last_us = now;
        if t.streams.len() == wanted {
            t.control.start(&mut t.output);
            t.start_us = now;
            // A failure shows up on the control connection's next poll.
            let _ = t.flush();
            let peer = Peer(t.peer);
            let dir = if params.reverse {
                "server sends"
            } else {
                "client sends"
            };
            println!(
                "iperf3: test from {peer}: {wanted} stream(s), {dir}, {} s",
                params.time
            );
        }
    }

    /// Moves the test forward after a poll (`fds`: control, then streams); `Some` when it
    /// is over.
    fn serve(
        t: &mut Test,
        fds: &[PollFd],
        data: &[u8],
        scratch: &mut [u8],
        now: u64,
    ) -> Option<Result<(), Why>> {
        // Streams first: bytes that arrived with TEST_END still count.
        if t.flowing() {
            let sending = t.reverse() && t.control.phase() == Phase::Running;
            let counting = t.control.phase() == Phase::Running;
            for (s, fd) in t.streams.iter_mut().zip(&fds[1..]) {
                let Some(socket) = &s.socket else { continue };
                if fd.revents == 0 {
                    continue;
                }
                let r = if sending {
                    socket.send(data)
                } else {
                    socket.recv(scratch)
                };
                match r {
                    Ok(0) if !sending => s.socket = None,
                    Ok(n) => {
                        if counting {
                            s.bytes += n as u64;
                        }
                        t.last_us = now;
                    }
                    Err(e) if e == Errno::AGAIN => {}
                    // The client went away; its control connection tells the rest.
                    Err(_) => s.socket = None,
                }
            }
        }

        let mut closed = false;
        if fds[0].revents & (POLLIN | POLLHUP | POLLERR) != 0 {
            let mut buf = [0u8; 512];
            match t.ctrl.recv(&mut buf) {
                Ok(0) => closed = true,
                Ok(n) => {
                    t.input.extend_from_slice(&buf[..n]);
                    t.last_us = now;
                }
                Err(e) if e == Errno::AGAIN => {}
                Err(e) => return Some(Err(Why::Socket("control recv", e))),
            }
        }
        loop {
            match t.control.feed(&mut t.input, &mut t.output) {
                Ok(Event::Wait) => break,
                Ok(Event::CreateStreams(p)) => {
                    t.params = Some(p);
                    t.streams.reserve(p.parallel as usize);
                }
                Ok(Event::TestEnd) => {
                    t.elapsed_us = now.saturating_sub(t.start_us);
                    let bytes: Vec<u64> = t.streams.iter().map(|s| s.bytes).collect();
                    let results = proto::results_json(&bytes, t.reverse(), t.elapsed_us);
                    t.control.finish(results, &mut t.output);
                    // Like iperf3's server, close what the server sent on: the 3.12 client
                    // reads whole blocks on blocking sockets after TEST_END and waits for
                    // this end of stream. Received streams stay open and are drained until
                    // the test is over, so the client's last bytes do not clog them.
                    if t.reverse() {
                        t.streams.iter_mut().for_each(|s| s.socket = None);
                    }
                }
                Ok(Event::Done) => {
                    let _ = t.flush();
                    return Some(Ok(()));
                }
                Err(e) => {
                    // Tell the client why, if there is something to tell (SERVER_ERROR).
                    let _ = t.flush();
                    return Some(Err(Why::Protocol(e)));
                }
            }
        }
        if closed {
            return Some(t.control.closed().map(|_| ()).map_err(Why::Protocol));
        }
        if let Err(e) = t.flush() {
            return Some(Err(Why::Socket("control send", e)));
        }
        if t.input.len() > MAX_INPUT {
            return Some(Err(Why::Protocol(proto::Error::TooLong(
                u32::try_from(t.input.len()).unwrap_or(u32::MAX),
            ))));
        }
        // A connection that never sends its cookie must not hold the server for long.
        let limit = match t.control.phase() {
            Phase::Cookie => COOKIE_US,
            _ => IDLE_US,
        };
        if now.saturating_sub(t.last_us) > limit {
            return Some(Err(Why::Stalled(t.control.phase(), limit)));
        }
        None
    }

    /// One line per test.
    fn report(t: &Test, end: Result<(), Why>) {
        let peer = Peer(t.peer);
        match end {
            Ok(()) => {
                let bytes: u64 = t.streams.iter().map(|s| s.bytes).sum();
                let us = t.elapsed_us.max(1);
                let dir = if t.reverse() { "sent" } else { "received" };
                println!(
                    "iperf3: test from {peer} done: {dir} {bytes} bytes in {}.{:03} s ({} KB/s)",
                    us / 1_000_000,
                    us % 1_000_000 / 1000,
                    bytes.saturating_mul(1000) / us
                );
            }
            Err(why) => println!("iperf3: test from {peer} dropped: {why}"),
        }
    }

    /// A peer address for the log, or `?`.
    struct Peer(Option<SocketAddrV4>);

    impl fmt::Display for Peer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(a) => write!(f, "{a}"),
                None => f.write_str("?"),
            }
        }
    }
}
