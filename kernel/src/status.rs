//! Exit statuses written to the debug-exit port (docs/boot-abi.md, "Exit statuses").

/// Largest status an app's `exit(n)` can produce.
pub const APP_MAX: u32 = 100;
/// A kernel panic (the report is on the serial console).
pub const PANIC: u32 = 101;
/// A CPU exception (the report names vector, RIP, error code and, for #PF, CR2).
pub const CPU_EXCEPTION: u32 = 102;

// The kernel's own statuses can never be confused with an app's.
const _: () = assert!(PANIC > APP_MAX && CPU_EXCEPTION > APP_MAX && PANIC != CPU_EXCEPTION);

/// The status for an app's `exit(n)`: `n` clamped to 0..=100.
///
/// A negative `n` is a failure on Unix (the parent sees `n & 0xff`, at least 128), so it
/// clamps to 100 rather than to 0: a failing app must never look successful.
pub fn app(n: i32) -> u32 {
    if n < 0 {
        APP_MAX
    } else {
        (n as u32).min(APP_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_statuses_clamp_to_0_through_100() {
        assert_eq!(app(0), 0);
        assert_eq!(app(1), 1);
        assert_eq!(app(100), 100);
        assert_eq!(app(101), 100);
        assert_eq!(app(i32::MAX), 100);
    }

    #[test]
    fn negative_app_statuses_are_failures() {
        assert_eq!(app(-1), 100);
        assert_eq!(app(i32::MIN), 100);
    }
}
