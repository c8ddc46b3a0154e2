//! `netecho`: the network smoke test guest.
//!
//! It brings the network up (the kernel reads `ip=ADDRESS/PREFIX gw=ADDRESS` from its command
//! line; ARP and ping are answered by the kernel), then echoes TCP and UDP on port 7
//! (RFC 862) with one `poll` loop over non-blocking sockets: up to eight TCP clients at once,
//! every UDP datagram sent back to its sender. Its first line, `netecho: listening on port 7
//! ...` (with how long the network took to come up), tells tests it is ready. It runs until
//! the VM is stopped; it exits 1 if the network cannot come up.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    use app_rt::abi::{POLLIN, POLLOUT};
    use app_rt::{Errno, Socket, fail, monotonic_us, poll, poll_fd, println};
    use kernel as _;

    const PORT: u16 = 7;
    const MAX_CLIENTS: usize = 8;
    const BUFFER: usize = 2048;

    /// One TCP client and the echo data it has not taken yet.
    struct Client {
        socket: Socket,
        buf: [u8; BUFFER],
        start: usize,
        end: usize,
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(_: i32, _: *const *const u8, _: *const *const u8) -> ! {
        let start = monotonic_us();
        if let Err(e) = app_rt::network_init() {
            fail("netecho", format_args!("network_init: {e}"));
        }
        let took = monotonic_us().saturating_sub(start);
        let udp = Socket::bind_udp(PORT)
            .unwrap_or_else(|e| fail("netecho", format_args!("UDP port {PORT}: {e}")));
        let tcp = Socket::listen_tcp(PORT, MAX_CLIENTS as i32)
            .unwrap_or_else(|e| fail("netecho", format_args!("TCP port {PORT}: {e}")));
        println!("netecho: listening on port {PORT} (TCP and UDP); network_init took {took} us");

        let mut clients: [Option<Client>; MAX_CLIENTS] = [const { None }; MAX_CLIENTS];
        let mut fds = [poll_fd(-1, 0); MAX_CLIENTS + 2];
        loop {
            fds[0] = poll_fd(tcp.fd(), POLLIN);
            fds[1] = poll_fd(udp.fd(), POLLIN);
            for (slot, client) in fds[2..].iter_mut().zip(&clients) {
                *slot = match client {
                    Some(c) if c.start < c.end => poll_fd(c.socket.fd(), POLLOUT),
                    Some(c) => poll_fd(c.socket.fd(), POLLIN),
                    None => poll_fd(-1, 0),
                };
            }
            if let Err(e) = poll(&mut fds, -1) {
                fail("netecho", format_args!("poll: {e}"));
            }
            if fds[0].revents != 0 {
                accept_all(&tcp, &mut clients);
            }
            if fds[1].revents != 0 {
                echo_datagrams(&udp);
            }
            for (entry, client) in fds[2..].iter().zip(clients.iter_mut()) {
                if entry.revents != 0 && client.as_mut().is_some_and(|c| !serve(c)) {
                    // Dropping the client closes its socket.
                    *client = None;
                }
            }
        }
    }

    /// Accepts every pending connection; closes those beyond [`MAX_CLIENTS`].
    fn accept_all(tcp: &Socket, clients: &mut [Option<Client>]) {
        while let Ok(socket) = tcp.accept() {
            if let Some(slot) = clients.iter_mut().find(|c| c.is_none()) {
                *slot = Some(Client {
                    socket,
                    buf: [0; BUFFER],
                    start: 0,
                    end: 0,
                });
            }
        }
    }

    /// Sends every waiting datagram back to its sender.
    fn echo_datagrams(udp: &Socket) {
        let mut buf = [0u8; BUFFER];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            // A datagram the stack cannot take now is dropped, as UDP allows.
            let _ = udp.send_to(&buf[..n], &from);
        }
    }

    /// Moves data for one TCP client: sends what is pending, else receives and echoes.
    /// `false` when the client is done (end of stream or error).
    fn serve(c: &mut Client) -> bool {
        if c.start == c.end {
            match c.socket.recv(&mut c.buf) {
                Ok(0) => return false,
                Ok(n) => (c.start, c.end) = (0, n),
                Err(e) => return e == Errno::AGAIN,
            }
        }
        match c.socket.send(&c.buf[c.start..c.end]) {
            Ok(n) => c.start += n,
            Err(e) => return e == Errno::AGAIN,
        }
        true
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("netecho is a Roam guest image: build it with `cargo xtask image netecho`");
    std::process::exit(2);
}
