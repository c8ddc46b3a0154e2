//! `std-hello`: an ordinary Rust std program, built for `x86_64-unknown-hermit` and linked
//! with Roam's kernel by `cargo xtask image std-hello`.
//!
//! It prints (also vectored), reads its arguments and environment, sleeps, checks `Instant` and `SystemTime`,
//! reads random bytes through a `HashMap`'s seed and thread-locals with an initial value,
//! runs threads that share a `Mutex`, talk over channels and wait on each other (`threads`),
//! and exits 0 only when every check passed (each failure prints `std-hello: FAILED: ...`
//! and the program exits 1). Nothing in it is Roam-specific: it runs on Linux too.
//!
//! Expected invocation (tests/std.rs): arguments `alpha beta`, environment `ROAM_GREETING=hi`.
//! `std-hello panic` panics instead, to show a panic's message and non-zero exit.
//! `std-hello spin` starts a UDP echo thread on port 7 and a thread that spins forever
//! without yielding, and prints a heartbeat from the main thread every 200 ms, for good: the
//! guest must still answer ping and echo, and the heartbeat must go on.

mod threads;

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{IoSlice, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SLEEP: Duration = Duration::from_millis(20);
/// 2020-09-13: a realtime clock before this is not set.
const PLAUSIBLE_UNIX_SECS: u64 = 1_600_000_000;

thread_local! {
    /// Initialised data in the TLS template (`.tdata`): the kernel must copy it.
    static COUNTER: Cell<u64> = const { Cell::new(0x5eed) };
}

fn main() {
    println!("Hello from std on Roam");
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("panic") => panic!("std-hello: deliberate panic (argument `panic`)"),
        Some("spin") => spin_forever(),
        _ => {}
    }

    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if ok {
            println!("std-hello: ok: {what}");
        } else {
            eprintln!("std-hello: FAILED: {what}");
            failures.push(what);
        }
    };

    check(
        args.get(1..) == Some(&["alpha".to_string(), "beta".to_string()][..]),
        format!("arguments after the program name are [alpha, beta]: {args:?}"),
    );
    let greeting = std::env::var("ROAM_GREETING");
    check(
        greeting.as_deref() == Ok("hi"),
        format!("ROAM_GREETING=hi in the environment: {greeting:?}"),
    );
    check(
        std::env::var_os("ROAM_NOT_SET").is_none(),
        "ROAM_NOT_SET is not set".to_string(),
    );

    let start = Instant::now();
    std::thread::sleep(SLEEP);
    let slept = start.elapsed();
    check(
        slept >= SLEEP && slept < SLEEP * 50,
        format!("thread::sleep({SLEEP:?}) took {slept:?}"),
    );
    let later = Instant::now();
    check(
        later >= start + slept,
        "Instant never goes back".to_string(),
    );

    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    match since_epoch {
        Ok(d) if d.as_secs() >= PLAUSIBLE_UNIX_SECS => {
            println!(
                "std-hello: ok: SystemTime is {} s after the Unix epoch",
                d.as_secs()
            );
        }
        // Without kvmclock the realtime clock counts from boot: a note, not a failure.
        other => println!("std-hello: note: SystemTime reads {other:?}, not a plausible date"),
    }

    let parts = [
        IoSlice::new(b"std-hello: write_vectored "),
        IoSlice::new(b"joins buffers\n"),
    ];
    let mut stdout = std::io::stdout().lock();
    let wrote = stdout
        .write_vectored(&parts)
        .and_then(|n| stdout.flush().map(|()| n));
    drop(stdout);
    check(
        matches!(wrote, Ok(40)),
        format!("stdout's write_vectored wrote both buffers: {wrote:?}"),
    );

    let mut map = HashMap::new();
    for i in 0..1000u32 {
        map.insert(i, i * 2);
    }
    check(
        map.len() == 1000 && map.get(&999) == Some(&1998),
        "a randomly seeded HashMap holds 1000 entries".to_string(),
    );
    let random_seeds_differ = {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(1u8) != RandomState::new().hash_one(1u8)
    };
    check(
        random_seeds_differ,
        "two RandomStates hash differently".to_string(),
    );

    let before = COUNTER.get();
    COUNTER.set(before + 1);
    check(
        before == 0x5eed && COUNTER.get() == 0x5eee,
        format!("a thread-local starts at its initial value 0x5eed: {before:#x}"),
    );

    threads::run(&mut check);

    let read = std::fs::read("/etc/hostname");
    check(
        read.is_err(),
        format!("reading a file fails cleanly: {:?}", read.map(|b| b.len())),
    );

    if failures.is_empty() {
        println!("std-hello: all checks passed");
    } else {
        eprintln!("std-hello: {} checks FAILED", failures.len());
        std::process::exit(1);
    }
}

/// `std-hello spin`: a thread spins forever while the main thread beats every 200 ms and
/// another thread echoes UDP on port 7, so the host can ping and echo meanwhile.
fn spin_forever() -> ! {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    // UDP echo on port 7 from its own thread, blocked in recv_from between datagrams.
    match std::net::UdpSocket::bind("0.0.0.0:7") {
        Ok(socket) => {
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
                eprintln!("std-hello: FAILED: the UDP echo socket stopped");
            });
            println!("std-hello: UDP echo on port 7");
        }
        Err(e) => eprintln!("std-hello: FAILED: binding UDP port 7: {e}"),
    }
    let spins = Arc::new(AtomicU64::new(0));
    let theirs = Arc::clone(&spins);
    std::thread::spawn(move || {
        loop {
            theirs.fetch_add(1, Ordering::Relaxed);
        }
    });
    println!("std-hello: spinning");
    for beat in 1u64.. {
        std::thread::sleep(Duration::from_millis(200));
        println!(
            "std-hello: main thread beat {beat}, spinner at {}",
            spins.load(Ordering::Relaxed)
        );
    }
    unreachable!("the heartbeat never ends")
}
