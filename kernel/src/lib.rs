//! Roam's kernel: a `no_std` library that every guest image links.
//!
//! The kernel boots from either entry of the boot ABI (ARCHITECTURE.md), sets up the CPU
//! (GDT, TSS, IDT), an identity map of RAM, the heap, the serial log and the clock, then calls
//! the app's `runtime_entry`. Apps talk to it only through the `sys_*` symbols that
//! `hermit-abi` declares (module `abi`).
//!
//! An image links it like this (the kernel brings the entry points, panic handler and
//! allocator; `kernel/image-build.rs` brings the linker script):
//!
//! ```text
//! #![no_std]
//! #![no_main]
//! use kernel as _;
//!
//! #[unsafe(no_mangle)]
//! pub extern "C" fn runtime_entry(_argc: i32, _argv: *const *const u8, _env: *const *const u8) -> ! {
//!     let line = b"Hello from Roam\n";
//!     // SAFETY: the buffer is valid for its length.
//!     unsafe { hermit_abi::write(1, line.as_ptr(), line.len()) };
//!     // SAFETY: exit takes no pointers.
//!     unsafe { hermit_abi::exit(0) }
//! }
//! ```
//!
//! Pure logic (command line, exit statuses, clock math, boot info and memory map parsing,
//! fault decoding) builds on the host too, so `cargo test -p kernel` unit-tests it there; the
//! CPU-specific parts only build for the guest.
//!
//! The kernel assumes it gets zeroed RAM (host-vmm and QEMU both provide it) and does not
//! clear `.bss` itself: that would cost thousands of emulated instructions per boot.

// The guest-only parts need the guest target; on the host only the pure logic builds, so
// `cargo test -p kernel` and host clippy work whatever features other crates unify.
#![cfg_attr(not(test), no_std)]
// `unsafe` lives only in the modules allowed below (ARCHITECTURE.md, "Where unsafe may
// live"): the CPU (`arch`), the `sys_*` functions that take raw pointers by definition
// (`abi`), the heap (and its `size_classes`), the drivers' HAL, the one-CPU lock and the scheduler (the context
// switch's caller, and freeing finished threads' stacks). Everything else is safe code over
// them.
#![deny(unsafe_code)]

// The heap's collections (`poll`'s descriptor index, the app's arguments); the global
// allocator is `heap`.
#[cfg(target_os = "none")]
extern crate alloc;

pub mod bootinfo;
pub mod clock;
pub mod cmdline;
pub mod fault;
pub mod memmap;
pub mod runqueue;
#[allow(unsafe_code)]
pub mod size_classes;
pub mod status;
pub mod tls;

#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod abi;
#[cfg(target_os = "none")]
#[allow(unsafe_code)]
pub mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod hal;
#[cfg(target_os = "none")]
#[allow(unsafe_code)]
pub mod heap;
#[cfg(target_os = "none")]
mod logger;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod sched;
#[cfg(target_os = "none")]
mod serial;
#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod sync;
#[cfg(target_os = "none")]
mod timer;

#[cfg(test)]
mod abi_coverage;
