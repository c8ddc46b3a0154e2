//! Skipped tests: the one reason a test may skip (KVM unusable, and the run opted out with
//! `cargo xtask test --no-kvm`), the line a skipped test prints, and how the runner reads
//! that line back to count it.
//!
//! A skipped test still returns normally, so libtest counts it as passed; `proc::TestCounts`
//! subtracts the skip lines from the passes. Everything else a test needs (root, a tool on
//! PATH, a built image) is a failure with a message saying what to do, never a skip.

use crate::prereq;
use std::io::Write;

/// The opt-out: `1` lets tests that need KVM skip where it is unusable; `cargo xtask test
/// --no-kvm` sets it for every test it runs (and clears it otherwise).
pub const NO_KVM_ENV: &str = "ROAM_NO_KVM";

/// How a skip line starts: `skipped: TEST: REASON`, one line on the test's stderr.
const PREFIX: &str = "skipped: ";

/// Whether this run opted out of KVM (`ROAM_NO_KVM=1`).
pub fn no_kvm() -> bool {
    std::env::var(NO_KVM_ENV).is_ok_and(|v| v == "1")
}

/// For the test named `test`, which needs KVM: `true` when KVM is usable. When it is not,
/// under the opt-out it prints the test's skip line and returns `false` (the test returns at
/// once); without the opt-out it panics saying why KVM is unusable and what to do.
pub fn kvm_or_skip(test: &str) -> bool {
    let Some(why) = prereq::kvm_unavailable() else {
        return true;
    };
    if no_kvm() {
        print_line(test, &why);
        return false;
    }
    panic!(
        "{test} needs KVM: {why}\n(on a machine without KVM, `cargo xtask test --no-kvm` or {NO_KVM_ENV}=1 skips the tests that need it and counts them)"
    );
}

/// Prints `skipped: TEST: REASON` straight to stderr (past libtest's capture), in one write
/// so tests running in parallel cannot interleave it.
fn print_line(test: &str, reason: &str) {
    let line = format!("{PREFIX}{test}: {}\n", reason.replace('\n', " "));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The name of the test a skip line is about, if `line` is one.
pub fn skipped_test(line: &str) -> Option<&str> {
    let (test, reason) = line.trim_end().strip_prefix(PREFIX)?.split_once(": ")?;
    let named = !test.is_empty() && !test.contains(char::is_whitespace);
    (named && !reason.trim().is_empty()).then_some(test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_name_their_test_and_nothing_else_is_one() {
        assert_eq!(
            skipped_test("skipped: boot_hello: /dev/kvm not found: load the module\n"),
            Some("boot_hello")
        );
        for not in [
            "skipped: no reason:",
            "skipped: : empty name",
            "skipped: two words: reason",
            "test boot_hello ... ok",
            "  skipped: indented: reason",
            "tick lines skipped: 3",
        ] {
            assert_eq!(skipped_test(not), None, "{not:?}");
        }
    }
}
