//! The guest's clock and timers across moves: `ticker` (images/ticker) sleeps 20 ms at a
//! time and prints `ticker: tick N mono_us=T` every 50 ticks, failing loudly if
//! CLOCK_MONOTONIC goes back or a sleep ends early. Moved by pre-copy and back by
//! zero-copy, its ticks must go on at the destination, N and T only ever growing, and T never
//! jumping ahead by more than the ticks slept, a move's pause and generous slack.

use roam_tests::{image, kvm_present, say};
use std::time::{Duration, Instant};
use xtask::bench::migrate::Mode;
use xtask::migrate::HostVmmGuest;
use xtask::net::TwoHosts;

/// Ticks between two lines, and the length of one (images/ticker).
const TICKS_PER_LINE: u64 = 50;
const TICK_US: u64 = 20_000;
/// How much more than its 50 ticks of sleep one line's monotonic time may take: late
/// wake-ups (emulated guest ring-0 on nested KVM, a shared machine) and a move's pause.
/// A clock restored from a stale or foreign TSC jumps by far more.
const MAX_EXTRA_US: u64 = 3_000_000;

/// `(tick, mono_us)` of every tick line in `console`, in order.
fn ticks(console: &str) -> Vec<(u64, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("ticker: tick ")?;
            let (n, t) = rest.split_once(" mono_us=")?;
            Some((n.parse().ok()?, t.trim().parse().ok()?))
        })
        .collect()
}

/// Waits (bounded) until `guest` has printed a tick line beyond `after`; returns the lines.
fn wait_for_tick_after(guest: &HostVmmGuest, after: u64) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = ticks(&guest.console());
        if t.last().is_some_and(|(n, _)| *n > after) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no tick after tick {after} within 10 s:\n{}",
            guest.console_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_monotonic_clock_never_goes_back_and_timers_fire_across_moves() {
    if !kvm_present("the_monotonic_clock_never_goes_back_and_timers_fire_across_moves") {
        return;
    }
    roam_tests::host_vmm();
    let started = Instant::now();
    let hosts = TwoHosts::up("ck").expect("two-host topology");
    let mut guest = HostVmmGuest::boot(&hosts, &image("ticker"), 64, "")
        .unwrap_or_else(|e| panic!("booting ticker: {e:#}"));
    let mut last = wait_for_tick_after(&guest, 0).last().map_or(0, |t| t.0);
    for mode in [Mode::PreCopy, Mode::ZeroCopy] {
        let moved = guest
            .move_to_other(&hosts, mode, None)
            .unwrap_or_else(|e| panic!("{} move: {e:#}", mode.key()));
        say(&format!(
            "ticker moved by {} (pause {:.3} ms) after tick {last}",
            mode.key(),
            moved.summary.pause_ms
        ));
        roam_tests::assert_pause(&format!("the {} move", mode.key()), moved.summary.pause_ms);
        // Two more lines at the destination: its timer fires, again and again.
        last = wait_for_tick_after(&guest, last + TICKS_PER_LINE)
            .last()
            .map_or(0, |t| t.0);
    }
    let console = guest.console();
    assert!(
        !console.contains("ticker: FAILED"),
        "the guest saw its clock fail:\n{}",
        guest.console_tail(30)
    );
    let t = ticks(&console);
    for w in t.windows(2) {
        let ((n0, t0), (n1, t1)) = (w[0], w[1]);
        assert_eq!(
            n1,
            n0 + TICKS_PER_LINE,
            "tick lines skipped or repeated: {t:?}"
        );
        assert!(
            t1 >= t0 + TICKS_PER_LINE * TICK_US,
            "50 ticks of 20 ms took {} us of monotonic time: {t:?}",
            t1.saturating_sub(t0)
        );
        assert!(
            t1 <= t0 + TICKS_PER_LINE * TICK_US + MAX_EXTRA_US,
            "the monotonic clock jumped ahead: 50 ticks of 20 ms took {} us (bound {} us): {t:?}",
            t1 - t0,
            TICKS_PER_LINE * TICK_US + MAX_EXTRA_US
        );
    }
    // Over the whole run the guest's clock cannot have run ahead of the host's.
    if let (Some(first), Some(last)) = (t.first(), t.last()) {
        let host_us = started.elapsed().as_micros() as u64;
        assert!(
            last.1 - first.1 <= host_us,
            "the guest's monotonic clock advanced {} us while the host's advanced {host_us} us",
            last.1 - first.1
        );
    }
    let longest = t.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or(0);
    say(&format!(
        "ticker: {} tick lines, ticks {}..{} over two moves, monotonic clock always ahead, longest line {longest} us",
        t.len(),
        t.first().map_or(0, |x| x.0),
        t.last().map_or(0, |x| x.0)
    ));
}
