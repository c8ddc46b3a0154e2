//! The build script every guest image uses (`build = "../../kernel/image-build.rs"`).
//!
//! It links the image with the kernel's `link.ld`, whose absolute path the kernel's own build
//! script publishes as `DEP_ROAM_KERNEL_LINK_SCRIPT`, and fails early with a clear message when
//! the static relocation model is missing (the default static-PIE model cannot link the
//! kernel's 32-bit boot code).

use std::env;

fn main() {
    // Host builds of an image are a stub that links no kernel: nothing to do.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let Ok(script) = env::var("DEP_ROAM_KERNEL_LINK_SCRIPT") else {
        panic!("the image does not depend on the `kernel` crate, which provides link.ld");
    };
    println!("cargo::rustc-link-arg-bins=-T{script}");

    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let static_model = flags.contains(&"-Crelocation-model=static")
        || flags
            .windows(2)
            .any(|w| w == ["-C", "relocation-model=static"]);
    if !static_model {
        panic!(
            "guest images need `-C relocation-model=static` (set in .cargo/config.toml under \
             [target.x86_64-unknown-none]); is RUSTFLAGS overriding it?"
        );
    }
}
