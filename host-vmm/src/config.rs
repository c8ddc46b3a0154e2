//! What `host-vmm run` was asked to do, validated before any KVM work starts: the guest RAM
//! size and the kernel command line. Parsing here is pure, so bad input is reported without
//! touching `/dev/kvm`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Smallest guest RAM: boot structures below 1 MiB, the image from 1 MiB, then a heap.
pub const MEM_MIN: u64 = 16 * MIB;
/// Largest guest RAM: it is one region starting at 0 and must end below the MMIO hole.
pub const MEM_MAX: u64 = 3 * GIB;
/// Guest RAM is identity-mapped with 2 MiB pages, so it comes in 2 MiB steps.
pub const MEM_ALIGN: u64 = 2 * MIB;
/// Default guest RAM.
pub const MEM_DEFAULT: MemSize = MemSize(128 * MIB);

/// Longest command line, including its terminating NUL (the boot ABI's 4 KiB).
pub const CMDLINE_MAX: usize = 4096;

/// A guest RAM size: between [`MEM_MIN`] and [`MEM_MAX`], a multiple of [`MEM_ALIGN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSize(u64);

impl MemSize {
    /// Checks a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, SizeError> {
        if bytes < MEM_MIN {
            return Err(SizeError::TooSmall(bytes));
        }
        if bytes > MEM_MAX {
            return Err(SizeError::TooLarge(bytes));
        }
        if !bytes.is_multiple_of(MEM_ALIGN) {
            return Err(SizeError::Unaligned(bytes));
        }
        Ok(MemSize(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(GIB) {
            write!(f, "{} GiB", self.0 / GIB)
        } else {
            write!(f, "{} MiB", self.0 / MIB)
        }
    }
}

/// Why a `--mem` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error(
        "malformed size `{0}`: use a byte count or a whole number with K, M or G (KiB, MiB, GiB), e.g. 128M or 1GiB"
    )]
    Malformed(String),
    /// Does not fit in 64 bits.
    #[error("size `{0}` is too large")]
    Overflow(String),
    /// Below [`MEM_MIN`].
    #[error("guest RAM must be at least 16 MiB")]
    TooSmall(u64),
    /// Above [`MEM_MAX`].
    #[error("guest RAM must be at most 3 GiB, to end below the MMIO hole")]
    TooLarge(u64),
    /// Not a multiple of [`MEM_ALIGN`].
    #[error("guest RAM must be a multiple of 2 MiB, the page size it is mapped with")]
    Unaligned(u64),
}

/// Parses `64M`, `256MiB`, `1G`, `1GiB`, `65536K` or a plain byte count (units are powers of
/// 1024; the letter is case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let malformed = || SizeError::Malformed(text.to_owned());
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(malformed());
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(malformed()),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

impl FromStr for MemSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        MemSize::new(parse_size(text)?)
    }
}

/// A kernel command line that fits the boot ABI: no NUL inside, at most 4 KiB with its NUL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline(String);

/// Why a `--cmdline` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than the boot ABI allows.
    #[error("the command line is {0} bytes long; at most 4095 fit (4 KiB including the NUL)")]
    TooLong(usize),
    /// Contains a NUL byte, which would cut it short in the guest.
    #[error("the command line contains a NUL byte")]
    Nul,
}

impl Cmdline {
    /// Checks `text` against the boot ABI's limits.
    pub fn new(text: &str) -> Result<Self, CmdlineError> {
        if text.len() >= CMDLINE_MAX {
            return Err(CmdlineError::TooLong(text.len()));
        }
        if text.contains('\0') {
            return Err(CmdlineError::Nul);
        }
        Ok(Cmdline(text.to_owned()))
    }

    /// The bytes, without the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Everything `host-vmm run` needs, already validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The guest ELF.
    pub image: PathBuf,
    /// Guest RAM size.
    pub mem: MemSize,
    /// Kernel command line.
    pub cmdline: Cmdline,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("256MiB"), Ok(256 * MIB));
        assert_eq!(parse_size("256mib"), Ok(256 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("65536K"), Ok(64 * MIB));
        assert_eq!(parse_size("134217728"), Ok(128 * MIB));
        assert_eq!(parse_size("134217728B"), Ok(128 * MIB));
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for bad in [
            "", "M", "12Q", "-1M", "abc", "1.5G", " 64M", "64 M", "64MB", "0x100M",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_size("99999999999G"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn guest_ram_limits_are_enforced() {
        assert_eq!("16M".parse(), Ok(MemSize(16 * MIB)));
        assert_eq!("3G".parse(), Ok(MemSize(3 * GIB)));
        assert_eq!("3072M".parse(), Ok(MemSize(3 * GIB)));
        assert_eq!("14M".parse::<MemSize>(), Err(SizeError::TooSmall(14 * MIB)));
        assert_eq!(
            "3074M".parse::<MemSize>(),
            Err(SizeError::TooLarge(3074 * MIB))
        );
        assert_eq!(
            "65M".parse::<MemSize>(),
            Err(SizeError::Unaligned(65 * MIB))
        );
        assert_eq!("0".parse::<MemSize>(), Err(SizeError::TooSmall(0)));
    }

    #[test]
    fn sizes_display_in_the_largest_whole_unit() {
        assert_eq!(MemSize(64 * MIB).to_string(), "64 MiB");
        assert_eq!(MemSize(2 * GIB).to_string(), "2 GiB");
        assert_eq!(MemSize(1536 * MIB).to_string(), "1536 MiB");
    }

    #[test]
    fn command_lines_must_fit_in_4_kib_with_the_nul() {
        assert!(Cmdline::new(&"x".repeat(4095)).is_ok());
        assert_eq!(
            Cmdline::new(&"x".repeat(4096)),
            Err(CmdlineError::TooLong(4096))
        );
        assert_eq!(Cmdline::new("a\0b"), Err(CmdlineError::Nul));
        assert_eq!(Cmdline::new("log=debug").unwrap().as_bytes(), b"log=debug");
    }
}
