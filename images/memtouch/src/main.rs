//! `memtouch`: a guest that dirties memory while it moves, and checks that none was lost.
//!
//! Arguments (the words after `--`): `MIB RATE`: populate `MIB` MiB, then dirty `RATE` MiB/s
//! of it (a page counts as dirtied whole; `0` only checks). It fills every page with a
//! pattern, then loops: it rewrites pages in turn at the set rate, paced by the monotonic
//! clock, and checks pages in turn in between, forever.
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
    use app_rt::{exit, fail, monotonic_us, println};
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

    type Page = [u64; PAGE_WORDS];

    fn tag(page: usize, generation: u32, index: usize) -> u64 {
        (page as u64) << 40 | u64::from(generation & 0xff_ffff) << 8 | index as u64
    }

    fn write(page: &mut Page, number: usize, generation: u32) {
        for i in 0..CHECKED {
            page[i * STRIDE] = tag(number, generation, i);
        }
    }

    fn check(page: &Page, number: usize, generation: u32) {
        for i in 0..CHECKED {
            let found = page[i * STRIDE];
            let expected = tag(number, generation, i);
            if found != expected {
                println!(
                    "memtouch: CORRUPT at page {number} word {}: found {found:#x}, expected \
                     {expected:#x} (generation {generation})",
                    i * STRIDE
                );
                exit(3);
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
        if mib == 0 {
            fail("memtouch", format_args!("MIB must be at least 1"));
        }
        let pages = (mib * 256) as usize;
        // Pages per second.
        let rate_pages = rate * 256;
        let start = monotonic_us();
        let mut memory: Vec<Page> = vec![[0; PAGE_WORDS]; pages];
        let mut generations: Vec<u32> = vec![1; pages];
        for (number, page) in memory.iter_mut().enumerate() {
            write(page, number, 1);
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
        loop {
            if rate_pages > 0 {
                let now = monotonic_us();
                let due = (now - epoch) * rate_pages / 1_000_000;
                if due - done_since_epoch > MAX_BACKLOG_US * rate_pages / 1_000_000 {
                    behind += due - done_since_epoch;
                    epoch = now;
                    done_since_epoch = 0;
                } else {
                    for _ in 0..(due - done_since_epoch).min(WRITE_BATCH) {
                        let generation = generations[writer].wrapping_add(1).max(1);
                        generations[writer] = generation;
                        write(&mut memory[writer], writer, generation);
                        writer = if writer + 1 == pages { 0 } else { writer + 1 };
                        done_since_epoch += 1;
                        dirtied += 1;
                    }
                }
            }
            for _ in 0..CHECK_BATCH {
                check(&memory[checker], checker, generations[checker]);
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
