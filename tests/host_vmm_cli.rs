//! host-vmm's command line: `--help`, and one clear line plus exit 125 for each bad input.

use roam_tests::{TempFile, host_vmm, image, kvm_present, root, tool};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use xtask::public_dir::PublicDir;

/// host-vmm's status for its own failures (docs/boot-abi.md, exit statuses).
const HOST_VMM_FAILED: i32 = 125;

fn host_vmm_cmd() -> Command {
    Command::new(host_vmm())
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("host-vmm starts")
}

/// Asserts the run failed as host-vmm's own error, with one line naming `expect` (any case).
fn assert_rejected(out: &Output, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(HOST_VMM_FAILED),
        "expected exit {HOST_VMM_FAILED}; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "host-vmm panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("host-vmm: error: "),
        "unexpected error format: {}",
        lines[0]
    );
    let lower = lines[0].to_lowercase();
    for word in expect {
        assert!(
            lower.contains(&word.to_lowercase()),
            "error line does not mention `{word}`: {}",
            lines[0]
        );
    }
}

#[test]
fn help_documents_every_run_flag() {
    let out = output(host_vmm_cmd().args(["run", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--mem", "--cmdline", "<IMAGE"] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
    let out = output(host_vmm_cmd().arg("--help"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("run"));
}

#[test]
fn missing_image_is_rejected() {
    let out = output(host_vmm_cmd().args(["run", "/nonexistent/roam-image.elf"]));
    assert_rejected(&out, &["/nonexistent/roam-image.elf"]);
}

#[test]
fn non_elf_image_is_rejected() {
    let file = TempFile::new("not-elf", b"this is a text file, not a kernel\n");
    let out = output(host_vmm_cmd().arg("run").arg(file.path()));
    assert_rejected(&out, &["elf"]);
}

/// A well-formed x86_64 ELF whose one segment loads at 2 GiB.
fn elf_loading_at_2_gib() -> Vec<u8> {
    const LOAD_AT: u64 = 0x8000_0000;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD_AT.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(elf.len(), 64);
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_AT.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_AT.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&120u64.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(elf.len(), 120);
    elf
}

#[test]
fn image_that_does_not_fit_is_rejected() {
    let file = TempFile::new("too-high", &elf_loading_at_2_gib());
    let out = output(
        host_vmm_cmd()
            .arg("run")
            .arg(file.path())
            .args(["--mem", "64M"]),
    );
    assert_rejected(&out, &["does not fit"]);
}

#[test]
fn malformed_sizes_are_rejected() {
    let hello = image("hello");
    for bad in ["12Q", "", "-1M", "abc", "99999999999G", "1.5G"] {
        let out = output(host_vmm_cmd().arg("run").arg(&hello).args(["--mem", bad]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "--mem {bad:?} was accepted");
        assert!(
            !stderr.contains("panicked"),
            "--mem {bad:?} panicked:\n{stderr}"
        );
        assert!(
            stderr.contains("--mem") || stderr.to_lowercase().contains("size"),
            "--mem {bad:?}: the error does not name the flag or the size:\n{stderr}"
        );
    }
}

#[test]
fn missing_dev_kvm_is_reported() {
    root("missing_dev_kvm_is_reported");
    let unshare = tool("unshare", "util-linux");
    let hello = image("hello");
    // A private mount namespace with an empty /dev: only this command sees it.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run {}",
        host_vmm().display(),
        hello.display()
    );
    let out = output(Command::new(unshare).args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert_rejected(&out, &["/dev/kvm", "not found"]);
}

#[test]
fn kvm_permission_denied_is_reported() {
    if !kvm_present("kvm_permission_denied_is_reported") {
        return;
    }
    root("kvm_permission_denied_is_reported");
    let setpriv = tool("setpriv", "util-linux");
    // `nobody` must be able to run the binary and read the image, but not open /dev/kvm.
    let nobody = 65534;
    let kvm = std::fs::metadata("/dev/kvm").expect("/dev/kvm");
    assert!(
        kvm.mode() & 0o006 != 0o006 && kvm.uid() != nobody && kvm.gid() != nobody,
        "/dev/kvm is open to every user here (mode {:o}): nothing to deny",
        kvm.mode() & 0o777
    );
    let dir = PublicDir::new("kvm-denied");
    let (vmm, hello) = (dir.copy(&host_vmm()), dir.copy(&image("hello")));
    let out = output(
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(vmm)
            .arg("run")
            .arg(&hello)
            .current_dir(dir.path()),
    );
    assert_rejected(&out, &["/dev/kvm", "permission denied"]);
}

#[test]
fn too_long_cmdline_is_rejected() {
    if !kvm_present("too_long_cmdline_is_rejected") {
        return;
    }
    let hello = image("hello");
    let long = "x".repeat(5000);
    let out = output(
        host_vmm_cmd()
            .arg("run")
            .arg(&hello)
            .args(["--cmdline", &long]),
    );
    assert_rejected(&out, &["command line"]);
}

#[test]
fn home_agent_help_documents_its_flags_and_codes() {
    let out = output(host_vmm_cmd().args(["home-agent", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--listen",
        "--home-link",
        "--keys",
        "--state",
        "--tun",
        "status",
        "134",
        "131",
        "133",
        "136",
        "139",
        "spi=N",
    ] {
        assert!(
            help.contains(word),
            "home-agent --help lacks {word}:\n{help}"
        );
    }
}

/// Bad input the home agent refuses before it touches any network configuration (so this
/// runs in the test's own namespace).
#[test]
fn home_agent_bad_input_is_rejected() {
    let good = TempFile::new(
        "ha-keys",
        b"spi=256 home=198.18.0.10 key=000102030405060708090a0b0c0d0e0f\n",
    );
    let reserved = TempFile::new(
        "ha-keys-spi",
        b"spi=12 home=198.18.0.10 key=000102030405060708090a0b0c0d0e0f\n",
    );
    let short = TempFile::new(
        "ha-keys-short",
        b"spi=256 home=198.18.0.10 key=0001020304\n",
    );
    let corrupt = TempFile::new("ha-state", b"{\"version\":1,\"bindings\":[");
    let ha = |args: &[&str]| {
        let mut cmd = host_vmm_cmd();
        cmd.arg("home-agent").args(args);
        output(&mut cmd)
    };
    let keys = |f: &TempFile| f.path().to_string_lossy().into_owned();
    let out = ha(&[]);
    assert_rejected(&out, &["--listen", "--home-link", "--keys"]);
    for listen in ["0.0.0.0", "198.18.20.2:70000", "home-agent"] {
        let out = ha(&[
            "--listen",
            listen,
            "--home-link",
            "home0",
            "--keys",
            &keys(&good),
        ]);
        assert_rejected(&out, &["--listen", listen]);
    }
    let base = ["--listen", "198.18.20.2", "--home-link", "home0", "--keys"];
    let with = |k: &str| {
        let mut v = base.to_vec();
        v.push(k);
        ha(&v)
    };
    assert_rejected(
        &with("/nonexistent/roam-keys"),
        &["--keys", "/nonexistent/roam-keys"],
    );
    assert_rejected(&with(&keys(&reserved)), &["--keys", ":1:", "spi 12"]);
    assert_rejected(&with(&keys(&short)), &["--keys", "128"]);
    let good_keys = keys(&good);
    let mut api = base.to_vec();
    api.extend([good_keys.as_str(), "--api-socket", "/tmp/roam-ha.sock"]);
    assert_rejected(&ha(&api), &["--api-socket"]);
    let out = ha(&["status", "--state", "/nonexistent/roam-state"]);
    assert_rejected(&out, &["--state", "/nonexistent/roam-state"]);
    let out = ha(&["status", "--state", &keys(&corrupt)]);
    assert_rejected(&out, &["--state", "not a home-agent state file"]);
}
