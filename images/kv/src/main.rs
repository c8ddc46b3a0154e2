//! `kv`: a key-value server over TCP (protocol in `store.rs`), so tests can prove that no
//! state and no byte is lost when the guest moves.
//!
//! Listens on port 6380 (backlog 128) with one `poll` loop over non-blocking sockets, up to
//! 1,023 clients at once (one `poll` call takes 1,024 descriptors; the kernel refuses
//! connections it has no memory for); its first line, `kv: listening on port 6380`, tells
//! tests it is ready.

#![cfg_attr(target_os = "none", no_std, no_main)]

// Guest code and host unit tests use the store; the host stub binary does not.
#[cfg(any(test, target_os = "none"))]
mod store;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("kv is a Roam guest image: build it with `cargo xtask image kv`");
}

#[cfg(target_os = "none")]
mod app {
    extern crate alloc;

    use crate::store::Store;
    use alloc::vec::Vec;
    use app_rt::abi::{POLLIN, POLLOUT};
    use app_rt::{Errno, Socket, fail, poll, poll_fd, println};
    use kernel as _;

    const PORT: u16 = 6380;
    /// Connections served at once (with the listener, what one `poll` call takes); more
    /// are accepted and closed at once.
    const MAX_CLIENTS: usize = 1023;
    /// Pending connections the kernel keeps for `accept` (its maximum).
    const BACKLOG: i32 = 128;

    /// One connection: bytes of an unfinished request, and replies not sent yet.
    struct Client {
        socket: Socket,
        input: Vec<u8>,
        output: Vec<u8>,
        sent: usize,
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(_: i32, _: *const *const u8, _: *const *const u8) -> ! {
        if let Err(e) = app_rt::network_init() {
            fail("kv", format_args!("network_init: {e}"));
        }
        let listener = Socket::listen_tcp(PORT, BACKLOG)
            .unwrap_or_else(|e| fail("kv", format_args!("listen on {PORT}: {e}")));
        println!("kv: listening on port {PORT}");
        let mut store = Store::default();
        let mut clients: Vec<Client> = Vec::new();
        let mut fds = Vec::new();
        loop {
            fds.clear();
            fds.push(poll_fd(listener.fd(), POLLIN));
            for c in &clients {
                let wants = if c.sent < c.output.len() {
                    POLLOUT
                } else {
                    POLLIN
                };
                fds.push(poll_fd(c.socket.fd(), wants));
            }
            if let Err(e) = poll(&mut fds, -1) {
                fail("kv", format_args!("poll: {e}"));
            }
            // Serve before accepting so `fds[1..]` still matches `clients`.
            let mut i = 0;
            clients.retain_mut(|c| {
                i += 1;
                fds[i].revents == 0 || serve(c, &mut store)
            });
            if fds[0].revents != 0 {
                while let Ok(socket) = listener.accept() {
                    if clients.len() < MAX_CLIENTS {
                        clients.push(Client {
                            socket,
                            input: Vec::new(),
                            output: Vec::new(),
                            sent: 0,
                        });
                    }
                }
            }
        }
    }

    /// Moves one client forward; `false` when it is finished.
    fn serve(c: &mut Client, store: &mut Store) -> bool {
        if c.sent < c.output.len() {
            return match c.socket.send(&c.output[c.sent..]) {
                Ok(n) => {
                    c.sent += n;
                    if c.sent == c.output.len() {
                        c.output.clear();
                        c.sent = 0;
                    }
                    true
                }
                Err(e) => e == Errno::AGAIN,
            };
        }
        let mut buf = [0u8; 2048];
        let n = match c.socket.recv(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) => return e == Errno::AGAIN,
        };
        c.input.extend_from_slice(&buf[..n]);
        store.feed(&mut c.input, &mut c.output);
        if !c.output.is_empty() {
            // Reply right away; poll picks up whatever the socket does not take now.
            return serve(c, store);
        }
        true
    }
}
