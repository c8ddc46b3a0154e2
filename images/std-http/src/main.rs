//! `std-http`: a plain Rust std program on a popular crates.io HTTP server, `tiny_http`,
//! used unchanged (it runs over `std::net` and threads, which is all the hermit target
//! needs). Built for `x86_64-unknown-hermit` and linked with Roam's kernel by
//! `cargo xtask image std-http`.
//!
//! On port 8080 (or the port its first argument names):
//! - `GET /` answers a fixed page (`PAGE`);
//! - `GET /count` (any query) adds one to a counter kept in memory and answers `count N`, so a client
//!   can tell that the program's state survived a move;
//! - anything else is 404.
//!
//! tiny_http accepts on its own thread and serves each connection (keep-alive included)
//! from its thread pool; `WORKERS` threads of ours take the parsed requests. The line
//! `std-http: listening on port 8080` tells tests it is ready. It exits 1 if it cannot bind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tiny_http::{Header, Response, Server};

/// The page `GET /` answers (tests compare it byte for byte).
const PAGE: &str = "Hello from tiny_http, a std program on Roam\n";
/// The port unless the first argument names another.
const PORT: u16 = 8080;
/// Threads taking requests from the server.
const WORKERS: usize = 4;

fn main() {
    let port = match std::env::args().nth(1) {
        None => PORT,
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("std-http: `{arg}` is not a port number (usage: std-http [PORT])");
            std::process::exit(2)
        }),
    };
    let server = match Server::http(("0.0.0.0", port)) {
        Ok(server) => Arc::new(server),
        Err(e) => {
            eprintln!("std-http: listening on port {port}: {e}");
            std::process::exit(1)
        }
    };
    let count = Arc::new(AtomicU64::new(0));
    println!("std-http: listening on port {port}");
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (server, count) = (Arc::clone(&server), Arc::clone(&count));
            std::thread::spawn(move || serve(&server, &count))
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

/// Answers requests until the server stops.
fn serve(server: &Server, count: &AtomicU64) {
    let text =
        Header::from_bytes("Content-Type", "text/plain; charset=utf-8").expect("a valid header");
    for request in server.incoming_requests() {
        // The path without its query: `/count?n=7` counts too (a client can number its
        // requests).
        let path = request.url().split('?').next().unwrap_or_default();
        let response = match (request.method().as_str(), path) {
            ("GET", "/") => Response::from_string(PAGE),
            ("GET", "/count") => {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                Response::from_string(format!("count {n}\n"))
            }
            _ => Response::from_string("not found\n").with_status_code(404),
        };
        if let Err(e) = request.respond(response.with_header(text.clone())) {
            eprintln!("std-http: answering: {e}");
        }
    }
}
