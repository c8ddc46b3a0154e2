//! The app's `argc`, `argv` and environment, from the kernel command line
//! (docs/boot-abi.md §8): `argv[0]` is `roam`, then come the words after `--`; the
//! environment is the `NAME=VALUE` of each `env=NAME=VALUE` word.
//!
//! Both are NULL-terminated arrays of NUL-terminated strings that live for good, as
//! `runtime_entry` expects. Without arguments or environment they are static and the heap is
//! not touched; otherwise one allocation holds the strings and one both arrays.

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
    let mut words = cmdline::app_words(text).peekable();
    if words.peek().is_none() {
        return AppArgs {
            argc: 1,
            argv: ARGV.0.as_ptr(),
            env: ENV.0.as_ptr(),
        };
    }
    // Sized once from the command line (a word and its NUL take at most the text and one
    // byte; at most half the text are words), so the words are copied once and nothing
    // grows, in one pass over the text: every instruction is emulated here.
    let mut strings: Vec<u8> = Vec::with_capacity(PROGRAM.len() + 1 + text.len() + 1);
    let words_max = 1 + text.len().div_ceil(2);
    let mut args: Vec<usize> = Vec::with_capacity(words_max);
    let mut env: Vec<usize> = Vec::with_capacity(words_max);
    let mut add = |to: &mut Vec<usize>, word: &[u8]| {
        to.push(strings.len());
        strings.extend_from_slice(word);
        strings.push(0);
    };
    add(&mut args, PROGRAM);
    for word in words {
        match word {
            cmdline::AppWord::Arg(arg) => add(&mut args, arg.as_bytes()),
            cmdline::AppWord::Env(entry) => add(&mut env, entry.as_bytes()),
        }
    }
    let argc = args.len();
    let offsets = args.iter().chain(&env);
    let strings: &'static [u8] = strings.leak();
    // argv, its NULL, then the environment and its NULL, in one array.
    let mut pointers: Vec<*const c_char> = Vec::with_capacity(argc + env.len() + 2);
    for (i, &at) in offsets.enumerate() {
        if i == argc {
            pointers.push(core::ptr::null());
        }
        pointers.push(strings[at..].as_ptr().cast::<c_char>());
    }
    if env.is_empty() {
        pointers.push(core::ptr::null());
    }
    pointers.push(core::ptr::null());
    let pointers: &'static [*const c_char] = pointers.leak();
    AppArgs {
        // At most 2048 words fit in the 4 KiB command line.
        argc: i32::try_from(argc).unwrap_or(i32::MAX),
        argv: pointers.as_ptr(),
        env: pointers[argc + 1..].as_ptr(),
    }
}
