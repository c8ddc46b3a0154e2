//! std-hello's thread checks: threads that share a `Mutex` and talk over channels, `Condvar`
//! (woken and timing out), `park`, `OnceLock`, `RwLock`, a rendezvous channel, thread-locals
//! per thread with their destructors, sleeping and spinning threads that do not hold up the
//! others (preemption), a thread preempted inside a backward copy that leaves the others'
//! copies alone, and a thread the kernel cannot make failing cleanly.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, OnceLock, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
const INCREMENTS: u64 = 500;
const NAP: Duration = Duration::from_millis(20);
/// Waits that must not time out in a passing run (generous: nested KVM, shared cores).
const PATIENCE: Duration = Duration::from_secs(20);

/// Thread-local destructors that ran (std runs them as each thread ends).
static DESTRUCTORS: AtomicUsize = AtomicUsize::new(0);

struct CountsItsDrop(Cell<u32>);

impl Drop for CountsItsDrop {
    fn drop(&mut self) {
        DESTRUCTORS.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static DROPS: CountsItsDrop = const { CountsItsDrop(Cell::new(0)) };
}

/// Runs every thread check through `check(ok, what)`.
pub fn run(check: &mut impl FnMut(bool, String)) {
    mutex_and_channel(check);
    condvar(check);
    park(check);
    once_and_rwlock(check);
    rendezvous(check);
    preemption(check);
    backward_copy_preempted(check);
    let huge = thread::Builder::new().stack_size(1 << 40).spawn(|| ());
    check(
        huge.is_err(),
        format!(
            "a thread with a 1 TiB stack fails with an io::Error: {:?}",
            huge.err()
        ),
    );
    let cpus = thread::available_parallelism().map(|n| n.get());
    check(
        cpus.as_ref().is_ok_and(|n| *n == 1),
        format!("available_parallelism is 1: {cpus:?}"),
    );
}

fn mutex_and_channel(check: &mut impl FnMut(bool, String)) {
    let total = Arc::new(Mutex::new(0u64));
    let (tx, rx) = mpsc::channel();
    let before = Instant::now();
    let handles: Vec<_> = (0..WORKERS)
        .map(|w| {
            let total = Arc::clone(&total);
            let tx = tx.clone();
            thread::spawn(move || {
                DROPS.with(|d| d.0.set(1));
                let fresh_tls = crate::COUNTER.get();
                for i in 0..INCREMENTS {
                    *total.lock().unwrap() += 1;
                    if i % 100 == 0 {
                        thread::yield_now();
                    }
                }
                let _ = tx.send((w, fresh_tls, Instant::now()));
            })
        })
        .collect();
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    let joined = handles.into_iter().filter_map(|h| h.join().ok()).count();
    check(
        joined == WORKERS && results.len() == WORKERS,
        format!(
            "{WORKERS} threads ran, sent over a channel and joined: {joined} joined, {} messages",
            results.len()
        ),
    );
    let sum = *total.lock().unwrap();
    check(
        sum == WORKERS as u64 * INCREMENTS,
        format!("{WORKERS} threads x {INCREMENTS} increments of one Mutex: {sum}"),
    );
    check(
        results.iter().all(|(_, tls, _)| *tls == 0x5eed),
        format!(
            "each thread's thread-local starts from the template, not main's value: {:x?}",
            results.iter().map(|r| r.1).collect::<Vec<_>>()
        ),
    );
    check(
        results.iter().all(|(_, _, at)| *at >= before),
        "Instant::now in other threads is not before the spawn".to_string(),
    );
    let drops = DESTRUCTORS.load(Ordering::SeqCst);
    check(
        drops == WORKERS,
        format!("thread-local destructors ran once per thread: {drops}"),
    );
}

fn condvar(check: &mut impl FnMut(bool, String)) {
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let theirs = Arc::clone(&pair);
    let start = Instant::now();
    let notifier = thread::spawn(move || {
        thread::sleep(NAP);
        *theirs.0.lock().unwrap() = true;
        theirs.1.notify_one();
    });
    let (lock, cv) = &*pair;
    let (ready, waited) = cv
        .wait_timeout_while(lock.lock().unwrap(), PATIENCE, |ready| !*ready)
        .unwrap();
    let elapsed = start.elapsed();
    check(
        *ready && !waited.timed_out() && elapsed >= NAP,
        format!("a Condvar is notified by a thread after its {NAP:?} sleep: {elapsed:?}"),
    );
    drop(ready);
    let _ = notifier.join();

    let start = Instant::now();
    let (_guard, waited) = cv.wait_timeout(lock.lock().unwrap(), NAP).unwrap();
    let elapsed = start.elapsed();
    check(
        waited.timed_out() && elapsed >= NAP,
        format!("an unnotified Condvar wait times out after {NAP:?}: {elapsed:?}"),
    );
}

fn park(check: &mut impl FnMut(bool, String)) {
    let go = Arc::new(AtomicBool::new(false));
    let theirs = Arc::clone(&go);
    let parked = thread::spawn(move || {
        while !theirs.load(Ordering::Acquire) {
            thread::park();
        }
        42
    });
    thread::sleep(NAP);
    go.store(true, Ordering::Release);
    parked.thread().unpark();
    let result = parked.join();
    check(
        matches!(result, Ok(42)),
        format!("a parked thread is unparked: {result:?}"),
    );
}

fn once_and_rwlock(check: &mut impl FnMut(bool, String)) {
    static VALUE: OnceLock<u32> = OnceLock::new();
    static INITS: AtomicUsize = AtomicUsize::new(0);
    let seen: Vec<_> = (0..WORKERS)
        .map(|_| {
            thread::spawn(|| {
                *VALUE.get_or_init(|| {
                    INITS.fetch_add(1, Ordering::SeqCst);
                    // The others wait on the Once meanwhile.
                    thread::sleep(Duration::from_millis(5));
                    7
                })
            })
        })
        .map(|h| h.join().ok())
        .collect();
    let inits = INITS.load(Ordering::SeqCst);
    check(
        inits == 1 && seen.iter().all(|v| *v == Some(7)),
        format!(
            "a OnceLock is initialised once by {WORKERS} racing threads: {inits} inits, {seen:?}"
        ),
    );

    let lock = Arc::new(RwLock::new(3u32));
    let together = Arc::new(Barrier::new(3));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let lock = Arc::clone(&lock);
            let together = Arc::clone(&together);
            // All three hold the read lock at the barrier at once.
            thread::spawn(move || {
                let value = lock.read().unwrap();
                together.wait();
                *value
            })
        })
        .collect();
    let read: Vec<_> = readers.into_iter().map(|h| h.join().ok()).collect();
    *lock.write().unwrap() += 2;
    let after = *lock.read().unwrap();
    check(
        read.iter().all(|v| *v == Some(3)) && after == 5,
        format!("an RwLock is read by 3 threads at once, then written: {read:?}, {after}"),
    );
}

fn rendezvous(check: &mut impl FnMut(bool, String)) {
    const ROUNDS: u32 = 50;
    let (to_echo, echo_in) = mpsc::sync_channel::<u32>(0);
    let (echo_out, from_echo) = mpsc::sync_channel::<u32>(0);
    let echo = thread::spawn(move || {
        for n in echo_in {
            if echo_out.send(n + 1).is_err() {
                break;
            }
        }
    });
    let mut ok = 0;
    for n in 0..ROUNDS {
        if to_echo.send(n).is_ok() && from_echo.recv() == Ok(n + 1) {
            ok += 1;
        }
    }
    drop(to_echo);
    let _ = echo.join();
    check(
        ok == ROUNDS,
        format!("{ROUNDS} round trips over two rendezvous channels: {ok}"),
    );
}

fn preemption(check: &mut impl FnMut(bool, String)) {
    // A thread that never yields, while main sleeps: only the timer gets main back.
    let stop = Arc::new(AtomicBool::new(false));
    let spins = Arc::new(AtomicU64::new(0));
    let (their_stop, their_spins) = (Arc::clone(&stop), Arc::clone(&spins));
    let spinner = thread::spawn(move || {
        while !their_stop.load(Ordering::Relaxed) {
            their_spins.fetch_add(1, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    thread::sleep(NAP);
    let slept = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = spinner.join();
    let spun = spins.load(Ordering::Relaxed);
    check(
        spun > 0 && slept >= NAP && slept < PATIENCE,
        format!(
            "main sleeps {NAP:?} and wakes while a thread spins without yielding: {slept:?}, {spun} spins"
        ),
    );

    // The other way round: main spins while a thread sleeps, then waits for its flag.
    let done = Arc::new(AtomicBool::new(false));
    let theirs = Arc::clone(&done);
    let sleeper = thread::spawn(move || {
        thread::sleep(NAP);
        theirs.store(true, Ordering::Release);
    });
    let start = Instant::now();
    let mut spun = 0u64;
    while !done.load(Ordering::Acquire) && start.elapsed() < PATIENCE {
        spun += 1;
    }
    let _ = sleeper.join();
    let woke = done.load(Ordering::Acquire);
    check(
        woke && spun > 0,
        format!(
            "a sleeping thread wakes while main spins without yielding: after {:?}, {spun} spins",
            start.elapsed()
        ),
    );
}

/// One thread shifts a buffer up by a byte over and over (`copy_within` to a higher,
/// overlapping place: memmove copies backwards, with the direction flag set) until told to
/// stop; main yields to it and, each time it gets the CPU back, copies a block forward into
/// the middle of a guarded area and checks the copy and both guards. The kernel's interrupt
/// and exception entries must clear the flag: a preempted mover must not make the next
/// thread's string instructions run downwards, over memory below their buffers.
fn backward_copy_preempted(check: &mut impl FnMut(bool, String)) {
    const BLOCK: usize = 4096;
    const FOR: Duration = Duration::from_millis(300);
    let stop = Arc::new(AtomicBool::new(false));
    let theirs = Arc::clone(&stop);
    let mover = thread::spawn(move || {
        let mut buf: Vec<u8> = (0..16 * 1024).map(|i| i as u8).collect();
        let mut rounds = 0u64;
        while !theirs.load(Ordering::Relaxed) {
            let len = buf.len();
            buf.copy_within(0..len - 1, 1);
            rounds += 1;
        }
        rounds
    });
    let source: Vec<u8> = (0..BLOCK).map(|i| (i * 7) as u8).collect();
    let mut area = vec![0xA5u8; 3 * BLOCK];
    let (mut copies, mut bad) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < FOR {
        thread::yield_now();
        area[BLOCK..2 * BLOCK].copy_from_slice(&source);
        let guards = area[..BLOCK].iter().chain(&area[2 * BLOCK..]);
        copies += 1;
        if area[BLOCK..2 * BLOCK] != source[..] || guards.clone().any(|&b| b != 0xA5) {
            bad += 1;
            // A backward copy ends with CLD: with the flag leaked, it clears it here so
            // the report below prints instead of scribbling over the heap.
            area.copy_within(0..BLOCK - 1, 1);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = mover.join().unwrap_or(0);
    check(
        // Main yields before each copy and the mover never does: every copy after the
        // first follows a preemption of the mover.
        bad == 0 && copies >= 2 && rounds > 0,
        format!(
            "forward copies stay right while another thread is preempted in backward ones: \
             {bad} of {copies} wrong, {rounds} backward rounds"
        ),
    );
}
