//! `crash-panic`: panics. The kernel must print the panic report (message and location) and
//! end the VM with status 101.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    use kernel as _;

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(
        _argc: i32,
        _argv: *const *const u8,
        _env: *const *const u8,
    ) -> ! {
        app_rt::println!("crash-panic: about to panic");
        panic!("crash-panic: deliberate panic to test the kernel's report");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("crash-panic is a Roam guest image: build it with `cargo xtask image crash-panic`");
    std::process::exit(2);
}
