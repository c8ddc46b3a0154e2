//! `memtouch`: a guest that dirties memory while it moves, and checks that none was lost.
//!
//! Arguments (the words after `--`): `MIB RATE`: populate `MIB` MiB, then dirty `RATE` MiB/s
//! of it (a page counts as dirtied whole; `0` only checks). It writes its pattern into every
//! page (the checked words only: RAM is never cleared), then loops: it rewrites pages in turn at the set rate, paced by the monotonic
//! clock, and checks pages in turn in between, forever. With `ip=` on the command line it
//! brings the network up (ping, the guest agent a move talks to) and sleeps 1 ms every
//! 10 ms so the kernel serves it. Here (nested KVM) it dirties at most about 100 MiB/s.
//!
//! The pattern: every page has a generation in a table (`u32` per page), raised each time
//! the page is rewritten. A page's checked words are one every 256 bytes (16 a page: the
//! first word, then every 32nd), each `page << 40 | (generation & 0xff_ffff) << 8 | index`.
//! A check catches a page that a move left stale (an older generation), never sent (zero),
//! sent to the wrong place (another page number), or torn (words of two generations), at
//! 256-byte granularity; corruption confined to the unchecked words between is not seen. The
//! lean choice is deliberate: guest code is emulated here (~0.4 µs an instruction,
//! docs/kvm.md §2), and 16 stores or loads a page keep both dirtying and checking at about
//! 50 instructions a page.
//!
//! Lines: `memtouch: ready mib=M rate=R pages=P populate_ms=T` once filled;
//! `memtouch: sweep S clean dirtied=D checked=C behind=B` each time the checker has gone
//! over every page (`behind`: pages the writer dropped because it could not keep up);
//! `memtouch: CORRUPT at page P word W: found X, expected Y (generation G)`, then exit 3.
//! Bad arguments print `memtouch: FAILED: ...` and exit 1.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    extern crate alloc;

    use alloc::vec;
    use alloc::vec::Vec;
    use app_rt::{Errno, abi, exit, fail, monotonic_us, network_init, poll, println};
    use core::mem::MaybeUninit;
    use kernel as _;

    /// 8-byte words in a 4 KiB page.
    const PAGE_WORDS: usize = 512;
    /// Words between two checked words (256 bytes).
    const STRIDE: usize = 32;
    /// Checked words a page.
    const CHECKED: usize = PAGE_WORDS / STRIDE;
    /// Pages the writer dirties at most between two rounds of checks.
    const WRITE_BATCH: u64 = 64;
    /// Pages checked a round.
    const CHECK_BATCH: usize = 16;
    /// A writer further behind than this (in microseconds of its rate) drops the backlog.
    const MAX_BACKLOG_US: u64 = 100_000;
    /// With a network, how often the loop sleeps 1 ms so the kernel serves it (ping, the
    /// guest agent): the kernel does the network's work only when the app waits.
    const YIELD_EVERY_US: u64 = 10_000;

    fn tag(page: usize, generation: u32, index: usize) -> u64 {
        (page as u64) << 40 | u64::from(generation & 0xff_ffff) << 8 | index as u64
    }

    /// The populated pages: only their checked words are ever written or read, so RAM is
    /// neither cleared first (a `memset` costs one emulated instruction per 8 bytes here)
    /// nor read where it was not written.
    struct Pages<'a> {
        words: &'a mut [MaybeUninit<u64>],
    }

    impl Pages<'_> {
        fn write(&mut self, page: usize, generation: u32) {
            let base = page * PAGE_WORDS;
            for i in 0..CHECKED {
                self.words[base + i * STRIDE].write(tag(page, generation, i));
            }
        }

        fn check(&self, page: usize, generation: u32) {
            let base = page * PAGE_WORDS;
            for i in 0..CHECKED {
                // SAFETY: every checked word of every page was written when it was populated
                // (`write` for all pages before the first check), and only those are read.
                let found = unsafe { self.words[base + i * STRIDE].assume_init() };
                let expected = tag(page, generation, i);
                if found != expected {
                    println!(
                        "memtouch: CORRUPT at page {page} word {}: found {found:#x}, expected \
                         {expected:#x} (generation {generation})",
                        i * STRIDE
                    );
                    exit(3);
                }
            }
        }
    }

    fn number(word: &str, what: &str) -> u64 {
        match word.parse() {
            Ok(n) => n,
            Err(_) => fail(
                "memtouch",
                format_args!("{what} must be a whole number, not {word:?}; usage: -- MIB RATE"),
            ),
        }
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(
        argc: i32,
        argv: *const *const u8,
        _env: *const *const u8,
    ) -> ! {
        // SAFETY: `argc` and `argv` are runtime_entry's own, as the kernel passed them.
        let mut args = unsafe { app_rt::args(argc, argv) };
        let (Some(mib), Some(rate), None) = (args.next(), args.next(), args.next()) else {
            fail(
                "memtouch",
                format_args!(
                    "usage: -- MIB RATE (populate MIB MiB, dirty RATE MiB/s of it), e.g. -- 64 32"
                ),
            )
        };
        let (mib, rate) = (number(mib, "MIB"), number(rate, "RATE"));
        if !(1..=4096).contains(&mib) {
            fail("memtouch", format_args!("MIB must be 1 to 4096, not {mib}"));
        }
        // Without `ip=` there is no network, and nothing to serve.
        let network = match network_init() {
            Ok(()) => true,
            Err(Errno(abi::EINVAL)) => false,
            Err(e) => fail("memtouch", format_args!("network: {e}")),
        };
        let pages = (mib * 256) as usize;
        // Pages per second.
        let rate_pages = rate * 256;
        let start = monotonic_us();
        // One page more, to start on a page boundary: a page of memtouch is a page of RAM.
        let mut backing: Vec<u64> = Vec::with_capacity((pages + 1) * PAGE_WORDS);
        let spare = backing.spare_capacity_mut();
        let skip = (4096 - spare.as_ptr() as usize % 4096) % 4096 / 8;
        let mut memory = Pages {
            words: &mut spare[skip..skip + pages * PAGE_WORDS],
        };
        let mut generations: Vec<u32> = vec![1; pages];
        for page in 0..pages {
            memory.write(page, 1);
        }
        let populated = monotonic_us();
        println!(
            "memtouch: ready mib={mib} rate={rate} pages={pages} populate_ms={}",
            (populated - start) / 1000
        );

        let (mut dirtied, mut checked, mut behind, mut sweep) = (0u64, 0u64, 0u64, 0u64);
        let (mut writer, mut checker) = (0usize, 0usize);
        // Pages the writer should have dirtied since `epoch`, at its rate.
        let mut epoch = populated;
        let mut done_since_epoch = 0u64;
        let mut last_yield = populated;
        loop {
            let now = monotonic_us();
            if network && now - last_yield >= YIELD_EVERY_US {
                if let Err(e) = poll(&mut [], 1) {
                    fail("memtouch", format_args!("poll: {e}"));
                }
                last_yield = monotonic_us();
            }
            if rate_pages > 0 {
                let due = (now - epoch) * rate_pages / 1_000_000;
                if due - done_since_epoch > MAX_BACKLOG_US * rate_pages / 1_000_000 {
                    behind += due - done_since_epoch;
                    epoch = now;
                    done_since_epoch = 0;
                } else {
                    for _ in 0..(due - done_since_epoch).min(WRITE_BATCH) {
                        let generation = generations[writer].wrapping_add(1).max(1);
                        generations[writer] = generation;
                        memory.write(writer, generation);
                        writer = if writer + 1 == pages { 0 } else { writer + 1 };
                        done_since_epoch += 1;
                        dirtied += 1;
                    }
                }
            }
            for _ in 0..CHECK_BATCH {
                memory.check(checker, generations[checker]);
                checked += 1;
                checker += 1;
                if checker == pages {
                    checker = 0;
                    sweep += 1;
                    println!(
                        "memtouch: sweep {sweep} clean dirtied={dirtied} checked={checked} \
                         behind={behind}"
                    );
                }
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("memtouch is a Roam guest image: build it with `cargo xtask image memtouch`");
    std::process::exit(2);
}
