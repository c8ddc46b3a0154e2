//! Guest RAM: one memfd, sized with `ftruncate` and mapped `MAP_SHARED` into this process.
//!
//! The memfd (not an anonymous mapping) is what later lets another process map the very same
//! pages, so a migration can hand RAM over without copying it. [`GuestRam`] owns the fd for as
//! long as the mapping lives. Nothing here touches the pages: the kernel allocates each one on
//! its first write, so a large, mostly unused guest costs nothing at start-up.
//!
//! The memfd is sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW) as soon
//! as it has its size: a peer it is handed to cannot cut the pages from under this
//! process's mapping (SIGBUS), and a memfd received from a peer is mapped only if it
//! carries those seals and has exactly the size expected.
//!
//! Every write host-vmm itself makes through the mapping (device models filling receive
//! buffers, writing back descriptors, moving ring indexes) is recorded in a per-page bitmap
//! ([`GuestMemoryMmap`] carries vm-memory's `AtomicBitmap`): KVM's dirty log sees only the
//! vCPU's writes, and a pre-copy migration needs both.

use rustix::fs::SealFlags;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionError;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestRegionMmap, MmapRegion};

/// Guest memory as every part of host-vmm sees it: the memfd mapping, with the bitmap of
/// pages host-vmm wrote.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// The page size of dirty tracking (KVM's and the host-write bitmap's).
pub const PAGE_SIZE: u64 = 4096;

/// Why guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create` failed.
    #[error("cannot create the guest RAM memfd")]
    Memfd(#[source] io::Error),
    /// `ftruncate` failed.
    #[error("cannot size the guest RAM memfd to {0} bytes")]
    Truncate(u64, #[source] io::Error),
    /// The size does not fit this host's address space.
    #[error("guest RAM of {0} bytes does not fit this host's address space")]
    TooLarge(u64),
    /// `mmap` failed.
    #[error("cannot map guest RAM")]
    Mmap(#[source] MmapRegionError),
    /// A memfd from elsewhere does not have the size guest RAM must have.
    #[error("the guest RAM memfd is {file} bytes, expected {expected}")]
    SizeMismatch {
        /// Its size.
        file: u64,
        /// Guest RAM's size.
        expected: u64,
    },
    /// Sealing failed.
    #[error("cannot seal the guest RAM memfd")]
    Seal(#[source] io::Error),
    /// A memfd from elsewhere could be shrunk or grown under the mapping.
    #[error(
        "the guest RAM memfd is not sealed against shrinking and growing ({0}); the source \
         must seal it (F_SEAL_SHRINK | F_SEAL_GROW) before handing it over"
    )]
    NotSealed(String),
    /// vm-memory refused the region layout (cannot happen for one region at 0).
    #[error("cannot build the guest memory map")]
    Layout,
}

/// The guest's RAM: `[0, size)` in guest-physical space, backed by a memfd.
#[derive(Debug)]
pub struct GuestRam {
    /// The mapping, shared with devices and the vCPU (cheap to clone).
    mem: GuestMemoryMmap,
    /// The memfd behind `mem`; vm-memory's `FileOffset` holds another reference.
    memfd: Arc<File>,
    size: u64,
}

impl GuestRam {
    /// Creates a memfd of `size` bytes, sealed at that size, and maps it shared, without
    /// touching its pages.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let memfd = create_memfd()?;
        memfd
            .set_len(size)
            .map_err(|e| MemoryError::Truncate(size, e))?;
        rustix::fs::fcntl_add_seals(&memfd, SIZE_SEALS).map_err(|e| MemoryError::Seal(e.into()))?;
        Self::map(memfd, size)
    }

    /// Maps guest RAM that another host-vmm created (a zero-copy migration's memfd, passed
    /// over a Unix socket): it must be sealed against shrinking and growing and be exactly
    /// `size` bytes.
    pub fn from_memfd(memfd: File, size: u64) -> Result<Self, MemoryError> {
        check_sealed(&memfd)?;
        // After the seals: the size can no longer change from here on.
        let len = memfd.metadata().map_err(MemoryError::Memfd)?.len();
        if len != size {
            return Err(MemoryError::SizeMismatch {
                file: len,
                expected: size,
            });
        }
        Self::map(memfd, size)
    }

    fn map(memfd: File, size: u64) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
        let memfd = Arc::new(memfd);
        // MAP_NORESERVE: the guest rarely touches all of its RAM; don't charge it up front.
        let region = MmapRegion::build(
            Some(FileOffset::from_arc(Arc::clone(&memfd), 0)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(MemoryError::Mmap)?;
        let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemoryError::Layout)?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|_| MemoryError::Layout)?;
        Ok(GuestRam { mem, memfd, size })
    }

    /// The byte ranges the memfd holds pages for (every page ever written; the rest has
    /// never been touched and reads as zeros), found with SEEK_DATA/SEEK_HOLE. A migration's
    /// first pass sends only these: the destination's RAM starts zeroed.
    pub fn populated(&self) -> io::Result<Vec<std::ops::Range<u64>>> {
        let fd = self.memfd.as_raw_fd();
        let seek = |from: u64, whence| -> io::Result<Option<u64>> {
            let from =
                i64::try_from(from).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: lseek on a descriptor this struct owns; no memory is passed. Moving
            // the file offset is harmless: nothing reads or writes the memfd by offset.
            let at = unsafe { libc::lseek(fd, from, whence) };
            if at >= 0 {
                return Ok(Some(at as u64));
            }
            let e = io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after `from`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            }
        };
        let mut ranges = Vec::new();
        let mut pos = 0;
        while pos < self.size {
            let Some(data) = seek(pos, libc::SEEK_DATA)? else {
                break;
            };
            let hole = seek(data, libc::SEEK_HOLE)?
                .unwrap_or(self.size)
                .min(self.size);
            if hole <= data {
                break;
            }
            ranges.push(data..hole);
            pos = hole;
        }
        Ok(ranges)
    }

    /// Takes the bitmap of pages host-vmm wrote since the last call (one bit per
    /// [`PAGE_SIZE`] page from guest address 0, in `u64` words as KVM's dirty log) and clears it.
    pub fn take_host_dirty(&self) -> Vec<u64> {
        let mut words = Vec::new();
        for region in self.mem.iter() {
            words.extend(region.bitmap().get_and_reset());
        }
        words
    }

    /// The mapping, for reading and writing guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd backing guest RAM (handed to the destination of a zero-copy migration).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

/// The seals guest RAM carries: its size is fixed for good.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// `memfd_create("roam-guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING)`.
fn create_memfd() -> Result<File, MemoryError> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(
        "roam-guest-ram",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| MemoryError::Memfd(e.into()))?;
    Ok(File::from(fd))
}

/// Refuses a file that is not a memfd sealed against shrinking and growing.
fn check_sealed(file: &File) -> Result<(), MemoryError> {
    let seals = rustix::fs::fcntl_get_seals(file).map_err(|e| {
        MemoryError::NotSealed(format!("it takes no seals, so it is not a memfd: {e}"))
    })?;
    if seals.contains(SIZE_SEALS) {
        Ok(())
    } else {
        Err(MemoryError::NotSealed(format!("its seals: {seals:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_a_zeroed_shared_memfd_of_the_requested_size() {
        let ram = GuestRam::new(16 << 20).unwrap();
        assert_eq!(ram.size(), 16 << 20);
        assert_eq!(ram.memory().last_addr(), GuestAddress((16 << 20) - 1));
        let mut byte = [0xaa];
        ram.memory()
            .read_slice(&mut byte, GuestAddress(0x12345))
            .unwrap();
        assert_eq!(byte, [0]);
        // What the mapping writes, the fd sees: the property migration will rely on.
        ram.memory()
            .write_slice(b"roam", GuestAddress(0x1000))
            .unwrap();
        let file = File::from(ram.memfd().try_clone_to_owned().unwrap());
        let mut seen = [0; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut seen, 0x1000).unwrap();
        assert_eq!(&seen, b"roam");
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
    }

    #[test]
    fn host_writes_are_tracked_per_page_and_cleared_when_taken() {
        let ram = GuestRam::new(16 << 20).unwrap();
        assert!(ram.take_host_dirty().iter().all(|w| *w == 0));
        ram.memory()
            .write_slice(&[1], GuestAddress(0x3000))
            .unwrap();
        // Two bytes across a page boundary dirty both pages.
        ram.memory()
            .write_slice(&[1, 2], GuestAddress(0x5fff))
            .unwrap();
        let words = ram.take_host_dirty();
        assert_eq!(words.len(), (16 << 20) / 4096 / 64);
        assert_eq!(words[0], (1 << 3) | (1 << 5) | (1 << 6));
        assert!(
            ram.take_host_dirty().iter().all(|w| *w == 0),
            "taking clears"
        );
    }

    #[test]
    fn a_memfd_from_elsewhere_maps_the_same_pages_or_is_refused_for_its_size() {
        let ram = GuestRam::new(16 << 20).unwrap();
        ram.memory()
            .write_slice(b"moved", GuestAddress(0x2000))
            .unwrap();
        let fd = File::from(ram.memfd().try_clone_to_owned().unwrap());
        let other = GuestRam::from_memfd(fd, 16 << 20).unwrap();
        let mut seen = [0; 5];
        other
            .memory()
            .read_slice(&mut seen, GuestAddress(0x2000))
            .unwrap();
        assert_eq!(&seen, b"moved");
        let fd = File::from(ram.memfd().try_clone_to_owned().unwrap());
        let err = GuestRam::from_memfd(fd, 32 << 20).unwrap_err();
        assert!(err.to_string().contains("expected 33554432"), "{err}");
    }

    #[test]
    fn guest_ram_is_sealed_at_its_size() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let file = File::from(ram.memfd().try_clone_to_owned().unwrap());
        let seals = rustix::fs::fcntl_get_seals(&file).unwrap();
        assert!(seals.contains(SIZE_SEALS), "{seals:?}");
        // Neither a peer nor this process can change its size under the mapping.
        assert!(file.set_len(4096).is_err());
        assert!(file.set_len(32 << 20).is_err());
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
    }

    #[test]
    fn an_unsealed_memfd_or_another_file_is_refused() {
        // A memfd of the right size that could still be shrunk.
        let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let unsealed = File::from(fd);
        unsealed.set_len(16 << 20).unwrap();
        let err = GuestRam::from_memfd(unsealed, 16 << 20).unwrap_err();
        assert!(matches!(err, MemoryError::NotSealed(_)), "{err}");
        assert!(err.to_string().contains("F_SEAL_SHRINK"), "{err}");
        // Sealed against shrinking only.
        let fd = rustix::fs::memfd_create(
            "half",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        let half = File::from(fd);
        half.set_len(16 << 20).unwrap();
        rustix::fs::fcntl_add_seals(&half, SealFlags::SHRINK).unwrap();
        assert!(matches!(
            GuestRam::from_memfd(half, 16 << 20),
            Err(MemoryError::NotSealed(_))
        ));
        // Not a memfd at all.
        let path = std::env::temp_dir().join(format!("roam-notmemfd-{}", std::process::id()));
        let plain = File::create(&path).unwrap();
        plain.set_len(16 << 20).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            GuestRam::from_memfd(plain, 16 << 20),
            Err(MemoryError::NotSealed(_))
        ));
    }

    #[test]
    fn only_written_pages_are_populated() {
        let ram = GuestRam::new(16 << 20).unwrap();
        assert_eq!(ram.populated().unwrap(), vec![]);
        ram.memory()
            .write_slice(&[1], GuestAddress(0x3000))
            .unwrap();
        ram.memory()
            .write_slice(&[1], GuestAddress(0x80_0000))
            .unwrap();
        let ranges = ram.populated().unwrap();
        let covered = |a: u64| ranges.iter().any(|r| r.contains(&a));
        assert!(covered(0x3000) && covered(0x80_0000), "{ranges:x?}");
        // Holes stay holes (the kernel may round to its own page size, never to all of RAM).
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(total <= 4 << 20, "{ranges:x?}");
    }

    #[test]
    fn accesses_beyond_ram_fail_instead_of_crashing() {
        let ram = GuestRam::new(16 << 20).unwrap();
        assert!(
            ram.memory()
                .write_slice(&[1, 2], GuestAddress((16 << 20) - 1))
                .is_err()
        );
        assert!(
            ram.memory()
                .write_slice(&[1], GuestAddress(u64::MAX))
                .is_err()
        );
    }
}
