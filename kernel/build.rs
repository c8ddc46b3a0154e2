//! Publishes the absolute path of `link.ld` to the crates that link the kernel.
//!
//! Images read it as `DEP_ROAM_KERNEL_LINK_SCRIPT` in their own build script and pass
//! `-T<path>` to the linker, so the layout lives in one file owned by the kernel.

use std::path::Path;

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("link.ld");
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::metadata=LINK_SCRIPT={}", script.display());
}
