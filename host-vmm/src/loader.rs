//! The guest image loader: a small, strict reader for 64-bit x86_64 ELF executables.
//!
//! Only what the Boot ABI needs is read: the ELF header and the program headers. Every
//! `PT_LOAD` segment is checked before anything is copied: its file bytes must lie inside the
//! file, and its `[p_paddr, p_paddr + p_memsz)` must be inside guest RAM, at or above 1 MiB
//! (below is where the boot structures go), and must not overlap another segment. All
//! arithmetic on header values is overflow-checked. The image is trusted no more than the
//! command line that named it.
//!
//! Loading copies only each segment's file bytes. The rest of a segment (`.bss`) is already
//! zero because guest RAM is a fresh memfd and segments never overlap.

use crate::arch::x86_64::IMAGE_MIN_ADDR;
use crate::config::MemSize;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// `e_phnum` value meaning "the real count is elsewhere" (extended numbering).
const PN_XNUM: u16 = 0xFFFF;

/// What is wrong with an image (the caller adds the file name).
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// No ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// Shorter than an ELF header.
    #[error("truncated ELF file: {0} bytes is shorter than the ELF header")]
    Truncated(u64),
    /// A 32-bit ELF.
    #[error("not a 64-bit ELF file (ELF class {0})")]
    Not64Bit(u8),
    /// A big-endian ELF.
    #[error("not a little-endian ELF file")]
    NotLittleEndian,
    /// An unknown ELF version.
    #[error("unsupported ELF version {0}")]
    Version(u32),
    /// Another architecture.
    #[error("not an x86_64 ELF file (e_machine {0})")]
    NotX86_64(u16),
    /// A relocatable object, shared object or core file.
    #[error("not an executable ELF file (e_type {0}); a Roam image is linked at a fixed address")]
    NotExecutable(u16),
    /// `e_phentsize` is not the 64-bit program header size.
    #[error("unexpected program header size {0} (expected 56)")]
    PhentSize(u16),
    /// No program headers at all.
    #[error("no program headers: nothing to load")]
    NoProgramHeaders,
    /// `e_phnum == PN_XNUM`.
    #[error("extended program header numbering is not supported")]
    ExtendedNumbering,
    /// The program header table lies (partly) beyond the end of the file.
    #[error("the program header table lies beyond the end of the file")]
    PhdrsOutside,
    /// `p_filesz > p_memsz`.
    #[error("segment {index}: file size {filesz:#x} is larger than its memory size {memsz:#x}")]
    FileLargerThanMemory {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// The segment's bytes lie beyond the end of the file.
    #[error("segment {index}: its data lies beyond the end of the file")]
    DataOutside {
        /// Program header index.
        index: usize,
    },
    /// `p_paddr + p_memsz` overflows.
    #[error("segment {index}: address {paddr:#x} + size {memsz:#x} overflows")]
    AddressOverflow {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// The segment starts below 1 MiB.
    #[error(
        "segment {index} [{start:#x}-{end:#x}) starts below 1 MiB, where host-vmm puts the boot structures"
    )]
    BelowImageMin {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        start: u64,
        /// `p_paddr + p_memsz`.
        end: u64,
    },
    /// The segment ends beyond guest RAM.
    #[error("segment {index} [{start:#x}-{end:#x}) does not fit in {mem} of guest RAM; use --mem")]
    DoesNotFit {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        start: u64,
        /// `p_paddr + p_memsz`.
        end: u64,
        /// Guest RAM size.
        mem: MemSize,
    },
    /// Two segments share guest-physical bytes.
    #[error("segments {first} and {second} overlap in guest-physical memory")]
    Overlap {
        /// Program header index of the lower segment.
        first: usize,
        /// Program header index of the other.
        second: usize,
    },
    /// No `PT_LOAD` segment with a non-zero size.
    #[error("no loadable segments")]
    NoLoadableSegments,
    /// `e_entry` is not inside a loaded segment, or not in guest RAM.
    #[error("entry point {0:#x} is not inside a loadable segment in guest RAM")]
    EntryOutside(u64),
    /// Reading the file failed.
    #[error("cannot read the file")]
    Read(#[source] io::Error),
}

/// Random access to an image's bytes: a file, or a buffer in tests.
pub trait ImageSource {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the caller has checked the range against [`Self::size`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Copies `len` bytes from `offset` straight into guest memory at `addr`; the caller has
    /// checked both ranges. No staging buffer: its fresh pages cost a page fault each, which
    /// on nested KVM made loading take about twice as long.
    fn copy_into<M: Bytes<GuestAddress, E = GuestMemoryError>>(
        &self,
        mem: &M,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> Result<(), CopyError>;
}

/// Why [`ImageSource::copy_into`] failed.
#[derive(Debug)]
pub enum CopyError {
    /// The source could not be read.
    Read(io::Error),
    /// Guest memory refused the write.
    Write(GuestMemoryError),
}

impl ImageSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn copy_into<M: Bytes<GuestAddress, E = GuestMemoryError>>(
        &self,
        mem: &M,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> Result<(), CopyError> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(len)?))
            .ok_or(CopyError::Read(io::ErrorKind::UnexpectedEof.into()))?;
        mem.write_slice(bytes, addr).map_err(CopyError::Write)
    }
}

/// An open image file and its size at open time.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    size: u64,
}

impl ImageSource for ImageFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn copy_into<M: Bytes<GuestAddress, E = GuestMemoryError>>(
        &self,
        mem: &M,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> Result<(), CopyError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(CopyError::Read)?;
        mem.read_exact_volatile_from(addr, &mut file, len)
            .map_err(CopyError::Write)
    }
}

/// One `PT_LOAD` segment, checked against guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index in the program header table (what error messages call it).
    pub index: usize,
    /// Guest-physical load address.
    pub paddr: u64,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Bytes copied from the file.
    pub filesz: u64,
    /// Bytes it occupies in guest memory (the rest is zero).
    pub memsz: u64,
}

/// A checked ELF image: where to start, and what to copy where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// `e_entry`, the 64-bit entry (RIP).
    pub entry: u64,
    /// The non-empty `PT_LOAD` segments, sorted by address.
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

/// Reads and checks the headers of the image in `src` for a guest with `mem` of RAM.
pub fn parse<S: ImageSource + ?Sized>(src: &S, mem: MemSize) -> Result<ElfImage, ElfError> {
    let size = src.size();
    let mut ehdr = [0u8; EHDR_SIZE];
    let head = usize::try_from(size.min(EHDR_SIZE as u64)).unwrap_or(EHDR_SIZE);
    src.read_exact_at(&mut ehdr[..head], 0)
        .map_err(ElfError::Read)?;
    if head < 4 || ehdr[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if head < EHDR_SIZE {
        return Err(ElfError::Truncated(size));
    }
    if ehdr[4] != ELFCLASS64 {
        return Err(ElfError::Not64Bit(ehdr[4]));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian);
    }
    let version = u32_at(&ehdr, 20);
    if ehdr[6] != EV_CURRENT || version != u32::from(EV_CURRENT) {
        return Err(ElfError::Version(if ehdr[6] != EV_CURRENT {
            u32::from(ehdr[6])
        } else {
            version
        }));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::NotX86_64(machine));
    }
    let kind = u16_at(&ehdr, 16);
    if kind != ET_EXEC {
        return Err(ElfError::NotExecutable(kind));
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if phnum == 0 {
        return Err(ElfError::NoProgramHeaders);
    }
    if phnum == PN_XNUM {
        return Err(ElfError::ExtendedNumbering);
    }
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::PhentSize(phentsize));
    }
    let table_len = u64::from(phnum) * PHDR_SIZE as u64;
    match phoff.checked_add(table_len) {
        Some(end) if end <= size => {}
        _ => return Err(ElfError::PhdrsOutside),
    }
    // At most 65534 * 56 bytes (3.5 MiB), and only as much as the file holds.
    let mut phdrs = vec![0u8; usize::from(phnum) * PHDR_SIZE];
    src.read_exact_at(&mut phdrs, phoff)
        .map_err(ElfError::Read)?;

    let mut segments = Vec::new();
    let mut entry_ok = false;
    for (index, ph) in phdrs.chunks_exact(PHDR_SIZE).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let vaddr = u64_at(ph, 16);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(ElfError::FileLargerThanMemory {
                index,
                filesz,
                memsz,
            });
        }
        match offset.checked_add(filesz) {
            Some(end) if end <= size => {}
            _ => return Err(ElfError::DataOutside { index }),
        }
        if memsz == 0 {
            continue;
        }
        let end = paddr.checked_add(memsz).ok_or(ElfError::AddressOverflow {
            index,
            paddr,
            memsz,
        })?;
        if paddr < IMAGE_MIN_ADDR {
            return Err(ElfError::BelowImageMin {
                index,
                start: paddr,
                end,
            });
        }
        if end > mem.bytes() {
            return Err(ElfError::DoesNotFit {
                index,
                start: paddr,
                end,
                mem,
            });
        }
        // The guest runs identity-mapped, so the entry must also be a RAM address.
        if entry >= vaddr && entry - vaddr < memsz && entry < mem.bytes() {
            entry_ok = true;
        }
        segments.push(Segment {
            index,
            paddr,
            offset,
            filesz,
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadableSegments);
    }
    segments.sort_by_key(|s| s.paddr);
    for pair in segments.windows(2) {
        // Both ends were checked against RAM above, so this addition cannot overflow.
        if pair[0].paddr + pair[0].memsz > pair[1].paddr {
            let (a, b) = (pair[0].index, pair[1].index);
            return Err(ElfError::Overlap {
                first: a.min(b),
                second: a.max(b),
            });
        }
    }
    if !entry_ok {
        return Err(ElfError::EntryOutside(entry));
    }
    Ok(ElfImage { entry, segments })
}

/// Copies the file bytes of every segment of `image` from `src` into guest memory `mem`.
pub fn load_segments<S, M>(image: &ElfImage, src: &S, mem: &M) -> Result<(), LoadSegmentError>
where
    S: ImageSource + ?Sized,
    M: Bytes<GuestAddress, E = GuestMemoryError>,
{
    for seg in &image.segments {
        // parse() checked that the segment lies inside the file and inside guest RAM.
        let len = usize::try_from(seg.filesz)
            .map_err(|_| LoadSegmentError::Read(seg.index, io::ErrorKind::FileTooLarge.into()))?;
        src.copy_into(mem, GuestAddress(seg.paddr), seg.offset, len)
            .map_err(|e| match e {
                CopyError::Read(e) => LoadSegmentError::Read(seg.index, e),
                CopyError::Write(e) => LoadSegmentError::Copy(seg.index, e),
            })?;
    }
    Ok(())
}

/// Why a checked segment could not be copied into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum LoadSegmentError {
    /// The file could not be read (it changed since it was checked?).
    #[error("cannot read segment {0}")]
    Read(usize, #[source] io::Error),
    /// Guest memory refused the write.
    #[error("cannot copy segment {0} into guest memory")]
    Copy(usize, #[source] GuestMemoryError),
}

/// Why an image file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened.
    #[error("cannot open image {}", path.display())]
    Open {
        /// The image path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not an image host-vmm can boot in this much RAM.
    #[error("{}", path.display())]
    Invalid {
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        problem: ElfError,
    },
    /// Copying it into guest memory failed.
    #[error("{}", path.display())]
    Load {
        /// The image path.
        path: PathBuf,
        /// What failed.
        #[source]
        problem: LoadSegmentError,
    },
}

/// An opened and checked image file, ready to be copied into guest memory.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: ImageFile,
    elf: ElfImage,
}

impl Image {
    /// Opens `path` and checks it for a guest with `mem` of RAM (no guest memory needed yet).
    pub fn open(path: &Path, mem: MemSize) -> Result<Self, LoadError> {
        let open_err = |source| LoadError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(io::ErrorKind::IsADirectory.into()));
        }
        let file = ImageFile {
            file,
            size: meta.len(),
        };
        let elf = parse(&file, mem).map_err(|problem| LoadError::Invalid {
            path: path.to_owned(),
            problem,
        })?;
        Ok(Image {
            path: path.to_owned(),
            file,
            elf,
        })
    }

    /// The 64-bit entry point.
    pub fn entry(&self) -> u64 {
        self.elf.entry
    }

    /// Copies the segments into guest memory.
    pub fn load_into<M: Bytes<GuestAddress, E = GuestMemoryError>>(
        &self,
        mem: &M,
    ) -> Result<(), LoadError> {
        load_segments(&self.elf, &self.file, mem).map_err(|problem| LoadError::Load {
            path: self.path.clone(),
            problem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIB;
    use crate::memory::GuestMemoryMmap;
    use crate::test_utils::{Ph, elf, load};

    fn mem(mib: u64) -> MemSize {
        MemSize::new(mib * MIB).unwrap()
    }

    /// A good image: code at 1 MiB (8 bytes from the file, 4 KiB in memory).
    fn good() -> Vec<u8> {
        let data_at = 64 + 56;
        elf(
            0x10_0000,
            &[load(0x10_0000, data_at, 8, 0x1000)],
            &[0xF4, 1, 2, 3, 4, 5, 6, 7],
        )
    }

    fn err(bytes: &[u8]) -> ElfError {
        parse(bytes, mem(64)).unwrap_err()
    }

    #[test]
    fn a_good_image_parses_and_loads() {
        let bytes = good();
        let image = parse(&bytes[..], mem(64)).unwrap();
        assert_eq!(image.entry, 0x10_0000);
        assert_eq!(
            image.segments,
            [Segment {
                index: 0,
                paddr: 0x10_0000,
                offset: 120,
                filesz: 8,
                memsz: 0x1000
            }]
        );
        let guest: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        load_segments(&image, &bytes[..], &guest).unwrap();
        let mut seen = [0u8; 9];
        guest
            .read_slice(&mut seen, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(seen, [0xF4, 1, 2, 3, 4, 5, 6, 7, 0]);
    }

    /// From a file, straight into guest memory: two segments land whole; a file cut short
    /// after it was checked is an error naming the segment, not a crash.
    #[test]
    fn image_files_load_straight_into_guest_memory() {
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let second = [9u8; 300];
        let mut payload = first.clone();
        payload.extend_from_slice(&second);
        let at = 64 + 2 * 56;
        let bytes = elf(
            0x10_0000,
            &[
                load(0x10_0000, at, 5000, 0x2000),
                load(0x20_0000, at + 5000, 300, 300),
            ],
            &payload,
        );
        let path = std::env::temp_dir().join(format!("roam-loader-{}.elf", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let image = Image::open(&path, mem(64)).unwrap();
        let guest: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        image.load_into(&guest).unwrap();
        let mut seen = vec![0u8; 5000];
        guest
            .read_slice(&mut seen, GuestAddress(0x10_0000))
            .unwrap();
        assert!(seen == first);
        let mut seen = [0u8; 300];
        guest
            .read_slice(&mut seen, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(seen, second);

        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = image.load_into(&guest).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("segment 1"), "{text}");
    }

    #[test]
    fn large_segments_load_whole() {
        let payload: Vec<u8> = (0..(2 << 20) + 123).map(|i| (i % 251) as u8).collect();
        let len = payload.len() as u64;
        let bytes = elf(0x10_0000, &[load(0x10_0000, 120, len, len)], &payload);
        let image = parse(&bytes[..], mem(64)).unwrap();
        let guest: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        load_segments(&image, &bytes[..], &guest).unwrap();
        let mut seen = vec![0u8; payload.len()];
        guest
            .read_slice(&mut seen, GuestAddress(0x10_0000))
            .unwrap();
        assert!(seen == payload);
    }

    #[test]
    fn files_that_are_not_elf_are_named_so() {
        assert!(matches!(err(b""), ElfError::NotElf));
        assert!(matches!(err(b"#!/bin/sh\n"), ElfError::NotElf));
        assert!(matches!(err(b"\x7fEL"), ElfError::NotElf));
        assert!(matches!(err(b"\x7fELF\x02\x01"), ElfError::Truncated(6)));
        assert!(err(b"text").to_string().contains("not an ELF file"));
    }

    #[test]
    fn other_classes_machines_and_types_are_refused() {
        let mut b = good();
        b[4] = 1;
        assert!(matches!(err(&b), ElfError::Not64Bit(1)));
        let mut b = good();
        b[5] = 2;
        assert!(matches!(err(&b), ElfError::NotLittleEndian));
        let mut b = good();
        b[6] = 0;
        assert!(matches!(err(&b), ElfError::Version(0)));
        let mut b = good();
        b[18] = 0x28; // EM_ARM
        assert!(matches!(err(&b), ElfError::NotX86_64(0x28)));
        let mut b = good();
        b[16] = 3; // ET_DYN
        assert!(matches!(err(&b), ElfError::NotExecutable(3)));
    }

    #[test]
    fn broken_program_header_tables_are_refused() {
        let mut b = good();
        b[56] = 0;
        assert!(matches!(err(&b), ElfError::NoProgramHeaders));
        let mut b = good();
        b[56..58].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert!(matches!(err(&b), ElfError::ExtendedNumbering));
        let mut b = good();
        b[54] = 32;
        assert!(matches!(err(&b), ElfError::PhentSize(32)));
        let mut b = good();
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(err(&b), ElfError::PhdrsOutside));
        let mut b = good();
        b[56] = 3; // claims three headers; the file holds one
        assert!(matches!(err(&b), ElfError::PhdrsOutside));
    }

    #[test]
    fn segment_data_must_lie_inside_the_file() {
        let b = elf(0x10_0000, &[load(0x10_0000, 100, 1000, 0x1000)], &[]);
        assert!(matches!(err(&b), ElfError::DataOutside { index: 0 }));
        let b = elf(0x10_0000, &[load(0x10_0000, u64::MAX, 2, 0x1000)], &[]);
        assert!(matches!(err(&b), ElfError::DataOutside { index: 0 }));
        let b = elf(0x10_0000, &[load(0x10_0000, 0, 0x2000, 0x1000)], &[]);
        assert!(matches!(
            err(&b),
            ElfError::FileLargerThanMemory { index: 0, .. }
        ));
    }

    #[test]
    fn segments_must_fit_in_guest_ram() {
        let b = elf(
            0x10_0000,
            &[
                load(0x10_0000, 0, 0, 0x1000),
                Ph {
                    kind: 4, // PT_NOTE: not loaded, not checked
                    ..load(0, 0, 0, 0)
                },
                load(0x8000_0000, 0, 120, 0x1000),
            ],
            &[],
        );
        let e = err(&b);
        assert!(
            matches!(
                e,
                ElfError::DoesNotFit {
                    index: 2,
                    start: 0x8000_0000,
                    end: 0x8000_1000,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "segment 2 [0x80000000-0x80001000) does not fit in 64 MiB of guest RAM; use --mem"
        );
        // Ending exactly at the end of RAM is fine.
        let top = 64 * MIB - 0x1000;
        let b = elf(top, &[load(top, 0, 0, 0x1000)], &[]);
        assert!(parse(&b[..], mem(64)).is_ok());
        let b = elf(top, &[load(top, 0, 0, 0x1001)], &[]);
        assert!(matches!(err(&b), ElfError::DoesNotFit { .. }));
    }

    #[test]
    fn address_overflow_is_caught() {
        let b = elf(0x10_0000, &[load(u64::MAX - 0xFFF, 0, 0, 0x2000)], &[]);
        assert!(matches!(
            err(&b),
            ElfError::AddressOverflow { index: 0, .. }
        ));
    }

    #[test]
    fn segments_below_1_mib_are_refused() {
        let b = elf(0x8_0000, &[load(0x8_0000, 0, 0, 0x1000)], &[]);
        let e = err(&b);
        assert!(matches!(e, ElfError::BelowImageMin { index: 0, .. }));
        assert!(e.to_string().contains("below 1 MiB"), "{e}");
        // Straddling 1 MiB from below is refused too.
        let b = elf(0x10_0000, &[load(0xF_F000, 0, 0, 0x2000)], &[]);
        assert!(matches!(err(&b), ElfError::BelowImageMin { .. }));
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let b = elf(
            0x10_0000,
            &[load(0x10_1000, 0, 0, 0x1000), load(0x10_0000, 0, 0, 0x1001)],
            &[],
        );
        assert!(matches!(
            err(&b),
            ElfError::Overlap {
                first: 0,
                second: 1
            }
        ));
        // Touching is not overlapping.
        let b = elf(
            0x10_0000,
            &[load(0x10_1000, 0, 0, 0x1000), load(0x10_0000, 0, 0, 0x1000)],
            &[],
        );
        let image = parse(&b[..], mem(64)).unwrap();
        assert_eq!(image.segments[0].paddr, 0x10_0000, "sorted by address");
    }

    #[test]
    fn empty_segments_do_not_count() {
        let b = elf(0x10_0000, &[load(0, 0, 0, 0)], &[]);
        assert!(matches!(err(&b), ElfError::NoLoadableSegments));
        let b = elf(
            0x10_0000,
            &[Ph {
                kind: 4,
                ..load(0x10_0000, 0, 0, 0x1000)
            }],
            &[],
        );
        assert!(matches!(err(&b), ElfError::NoLoadableSegments));
    }

    #[test]
    fn the_entry_must_be_inside_a_segment() {
        let b = elf(0x20_0000, &[load(0x10_0000, 0, 0, 0x1000)], &[]);
        assert!(matches!(err(&b), ElfError::EntryOutside(0x20_0000)));
        let b = elf(0x10_0FFF, &[load(0x10_0000, 0, 0, 0x1000)], &[]);
        assert!(parse(&b[..], mem(64)).is_ok());
    }

    #[test]
    fn image_files_report_their_path() {
        let err = Image::open(Path::new("/nonexistent/roam.elf"), mem(64)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/roam.elf"), "{err}");
        let err = Image::open(Path::new("/"), mem(64)).unwrap_err();
        assert!(err.to_string().starts_with("cannot open image /"), "{err}");
    }
}
