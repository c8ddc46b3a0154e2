//! Building what the other commands run: guest images and the release host-vmm.

use crate::{image_path, images_dir, proc, root, stdimage, target_dir};
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The guest target every image is built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// The cargo profile for guest images (see the root Cargo.toml).
pub const GUEST_PROFILE: &str = "guest";

/// Names of all images: the crates under `images/` with a `src/main.rs` (libraries shared
/// by apps, such as `app-rt`, are not images), sorted.
pub fn image_names() -> Result<Vec<String>> {
    crates_under_images(|dir| dir.join("src").join("main.rs").is_file())
}

/// Every crate under `images/` built for the guest target: the `no_std` images and the
/// libraries they share (for linting). Std programs are plain std crates: the host lint
/// covers them.
pub fn guest_crates() -> Result<Vec<String>> {
    crates_under_images(|dir| {
        dir.join("Cargo.toml").is_file() && !stdimage::is_std_crate(dir).unwrap_or(false)
    })
}

fn crates_under_images(keep: impl Fn(&std::path::Path) -> bool) -> Result<Vec<String>> {
    let dir = root().join("images");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if keep(&entry.path()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds the named images (all of them when `names` is empty) into target/images/: the
/// `no_std` ones in one cargo build, each std program with [`stdimage::build`].
pub fn build_images(names: &[String]) -> Result<()> {
    crate::prereq::ensure_guest_target()?;
    let known = image_names()?;
    let names = if names.is_empty() {
        known.clone()
    } else {
        names.to_vec()
    };
    for name in &names {
        if !known.contains(name) {
            bail!(
                "no image called `{name}`; the images are: {}",
                known.join(", ")
            );
        }
    }
    let (std_names, names): (Vec<String>, Vec<String>) = names.into_iter().partition(|name| {
        stdimage::is_std_crate(&root().join("images").join(name)).unwrap_or(false)
    });
    for name in &std_names {
        stdimage::build(&root().join("images").join(name).join("Cargo.toml"))?;
    }
    if names.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args([
        "build",
        "--target",
        GUEST_TARGET,
        "--profile",
        GUEST_PROFILE,
    ]);
    for name in &names {
        cmd.args(["-p", name]);
    }
    proc::run(&mut cmd)?;
    std::fs::create_dir_all(images_dir())?;
    let built = target_dir().join(GUEST_TARGET).join(GUEST_PROFILE);
    for name in &names {
        let dest = image_path(name);
        std::fs::copy(built.join(name), &dest)
            .with_context(|| format!("copying image {name} to {}", dest.display()))?;
        eprintln!("    image {name} -> {}", dest.display());
    }
    Ok(())
}

/// Builds the release host-vmm binary.
pub fn build_host_vmm() -> Result<()> {
    proc::run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "host-vmm",
    ]))
}

/// Builds `netprobe` (the client the tests run in namespaces), for benchmarks that use it.
pub fn build_netprobe() -> Result<()> {
    proc::run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--quiet",
        "-p",
        "roam-tests",
        "--bin",
        "netprobe",
    ]))
}

/// Builds the delay line binary ([`crate::delayline_path`]): a debug build, like the xtask
/// binary it belongs to, so it shares that build's dependencies.
pub fn build_delayline() -> Result<()> {
    proc::run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--quiet",
        "-p",
        "xtask",
        "--bin",
        "delayline",
    ]))
}
