//! `delayline`: a one-way delay for every packet a router forwards, in user space (the test
//! machines' kernel has no `netem`). It attaches to a TUN device (`dly0`), reads each IPv4
//! packet the router routes into it, holds it for the delay, and writes it back into the same
//! TUN, where the router forwards it on through its main table. [`xtask::net::Wan`] creates
//! the device and the policy rules that send forwarded traffic through it (see
//! xtask/src/net/wan.rs) and starts this program in the router's namespace:
//!
//! ```text
//! delayline --dev dly0 --delay-ms N [--max-packets P] [--max-bytes B] [--lifeline]
//! ```
//!
//! It prints `delayline: dly0 delay N ms` once the device is attached, and one summary line
//! when it stops: on SIGTERM or SIGINT, when its standard input reaches end of file (with
//! `--lifeline`: the process that started it has gone), or when the device goes away.
//!
//! Two threads share one queue ordered by due time: the reader stamps each packet with
//! arrival + delay; the writer sleeps on a condition variable until the earliest due time
//! (or until a packet arrives in an empty queue) and writes what is due. Nothing spins. The
//! queue is bounded in packets and bytes; a packet arriving at a full queue is dropped and
//! counted, as a router's full queue would.
//!
//! The only `unsafe` is in module `sys`: the TUN ioctl and the signal mask/wait.

#![deny(unsafe_code)]

use clap::Parser;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The largest delay accepted: a test bench's WAN, not a satellite.
const MAX_DELAY_MS: u64 = 10_000;
/// The largest packet read from the TUN (its MTU is far smaller; GSO is off without a vnet
/// header, so the kernel never hands over more than the MTU).
const MAX_PACKET: usize = 65_536;

/// Holds every packet routed into a TUN device for a fixed time, then writes it back.
#[derive(Parser, Debug)]
#[command(name = "delayline", version, about, long_about = None)]
struct Args {
    /// The TUN device to attach to (created if missing; `Wan` creates it first).
    #[arg(long, default_value = "dly0")]
    dev: String,
    /// One-way delay in milliseconds (1 to 10,000).
    #[arg(long)]
    delay_ms: u64,
    /// Packets held at most; more are dropped.
    #[arg(long, default_value_t = 16_384)]
    max_packets: usize,
    /// Bytes held at most; more are dropped.
    #[arg(long, default_value_t = 32 << 20)]
    max_bytes: usize,
    /// Stop when standard input reaches end of file (the starter holds its other end).
    #[arg(long)]
    lifeline: bool,
}

/// Packets waiting for their due time, earliest first, bounded in count and bytes.
#[derive(Debug)]
struct DelayQueue {
    items: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    max_packets: usize,
    max_bytes: usize,
}

impl DelayQueue {
    fn new(max_packets: usize, max_bytes: usize) -> DelayQueue {
        DelayQueue {
            items: VecDeque::new(),
            bytes: 0,
            max_packets,
            max_bytes,
        }
    }

    /// Queues `packet` for `due`; `false` (and the packet is dropped) when the queue is full.
    /// Keeps the queue ordered by due time, equal times in arrival order. With one fixed delay
    /// every packet goes to the back, so this is O(1) in practice.
    fn push(&mut self, due: Instant, packet: Vec<u8>) -> bool {
        if self.items.len() >= self.max_packets || self.bytes + packet.len() > self.max_bytes {
            return false;
        }
        let at = self.items.partition_point(|(d, _)| *d <= due);
        self.bytes += packet.len();
        self.items.insert(at, (due, packet));
        true
    }

    /// The earliest packet if it is due at `now`; otherwise when the next one will be, if any.
    fn pop_due(&mut self, now: Instant) -> Result<Vec<u8>, Option<Instant>> {
        match self.items.front() {
            Some((due, _)) if *due <= now => {
                let (_, packet) = self.items.pop_front().expect("the front exists");
                self.bytes -= packet.len();
                Ok(packet)
            }
            Some((due, _)) => Err(Some(*due)),
            None => Err(None),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// What the threads count, for the summary line.
#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_full: AtomicU64,
    dropped_other: AtomicU64,
    write_errors: AtomicU64,
    max_queue: AtomicU64,
}

impl Counters {
    fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "forwarded {} packets ({} bytes), dropped {} at a full queue and {} not IPv4, {} write errors, at most {} queued",
            get(&self.forwarded),
            get(&self.forwarded_bytes),
            get(&self.dropped_full),
            get(&self.dropped_other),
            get(&self.write_errors),
            get(&self.max_queue)
        )
    }
}

/// Why the program stops.
enum Stop {
    Signal(i32),
    StdinClosed,
    Device(String),
}

type Shared = Arc<(Mutex<DelayQueue>, Condvar)>;

fn main() -> ExitCode {
    let args = Args::parse();
    if !(1..=MAX_DELAY_MS).contains(&args.delay_ms) || args.max_packets == 0 {
        eprintln!("delayline: --delay-ms must be 1 to {MAX_DELAY_MS} and --max-packets at least 1");
        return ExitCode::from(2);
    }
    // Before any thread exists, so every thread inherits the mask and the signals wait for
    // the waiter thread below instead of killing the process mid-write.
    let signals = match sys::TermSignals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("delayline: blocking SIGTERM and SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tun = match sys::open_tun(&args.dev) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("delayline: attaching to TUN device {}: {e}", args.dev);
            return ExitCode::FAILURE;
        }
    };
    let writer = match tun.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("delayline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delay = Duration::from_millis(args.delay_ms);
    let shared: Shared = Arc::new((
        Mutex::new(DelayQueue::new(args.max_packets, args.max_bytes)),
        Condvar::new(),
    ));
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();

    {
        let (shared, counters, stop) = (shared.clone(), counters.clone(), stop_tx.clone());
        std::thread::spawn(move || {
            let why = read_loop(tun, delay, &shared, &counters);
            let _ = stop.send(Stop::Device(why));
        });
    }
    {
        let (shared, counters) = (shared.clone(), counters.clone());
        std::thread::spawn(move || write_loop(writer, &shared, &counters));
    }
    {
        let stop = stop_tx.clone();
        std::thread::spawn(move || {
            if let Ok(signal) = signals.wait() {
                let _ = stop.send(Stop::Signal(signal));
            }
        });
    }
    if args.lifeline {
        let stop = stop_tx.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = stop.send(Stop::StdinClosed);
        });
    }
    drop(stop_tx);

    println!("delayline: {} delay {} ms", args.dev, args.delay_ms);
    let (why, code) = match stop_rx.recv() {
        Ok(Stop::Signal(s)) => (format!("signal {s}"), ExitCode::SUCCESS),
        Ok(Stop::StdinClosed) => ("standard input closed".into(), ExitCode::SUCCESS),
        Ok(Stop::Device(e)) => (format!("device: {e}"), ExitCode::FAILURE),
        Err(_) => ("no thread left".into(), ExitCode::FAILURE),
    };
    // Packets still held are dropped with the process, as a link going down drops them.
    let held = shared.0.lock().map(|q| q.len()).unwrap_or(0);
    println!(
        "delayline: stopped ({why}): {}, {held} still held",
        counters.summary()
    );
    code
}

/// Reads packets from the TUN and queues them; returns why it stopped.
fn read_loop(mut tun: File, delay: Duration, shared: &Shared, counters: &Counters) -> String {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let n = match tun.read(&mut buf) {
            Ok(0) => return "end of file".into(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return format!("read: {e}"),
        };
        // IPv4 only: the router's policy rules send only IPv4 here; anything else (IPv6
        // neighbour discovery from the device itself) would just loop back, so drop it.
        if n < 20 || buf[0] >> 4 != 4 {
            counters.dropped_other.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let due = Instant::now() + delay;
        let (lock, wake) = &**shared;
        let Ok(mut queue) = lock.lock() else {
            return "queue lock poisoned".into();
        };
        let was_empty = queue.len() == 0;
        if queue.push(due, buf[..n].to_vec()) {
            counters
                .max_queue
                .fetch_max(queue.len() as u64, Ordering::Relaxed);
        } else {
            counters.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        drop(queue);
        // The writer sleeps until the front's due time; only a packet that becomes the front
        // (the queue was empty) changes that.
        if was_empty {
            wake.notify_one();
        }
    }
}

/// Writes each packet back into the TUN when it is due, sleeping in between.
fn write_loop(mut tun: File, shared: &Shared, counters: &Counters) {
    let (lock, wake) = &**shared;
    let Ok(mut queue) = lock.lock() else { return };
    loop {
        let now = Instant::now();
        match queue.pop_due(now) {
            Ok(packet) => {
                drop(queue);
                match tun.write(&packet) {
                    Ok(_) => {
                        counters.forwarded.fetch_add(1, Ordering::Relaxed);
                        counters
                            .forwarded_bytes
                            .fetch_add(packet.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let Ok(q) = lock.lock() else { return };
                queue = q;
            }
            Err(Some(due)) => {
                let Ok((q, _)) = wake.wait_timeout(queue, due - now) else {
                    return;
                };
                queue = q;
            }
            Err(None) => {
                let Ok(q) = wake.wait(queue) else { return };
                queue = q;
            }
        }
    }
}

/// The FFI: attaching to a TUN device, and waiting for SIGTERM/SIGINT.
#[allow(unsafe_code)]
mod sys {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;

    /// Opens `/dev/net/tun` and attaches it to the layer-3 TUN device `name` without packet
    /// information headers (creating the device if it does not exist).
    pub fn open_tun(name: &str) -> io::Result<File> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device names have 1 to 15 bytes",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
        for (dst, &src) in ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        let mut req = libc::ifreq {
            ifr_name,
            ifr_ifru: libc::__c_anonymous_ifr_ifru {
                ifru_flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            },
        };
        // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads the `ifreq` on
        // this stack frame (a NUL-terminated name, checked above, and the flags) and may write
        // the name back into it; the struct outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }

    /// SIGTERM and SIGINT, blocked in this thread and every thread it starts afterwards, so
    /// they queue for [`TermSignals::wait`] instead of ending the process.
    pub struct TermSignals(libc::sigset_t);

    impl TermSignals {
        /// Blocks both signals in the calling thread; call it before starting any thread.
        pub fn block() -> io::Result<TermSignals> {
            // SAFETY: `set` is a local sigset_t, initialised by sigemptyset before the other
            // calls read it; pthread_sigmask only reads it (the old mask is not asked for).
            let ret = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&raw mut set);
                libc::sigaddset(&raw mut set, libc::SIGTERM);
                libc::sigaddset(&raw mut set, libc::SIGINT);
                let ret =
                    libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
                (ret, set)
            };
            match ret {
                (0, set) => Ok(TermSignals(set)),
                (e, _) => Err(io::Error::from_raw_os_error(e)),
            }
        }

        /// Waits until one of the signals arrives and returns its number.
        pub fn wait(&self) -> io::Result<i32> {
            let mut signal: libc::c_int = 0;
            // SAFETY: `self.0` is the initialised set from `block`; sigwait writes the signal
            // number into the local `signal`.
            let ret = unsafe { libc::sigwait(&raw const self.0, &raw mut signal) };
            if ret != 0 {
                return Err(io::Error::from_raw_os_error(ret));
            }
            Ok(signal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_releases_packets_in_due_order_and_only_when_due() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DelayQueue::new(10, 1000);
        assert_eq!(q.pop_due(t0), Err(None));
        assert!(q.push(t0 + ms(20), vec![2]));
        assert!(q.push(t0 + ms(10), vec![1]));
        assert!(q.push(t0 + ms(20), vec![3]));
        assert_eq!(q.pop_due(t0), Err(Some(t0 + ms(10))));
        assert_eq!(q.pop_due(t0 + ms(10)), Ok(vec![1]));
        assert_eq!(q.pop_due(t0 + ms(15)), Err(Some(t0 + ms(20))));
        // Equal due times leave in arrival order.
        assert_eq!(q.pop_due(t0 + ms(25)), Ok(vec![2]));
        assert_eq!(q.pop_due(t0 + ms(25)), Ok(vec![3]));
        assert_eq!(q.pop_due(t0 + ms(25)), Err(None));
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn the_queue_is_bounded_in_packets_and_bytes() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(2, 10);
        assert!(q.push(t0, vec![0; 4]));
        assert!(q.push(t0, vec![0; 4]));
        assert!(!q.push(t0, vec![0; 1]), "a third packet is over the count");
        let mut q = DelayQueue::new(5, 10);
        assert!(q.push(t0, vec![0; 6]));
        assert!(!q.push(t0, vec![0; 5]), "11 bytes are over the byte bound");
        assert!(q.push(t0, vec![0; 4]));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn arguments_parse() {
        let a = Args::try_parse_from(["delayline", "--delay-ms", "25", "--lifeline"]).unwrap();
        assert_eq!((a.dev.as_str(), a.delay_ms, a.lifeline), ("dly0", 25, true));
        assert!(Args::try_parse_from(["delayline"]).is_err());
    }
}
