//! Moves of a guest that dirties memory while it moves: `memtouch` (images/memtouch)
//! populates 64 MiB, rewrites 32 MiB/s of it and checks its pattern all the time, printing
//! `memtouch: sweep N clean ...` after each full check and `memtouch: CORRUPT ...` (then
//! exiting) at the first wrong word.
//!
//! Pre-copy goes over a migration link capped below the rate the guest is seen dirtying
//! (measured over a check sweep before the move: emulated guest code slows down on a busy
//! machine, and a cap fixed for a quiet one let the guest converge without help), where
//! plain pre-copy cannot converge (every pass finds more dirty than half of what it sent):
//! the move must throttle the vCPU (auto-converge, docs/migration.md §4.1) and pause within
//! a generous bound; zero-copy moves the same guest. After each move the guest must finish two
//! full checks at the destination with nothing wrong.

use roam_tests::{image, kvm_present, say};
use std::time::{Duration, Instant};
use xtask::bench::migrate::Mode;
use xtask::migrate::HostVmmGuest;
use xtask::net::TwoHosts;

/// Guest RAM, MiB.
const MEM_MIB: u32 = 128;
/// What memtouch populates and how fast it dirties it (MiB, MiB/s).
const POPULATE_MIB: u32 = 64;
const DIRTY_MIB_S: u32 = 32;
/// The migration link for pre-copy: this share of the dirtying rate measured before the
/// move, at most 200 Mbit/s (25 MB/s, below the 33.5 MB/s memtouch aims at) and at least
/// 16 Mbit/s (the first pass then takes ~35 s).
const LINK_SHARE: f64 = 0.6;
const LINK_MBIT: (u32, u32) = (16, 200);
/// The pause target (host-vmm's default, as QEMU's).
const DOWNTIME_MS: u32 = 300;
/// The pause bound: the target plus room for a misestimated last pass on a shared machine.
const MAX_PAUSE_MS: f64 = 1500.0;
/// Bound for memtouch's first full check, and for two more after a move.
const SWEEPS: Duration = Duration::from_secs(40);

/// The `dirtied=` count of memtouch's sweep line `n` in `console`.
fn dirtied_at(console: &str, n: u64) -> Option<u64> {
    let line = console
        .lines()
        .find(|l| l.contains(&format!("memtouch: sweep {n} clean ")))?;
    line.split("dirtied=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The rate at which memtouch dirties pages now, in Mbit/s: over its next check sweep,
/// timed from here (the console is looked at every 100 ms).
fn dirty_mbit_s(guest: &mut HostVmmGuest) -> f64 {
    let from = last_sweep(&guest.console());
    wait_for_sweep(guest, from + 1);
    let start = Instant::now();
    wait_for_sweep(guest, from + 2);
    let secs = start.elapsed().as_secs_f64();
    let console = guest.console();
    let (Some(a), Some(b)) = (
        dirtied_at(&console, from + 1),
        dirtied_at(&console, from + 2),
    ) else {
        panic!(
            "no dirtied= in memtouch's sweep lines:\n{}",
            guest.console_tail(20)
        );
    };
    (b.saturating_sub(a) * 4096 * 8) as f64 / secs / 1e6
}

/// The last `memtouch: sweep N` in `console`.
fn last_sweep(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.split("memtouch: sweep ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until memtouch has reported sweep `n`, failing at once on a corruption.
fn wait_for_sweep(guest: &mut HostVmmGuest, n: u64) {
    let deadline = Instant::now() + SWEEPS;
    loop {
        let console = guest.console();
        assert!(
            !console.contains("memtouch: CORRUPT"),
            "memtouch found its memory wrong:\n{}",
            guest.console_tail(40)
        );
        if last_sweep(&console) >= n {
            return;
        }
        assert!(
            guest.running() && Instant::now() < deadline,
            "memtouch did not finish check sweep {n} within {SWEEPS:?} (running: {}):\n{}",
            guest.running(),
            guest.console_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Boots memtouch on a new two-host topology and waits for its first clean sweep.
fn boot(tag: &str) -> (HostVmmGuest, TwoHosts) {
    roam_tests::host_vmm();
    let hosts = TwoHosts::up(tag).expect("two-host topology");
    let mut guest = HostVmmGuest::boot(
        &hosts,
        &image("memtouch"),
        MEM_MIB,
        &format!("-- {POPULATE_MIB} {DIRTY_MIB_S}"),
    )
    .unwrap_or_else(|e| panic!("booting memtouch: {e:#}"));
    wait_for_sweep(&mut guest, 1);
    (guest, hosts)
}

/// Moves `guest` by `mode`, then waits for two full sweeps at the destination.
fn move_and_check(guest: &mut HostVmmGuest, hosts: &TwoHosts, mode: Mode) -> xtask::migrate::Moved {
    let moved = guest
        .move_to_other(hosts, mode, Some(DOWNTIME_MS))
        .unwrap_or_else(|e| panic!("{} move of memtouch: {e:#}", mode.key()));
    // The sweep under way at the move may have started before it: two more make one whole
    // sweep that ran at the destination only.
    let after = last_sweep(&guest.console()) + 2;
    wait_for_sweep(guest, after);
    moved
}

#[test]
fn a_busy_guest_moved_by_precopy_converges_by_throttling_and_its_memory_checks() {
    if !kvm_present("a_busy_guest_moved_by_precopy_converges_by_throttling_and_its_memory_checks") {
        return;
    }
    let (mut guest, hosts) = boot("mtp");
    let dirty = dirty_mbit_s(&mut guest);
    let link = ((dirty * LINK_SHARE) as u32).clamp(LINK_MBIT.0, LINK_MBIT.1);
    hosts
        .limit_migration_link(link)
        .expect("capping the migration link");
    let started = Instant::now();
    let moved = move_and_check(&mut guest, &hosts, Mode::PreCopy);
    let s = &moved.summary;
    eprintln!("{}", moved.progress);
    let throttled: Vec<&str> = moved
        .progress
        .lines()
        .filter(|l| l.contains("vCPU throttled"))
        .collect();
    say(&format!(
        "memtouch {POPULATE_MIB} MiB at {DIRTY_MIB_S} MiB/s (seen dirtying {dirty:.0} Mbit/s) \
         over {link} Mbit/s: pause {:.1} ms, {} passes, total {:.0} ms, last throttle: {}; \
         checked clean at the destination ({:.0} s in all)",
        s.pause_ms,
        s.passes,
        s.total_ms,
        throttled
            .last()
            .map_or("none", |l| l.rsplit(", ").next().unwrap_or(l)),
        started.elapsed().as_secs_f64()
    ));
    assert!(
        !throttled.is_empty(),
        "the move never throttled the vCPU, so this guest did not need auto-converge (is the \
         link cap in place?):\n{}",
        moved.progress
    );
    assert!(
        s.pause_ms > 0.0 && s.pause_ms <= MAX_PAUSE_MS,
        "pause {:.1} ms, bound {MAX_PAUSE_MS} ms:\n{}",
        s.pause_ms,
        moved.progress
    );
}

#[test]
fn a_busy_guest_moved_by_zero_copy_keeps_its_memory() {
    if !kvm_present("a_busy_guest_moved_by_zero_copy_keeps_its_memory") {
        return;
    }
    let (mut guest, hosts) = boot("mtz");
    let moved = move_and_check(&mut guest, &hosts, Mode::ZeroCopy);
    say(&format!(
        "memtouch {POPULATE_MIB} MiB at {DIRTY_MIB_S} MiB/s by zero-copy: pause {:.3} ms, total {:.1} ms; checked clean at the destination",
        moved.summary.pause_ms, moved.summary.total_ms
    ));
    roam_tests::assert_pause("the zero-copy move", moved.summary.pause_ms);
}
