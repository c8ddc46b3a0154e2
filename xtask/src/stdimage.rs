//! Std programs as Roam images: an ordinary Rust program built with std for Hermit's
//! operating system, linked with Roam's kernel into one bootable ELF (ARCHITECTURE.md,
//! "Std programs").
//!
//! Three steps, each cached:
//! 1. the kernel as a static library (`kernel/staticlib`, the same `guest` build the
//!    `no_std` images share), merged by `rust-lld -r` into one relocatable object whose
//!    only global symbols are the ABI (`sys_*`) and the `roam_*` symbols `link.ld` names
//!    (`objcopy --keep-global-symbol`), so its own `core`, `alloc`, `compiler_builtins`,
//!    panic handler and allocator never meet std's; the object and `link.ld` go to a
//!    directory named by their content hash;
//! 2. the program and std for [`STD_TARGET`] with `-Zbuild-std` (std itself is rebuilt
//!    only when the toolchain or these flags change);
//! 3. the link, by `cargo rustc`, whose extra arguments (the kernel object and `link.ld`,
//!    by their hashed path) reach the program's crate only: a changed kernel relinks the
//!    program and nothing else.

use crate::{image_path, images_dir, prereq, proc, root, target_dir};
use anyhow::{Context, Result, bail};
use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target std programs are built for: `x86_64-unknown-hermit` made soft-float and
/// without a red zone (`kernel/x86_64-unknown-hermit-softfloat.json`).
pub const STD_TARGET: &str = "x86_64-unknown-hermit-softfloat";

/// The `-Z` flags of the std build (tier-3 target: std is built from the `rust-src`
/// component; the kernel does not export `memcpy` and friends, so std brings its own).
const BUILD_STD: [&str; 3] = [
    "-Zjson-target-spec",
    "-Zbuild-std=std,panic_abort",
    "-Zbuild-std-features=compiler-builtins-mem",
];

/// The cargo profile std programs are built with (their own workspace's).
const STD_PROFILE: &str = "release";

/// The symbols the kernel object keeps global: the ABI and what link.ld refers to.
const KERNEL_EXPORTS: [&str; 2] = ["sys_*", "roam_*"];

/// Whether the crate in `dir` is a std program: its Cargo.toml says so with
/// `[package.metadata.roam]` and `std = true`.
pub fn is_std_crate(dir: &Path) -> Result<bool> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut in_table = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[package.metadata.roam]";
        } else if in_table && line.replace(' ', "") == "std=true" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The target specification file.
fn target_spec() -> PathBuf {
    root().join("kernel").join(format!("{STD_TARGET}.json"))
}

/// Builds the std program of the package at `manifest` (its one binary) into
/// `target/images/<binary>.elf`; returns the binary's name.
pub fn build(manifest: &Path) -> Result<String> {
    prereq::ensure_rust_src()?;
    prereq::ensure_packages(&[prereq::BINUTILS])?;
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("no Cargo.toml at {}", manifest.display()))?;
    let name = binary_name(&manifest)?;
    let kernel = kernel_object()?;

    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root())
        .arg("rustc")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--bin", &name, "--profile", STD_PROFILE, "--target"])
        .arg(target_spec())
        .args(BUILD_STD)
        .arg("--")
        .arg(format!("-Clink-arg=-T{}", kernel.join("link.ld").display()))
        .arg(format!(
            "-Clink-arg={}",
            kernel.join("roam-kernel.o").display()
        ))
        // Only for this build: the tier-3 target needs -Z flags on the stable toolchain.
        .env("RUSTC_BOOTSTRAP", "1")
        // Set, not inherited, so std's cache never depends on the caller's RUSTFLAGS.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Zunstable-options")
        .env("CARGO_TARGET_DIR", target_dir());
    proc::run(&mut cmd)?;

    std::fs::create_dir_all(images_dir())?;
    let built = target_dir().join(STD_TARGET).join(STD_PROFILE).join(&name);
    let dest = image_path(&name);
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    eprintln!("    image {name} (std) -> {}", dest.display());
    Ok(name)
}

/// The one binary of the package at `manifest`, from `cargo metadata`.
fn binary_name(manifest: &Path) -> Result<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata for {} failed: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let package = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest))
        .with_context(|| format!("{} is not a package manifest", manifest.display()))?;
    let bins: Vec<&str> = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    match bins.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "{} has no binary: a Roam image is a program (src/main.rs)",
            manifest.display()
        ),
        many => bail!(
            "{} has {} binaries ({}); Roam builds one image per package: keep one",
            manifest.display(),
            many.len(),
            many.join(", ")
        ),
    }
}

/// Builds the kernel object and returns the directory holding `roam-kernel.o` and
/// `link.ld`, named by their content hash (reused when it exists).
fn kernel_object() -> Result<PathBuf> {
    use crate::artifacts::{GUEST_PROFILE, GUEST_TARGET};
    crate::prereq::ensure_guest_target()?;
    proc::run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--quiet",
        "-p",
        "kernel-staticlib",
        "--target",
        GUEST_TARGET,
        "--profile",
        GUEST_PROFILE,
    ]))?;
    let staticlib = target_dir()
        .join(GUEST_TARGET)
        .join(GUEST_PROFILE)
        .join("libkernel_staticlib.a");
    let script = root().join("kernel").join("link.ld");
    let mut hasher = DefaultHasher::new();
    for file in [&staticlib, &script] {
        hasher.write(&std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    let parent = target_dir().join("roam-kernel");
    let dir = parent.join(format!("{:016x}", hasher.finish()));
    if dir.join("roam-kernel.o").is_file() {
        return Ok(dir);
    }

    let partial = parent.join("merged.o");
    std::fs::create_dir_all(&dir)?;
    proc::run(
        Command::new(rust_lld()?)
            .args(["-flavor", "gnu", "-r", "--whole-archive"])
            .arg(&staticlib)
            .arg("-o")
            .arg(&partial),
    )?;
    let mut objcopy = Command::new("objcopy");
    objcopy.arg("--wildcard");
    for symbol in KERNEL_EXPORTS {
        objcopy.arg(format!("--keep-global-symbol={symbol}"));
    }
    // The embedded LLVM bitcode is never used (the link is not LTO) and is half the size.
    objcopy.args(["--remove-section=.llvmbc", "--remove-section=.llvmcmd"]);
    proc::run(objcopy.arg(&partial).arg(dir.join("roam-kernel.o")))?;
    std::fs::remove_file(&partial)?;
    std::fs::copy(&script, dir.join("link.ld"))?;

    // Older kernels' objects: nothing links them any more.
    for entry in std::fs::read_dir(&parent)?.flatten() {
        if entry.path() != dir && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(dir)
}

/// The pinned toolchain's `rust-lld` (shipped with rustc, next to the host's libraries).
fn rust_lld() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .current_dir(root())
        .args(["--print", "target-libdir"])
        .output()
        .context("running rustc --print target-libdir")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lld = libdir.with_file_name("bin").join("rust-lld");
    if !lld.is_file() {
        bail!(
            "rust-lld not found at {}: the pinned toolchain's rustc component ships it",
            lld.display()
        );
    }
    Ok(lld)
}
