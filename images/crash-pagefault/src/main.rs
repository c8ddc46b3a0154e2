//! `crash-pagefault`: reads an unmapped address. The kernel must report a page fault (vector
//! 14, RIP, error code, CR2=0xffffdead00000000) and end the VM with status 102.
//!
//! The address is `0xdead_0000_0000` sign-extended: x86-64 only translates canonical
//! addresses (bits 63..47 all equal), and 0xdead_0000_0000 itself has bit 47 set with zeros
//! above it, so reading it raises #GP (no CR2) instead of a page fault.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    use app_rt::println;
    use kernel as _;

    /// Canonical, in the upper half, which the kernel's identity map of RAM never reaches.
    const UNMAPPED: usize = 0xffff_dead_0000_0000;

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(
        _argc: i32,
        _argv: *const *const u8,
        _env: *const *const u8,
    ) -> ! {
        println!("crash-pagefault: reading {UNMAPPED:#x}");
        // SAFETY: deliberately not safe: the read must fault, and the fault ends the VM
        // before the value could be used.
        let value =
            unsafe { core::ptr::read_volatile(core::ptr::without_provenance::<u64>(UNMAPPED)) };
        println!("crash-pagefault: FAILED: the read did not fault");
        app_rt::exit(if value == 0 { 1 } else { 2 })
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "crash-pagefault is a Roam guest image: build it with `cargo xtask image crash-pagefault`"
    );
    std::process::exit(2);
}
