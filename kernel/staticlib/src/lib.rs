//! Roam's kernel as a static library, for programs built with Rust's std for
//! `x86_64-unknown-hermit`.
//!
//! The `kernel` crate is an rlib that `no_std` images link directly. A std program is built
//! for another target against another copy of `core`, `alloc` and `compiler_builtins`, so it
//! takes the kernel as native code instead: this crate makes the staticlib, and
//! `cargo xtask image` (xtask/src/stdimage.rs) merges it into one relocatable object whose
//! only global symbols are the ABI (`sys_*`) and the `roam_*` symbols link.ld names.

#![cfg_attr(target_os = "none", no_std)]

#[cfg(target_os = "none")]
use kernel as _;
