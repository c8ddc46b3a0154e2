//! Helpers shared by unit tests: a small ELF writer, tiny hand-assembled guests, and the
//! `/dev/kvm` check that lets KVM tests skip on machines without it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// Where tiny guests are loaded (and start).
pub const GUEST_BASE: u64 = 0x10_0000;

/// A program header for [`elf`].
#[derive(Clone, Copy, Debug)]
pub struct Ph {
    /// `p_type`.
    pub kind: u32,
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
}

/// A `PT_LOAD` with `vaddr == paddr`.
pub fn load(paddr: u64, offset: u64, filesz: u64, memsz: u64) -> Ph {
    Ph {
        kind: PT_LOAD,
        offset,
        vaddr: paddr,
        paddr,
        filesz,
        memsz,
    }
}

/// A 64-bit x86_64 `ET_EXEC`: the ELF header, the program headers right after it (offset
/// 64), then `payload` (at offset 64 + 56 * phs.len()).
pub fn elf(entry: u64, phs: &[Ph], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF");
    b.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&entry.to_le_bytes());
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes());
    b.extend_from_slice(&(phs.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    assert_eq!(b.len(), 64);
    for ph in phs {
        b.extend_from_slice(&ph.kind.to_le_bytes());
        b.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for v in [ph.offset, ph.vaddr, ph.paddr, ph.filesz, ph.memsz, 0x1000] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.extend_from_slice(payload);
    b
}

/// An image whose one segment holds `code` at [`GUEST_BASE`], which is also the entry.
pub fn tiny_guest(code: &[u8]) -> Vec<u8> {
    let len = code.len() as u64;
    elf(GUEST_BASE, &[load(GUEST_BASE, 64 + 56, len, len)], code)
}

/// For a test that needs KVM: `true` when /dev/kvm is usable; otherwise the test fails
/// saying what to do, or, under `cargo xtask test --no-kvm`, prints its counted skip line
/// and gets `false` (`xtask::skip`).
pub fn kvm_available(test: &str) -> bool {
    xtask::skip::kvm_or_skip(test)
}

/// A console that keeps what the guest printed, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far, lossily as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file in the temp directory, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// Writes `bytes` to a fresh file named after `tag`.
    pub fn new(tag: &str, bytes: &[u8]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "host-vmm-test-{tag}-{}-{n}.elf",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
