//! `std-echo`: a plain Rust std program, built for `x86_64-unknown-hermit` and linked with
//! Roam's kernel by `cargo xtask image std-echo`.
//!
//! It echoes TCP and UDP on port 7 (RFC 862), the way anyone would write it with std: a
//! `TcpListener` whose accept loop gives each client its own thread, and a `UdpSocket` served
//! by one more thread. Its line `std-echo: listening on port 7 (TCP and UDP)` tells tests it
//! is ready. It runs until the VM is stopped; it exits 1 if it cannot bind. Nothing in it is
//! Roam-specific: it runs on Linux too (with a port argument, e.g. `-- 7007`, as non-root).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

/// The echo port unless the first argument names another.
const PORT: u16 = 7;

fn main() {
    let port = match std::env::args().nth(1) {
        None => PORT,
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("std-echo: `{arg}` is not a port number (usage: std-echo [PORT])");
            std::process::exit(2)
        }),
    };
    let udp = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail("UDP", port, e));
    let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail("TCP", port, e));
    std::thread::spawn(move || udp_echo(udp));
    println!("std-echo: listening on port {port} (TCP and UDP)");
    for client in tcp.incoming() {
        match client {
            Ok(stream) => {
                if let Err(e) = std::thread::Builder::new().spawn(move || tcp_echo(stream)) {
                    // Out of threads: this client is dropped (closed), the others go on.
                    eprintln!("std-echo: no thread for a client: {e}");
                }
            }
            Err(e) => eprintln!("std-echo: accept: {e}"),
        }
    }
}

fn fail(what: &str, port: u16, e: std::io::Error) -> ! {
    eprintln!("std-echo: binding {what} port {port}: {e}");
    std::process::exit(1)
}

/// Echoes one TCP client until it closes its side.
fn tcp_echo(mut stream: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends every datagram back to its sender.
fn udp_echo(socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = socket.send_to(&buf[..n], from);
            }
            Err(e) => {
                eprintln!("std-echo: UDP echo stopped: {e}");
                return;
            }
        }
    }
}
