//! `ticker`: the guest whose clock a migration must not break.
//!
//! It brings the network up (so the guest agent runs and ping is answered), then sleeps
//! 20 ms at a time forever through `poll` with no descriptors: a LAPIC timer must fire for
//! every tick. After each sleep it checks CLOCK_MONOTONIC: never behind the last reading,
//! and at least 20 ms later than before the sleep. Every 50 ticks it prints
//! `ticker: tick N mono_us=T`; a failed check prints `ticker: FAILED: ...` and exits 1.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    use app_rt::{fail, monotonic_us, network_init, poll, println};
    use kernel as _;

    /// One sleep.
    const TICK_MS: i32 = 20;
    /// Ticks between two lines.
    const REPORT_EVERY: u64 = 50;

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(
        _argc: i32,
        _argv: *const *const u8,
        _env: *const *const u8,
    ) -> ! {
        if let Err(e) = network_init() {
            fail("ticker", format_args!("network: {e}"));
        }
        println!("ticker: up, one tick every {TICK_MS} ms");
        let mut last = monotonic_us();
        let mut tick = 0u64;
        loop {
            if let Err(e) = poll(&mut [], TICK_MS) {
                fail("ticker", format_args!("poll: {e}"));
            }
            let now = monotonic_us();
            if now < last {
                fail(
                    "ticker",
                    format_args!("the monotonic clock went back from {last} us to {now} us"),
                );
            }
            if now - last < TICK_MS as u64 * 1000 {
                fail(
                    "ticker",
                    format_args!("a {TICK_MS} ms sleep ended after {} us", now - last),
                );
            }
            last = now;
            tick += 1;
            if tick.is_multiple_of(REPORT_EVERY) {
                println!("ticker: tick {tick} mono_us={now}");
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ticker is a Roam guest image: build it with `cargo xtask image ticker`");
    std::process::exit(2);
}
