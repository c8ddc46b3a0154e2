//! The app's `argc`, `argv` and environment, from the kernel command line
//! (docs/boot-abi.md §8): `argv[0]` is `roam`, then come the words after `--`; the
//! environment is the `NAME=VALUE` of each `env=NAME=VALUE` word.
//!
//! Both are NULL-terminated arrays of NUL-terminated strings that live for good, as
//! `runtime_entry` expects. Without arguments or environment they are static and the heap is
//! not touched; otherwise one allocation holds the strings and two hold the arrays.

use crate::arch::bootmem;
use crate::cmdline;
use alloc::vec::Vec;
use core::ffi::c_char;

/// A NULL-terminated pointer array that can live in a static.
#[repr(transparent)]
struct PointerArray<const N: usize>([*const c_char; N]);

// SAFETY: the pointers point at immutable string literals; nothing writes through them.
unsafe impl<const N: usize> Sync for PointerArray<N> {}

/// The program name, `argv[0]`.
const PROGRAM: &[u8] = b"roam";
/// argv without arguments: the program name only.
static ARGV: PointerArray<2> = PointerArray([c"roam".as_ptr(), core::ptr::null()]);
/// An empty environment.
static ENV: PointerArray<1> = PointerArray([core::ptr::null()]);

/// What `runtime_entry` gets.
pub struct AppArgs {
    /// Number of `argv` entries before its NULL.
    pub argc: i32,
    /// The arguments, `argv[0]` first, NULL-terminated.
    pub argv: *const *const c_char,
    /// `NAME=VALUE` strings, NULL-terminated.
    pub env: *const *const c_char,
}

/// The arguments and environment the command line gives the app.
pub fn from_cmdline() -> AppArgs {
    // A command line that is not UTF-8 was ignored as a whole (cmdline::parse warned).
    let text = core::str::from_utf8(bootmem::cmdline()).unwrap_or("");
    let args = cmdline::app_args(text);
    let env = cmdline::app_env(text);
    if args.clone().next().is_none() && env.clone().next().is_none() {
        return AppArgs {
            argc: 1,
            argv: ARGV.0.as_ptr(),
            env: ENV.0.as_ptr(),
        };
    }
    let argv_words = core::iter::once(PROGRAM).chain(args.map(str::as_bytes));
    let env_words = env.map(str::as_bytes);

    // All strings, NUL-terminated, in one buffer that is never freed.
    let mut strings = Vec::new();
    let mut starts = Vec::new();
    for word in argv_words.clone().chain(env_words) {
        starts.push(strings.len());
        strings.extend_from_slice(word);
        strings.push(0);
    }
    let strings: &'static [u8] = strings.leak();
    let mut pointers = starts
        .into_iter()
        .map(|start| strings[start..].as_ptr().cast::<c_char>());
    let argc = argv_words.count();
    let mut argv: Vec<*const c_char> = pointers.by_ref().take(argc).collect();
    argv.push(core::ptr::null());
    let mut envp: Vec<*const c_char> = pointers.collect();
    envp.push(core::ptr::null());
    AppArgs {
        // At most 2048 words fit in the 4 KiB command line.
        argc: i32::try_from(argc).unwrap_or(i32::MAX),
        argv: argv.leak().as_ptr(),
        env: envp.leak().as_ptr(),
    }
}
