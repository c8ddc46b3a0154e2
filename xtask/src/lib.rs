//! Roam's build, run and measurement helpers.
//!
//! The `xtask` binary (`cargo xtask ...`) is the command-line face of this library; the
//! integration tests in `tests/` use the same functions, so a test boots a guest exactly the
//! way a user does.

#![deny(unsafe_code)]

pub mod api;
pub mod artifacts;
pub mod bench;
pub mod certs;
pub mod ctl;
pub mod demo;
pub mod fuzz;
#[cfg(test)]
mod hygiene;
pub mod migrate;
pub mod net;
pub mod pingd;
pub mod prereq;
pub mod proc;
pub mod profile;
pub mod public_dir;
pub mod qmp;
pub mod skip;
pub mod soak;
pub mod stats;
pub mod stdimage;
pub mod vm;
pub mod widearea;

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Where `cargo xtask image` puts guest images.
pub fn images_dir() -> PathBuf {
    target_dir().join("images")
}

/// The path of a built guest image.
pub fn image_path(name: &str) -> PathBuf {
    images_dir().join(format!("{name}.elf"))
}

/// The release host-vmm binary that xtask builds and runs.
pub fn host_vmm_path() -> PathBuf {
    target_dir().join("release").join("host-vmm")
}

/// The `netprobe` client binary (tests/netprobe.rs), built by [`artifacts::build_netprobe`].
pub fn netprobe_path() -> PathBuf {
    target_dir().join("debug").join("netprobe")
}

/// The delay line binary (`xtask/src/bin/delayline.rs`) that [`net::Wan`] runs in its WAN
/// router, built by [`artifacts::build_delayline`].
pub fn delayline_path() -> PathBuf {
    target_dir().join("debug").join("delayline")
}
