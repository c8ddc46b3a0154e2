//! virtio-mmio devices as the VMM lists them on the kernel command line, and the few
//! registers of the MMIO transport the drivers touch themselves.
//!
//! A machine without PCI (QEMU `-M microvm,acpi=off`, Firecracker) tells the guest where its
//! virtio-mmio transports are with Linux's `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`
//! words, which QEMU appends to the end of the command line, after the app's arguments
//! (docs/boot-abi.md). Numbers are C-style (`0x` hex, a leading `0` octal, else decimal),
//! the size may end in `K`, `M` or `G`, as Linux reads them. The values come from outside the
//! guest: every one is checked here, and a bad word is an error, never a panic.

use crate::pci::bar::Region;
use core::fmt;

/// The command-line key.
pub const PARAM: &str = "virtio_mmio.device";

/// Register offsets in a virtio-mmio transport (virtio 1.1, 4.2.2).
pub mod reg {
    /// `0x74726976` ("virt").
    pub const MAGIC: usize = 0x00;
    /// Device features, the 32 bits `DEVICE_FEATURES_SEL` selects.
    pub const DEVICE_FEATURES: usize = 0x10;
    /// Selects which half of the device features `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: usize = 0x14;
    /// Queue notifier: the queue's index, written as 32 bits.
    pub const QUEUE_NOTIFY: usize = 0x50;
    /// Why the device interrupted (bit 0: used buffers, bit 1: configuration change).
    pub const INTERRUPT_STATUS: usize = 0x60;
    /// Writing the bits read from `INTERRUPT_STATUS` acknowledges them (lowers the line).
    pub const INTERRUPT_ACK: usize = 0x64;
    /// Start of the device-specific configuration.
    pub const CONFIG: usize = 0x100;
}

/// Least size of a transport: its register header.
pub const MIN_SIZE: u64 = reg::CONFIG as u64;
/// Largest size accepted (QEMU uses 512 bytes, Firecracker 4 KiB).
pub const MAX_SIZE: u64 = 1 << 20;
/// Transports lie below 4 GiB (the 32-bit MMIO hole, where microvm and Firecracker put them).
pub const ADDRESS_LIMIT: u64 = 1 << 32;
/// IRQs are IOAPIC inputs (global system interrupts) below this.
pub const IRQ_LIMIT: u32 = 256;

/// One virtio-mmio transport: registers at `base..base + size`, interrupt `irq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Physical address of the register header (4-byte aligned).
    pub base: u64,
    /// Bytes of registers and configuration.
    pub size: u64,
    /// Global system interrupt (the IOAPIC input).
    pub irq: u8,
}

impl MmioDevice {
    /// The device's register range, for the HAL to map.
    pub fn region(&self) -> Region {
        // `parse` bounded both below 4 GiB, so neither conversion can fail on any target.
        Region::new(self.base, usize::try_from(self.size).unwrap_or(0))
    }
}

impl fmt::Display for MmioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}@{:#x}:{}", self.size, self.base, self.irq)
    }
}

/// What is wrong with a `virtio_mmio.device=` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// Not `<size>@<base>:<irq>[:<id>]`.
    Syntax,
    /// A number that does not parse or overflows (which field).
    Number(&'static str),
    /// The size is outside [`MIN_SIZE`]..=[`MAX_SIZE`].
    Size(u64),
    /// The base is zero, not 4-byte aligned, or the range reaches past [`ADDRESS_LIMIT`].
    Base(u64),
    /// The IRQ is not below [`IRQ_LIMIT`].
    Irq(u64),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Syntax => write!(f, "not <size>@<base>:<irq>[:<id>]"),
            ParamError::Number(field) => write!(f, "bad number for the {field}"),
            ParamError::Size(s) => {
                write!(f, "size {s:#x} outside {MIN_SIZE:#x}..={MAX_SIZE:#x}")
            }
            ParamError::Base(b) => write!(
                f,
                "base {b:#x} is zero, unaligned or its range ends above 4 GiB"
            ),
            ParamError::Irq(i) => write!(f, "irq {i} is not below {IRQ_LIMIT}"),
        }
    }
}

/// Parses one value, `<size>@<base>:<irq>[:<id>]` (the id is Linux's device number, ignored).
pub fn parse(value: &str) -> Result<MmioDevice, ParamError> {
    let (size, rest) = value.split_once('@').ok_or(ParamError::Syntax)?;
    let mut fields = rest.split(':');
    let base = fields.next().ok_or(ParamError::Syntax)?;
    let irq = fields.next().ok_or(ParamError::Syntax)?;
    if let Some(id) = fields.next() {
        number(id).ok_or(ParamError::Number("id"))?;
    }
    if fields.next().is_some() {
        return Err(ParamError::Syntax);
    }
    let size = sized(size).ok_or(ParamError::Number("size"))?;
    let base = number(base).ok_or(ParamError::Number("base"))?;
    let irq = number(irq).ok_or(ParamError::Number("irq"))?;
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(ParamError::Size(size));
    }
    if base == 0 || base % 4 != 0 || base.checked_add(size).is_none_or(|e| e > ADDRESS_LIMIT) {
        return Err(ParamError::Base(base));
    }
    let irq = u8::try_from(irq).map_err(|_| ParamError::Irq(irq))?;
    Ok(MmioDevice { base, size, irq })
}

/// Every `virtio_mmio.device=` word of `cmdline`, wherever it is (QEMU appends them after
/// the app's arguments), parsed, in order.
pub fn devices(cmdline: &str) -> impl Iterator<Item = Result<MmioDevice, ParamError>> + '_ {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(key, _)| *key == PARAM)
        .map(|(_, value)| parse(value))
}

/// Whether `word` is a `virtio_mmio.device=` word (the kernel keeps them out of the app's
/// arguments).
pub fn is_param(word: &str) -> bool {
    word.split_once('=').is_some_and(|(key, _)| key == PARAM)
}

/// A C-style unsigned number: `0x`/`0X` hex, a leading `0` octal, else decimal.
fn number(text: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (hex, 16)
        } else if text.len() > 1
            && let Some(octal) = text.strip_prefix('0')
        {
            (octal, 8)
        } else {
            (text, 10)
        };
    // `from_str_radix` takes a sign; Linux's does not.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// A number with an optional `K`, `M` or `G` suffix (binary multiples), as Linux's `memparse`.
fn sized(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    number(digits)?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_qemu_microvm_appends() {
        // Measured: QEMU 7.2, `-M microvm,acpi=off`, two virtio-net-device.
        let cmdline = "log=debug ip=198.18.0.2/24 -- a b virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11";
        let found: Vec<_> = devices(cmdline).collect();
        assert_eq!(
            found,
            [
                Ok(MmioDevice {
                    base: 0xFEB0_0E00,
                    size: 512,
                    irq: 12
                }),
                Ok(MmioDevice {
                    base: 0xFEB0_0C00,
                    size: 512,
                    irq: 11
                }),
            ]
        );
        assert!(is_param("virtio_mmio.device=512@0xfeb00e00:12"));
        assert!(!is_param("virtio_mmio.devices=1"));
        assert!(!is_param("a"));
    }

    #[test]
    fn linux_forms() {
        let d = parse("4K@0xd0000000:5:3").unwrap();
        assert_eq!((d.size, d.base, d.irq), (4096, 0xD000_0000, 5));
        assert_eq!(parse("0x200@4272947200:12").unwrap().base, 0xFEB0_0000);
        assert_eq!(parse("01000@0xfeb00000:010").unwrap().size, 512);
        assert_eq!(parse("01000@0xfeb00000:010").unwrap().irq, 8);
        let r = parse("512@0xfeb00e00:12").unwrap().region();
        assert_eq!((r.phys(), r.len()), (0xFEB0_0E00, 512));
    }

    #[test]
    fn bad_values_are_errors() {
        for (value, error) in [
            ("", ParamError::Syntax),
            ("512", ParamError::Syntax),
            ("512@0xfeb00e00", ParamError::Syntax),
            ("512@0xfeb00e00:12:1:2", ParamError::Syntax),
            ("512@0xfeb00e00:12:x", ParamError::Number("id")),
            ("@0xfeb00e00:12", ParamError::Number("size")),
            ("-512@0xfeb00e00:12", ParamError::Number("size")),
            ("512@+0xfeb00e00:12", ParamError::Number("base")),
            ("512@0x:12", ParamError::Number("base")),
            ("512@0xfeb00e00:", ParamError::Number("irq")),
            ("99999999999999999999@0x1000:1", ParamError::Number("size")),
            ("16G@0x1000:1", ParamError::Size(16 << 30)),
            ("255@0x1000:1", ParamError::Size(255)),
            ("512@0:1", ParamError::Base(0)),
            ("512@0x1002:1", ParamError::Base(0x1002)),
            ("512@0xfffffe04:1", ParamError::Base(0xFFFF_FE04)),
            (
                "512@0xffffffffffffff00:1",
                ParamError::Base(0xFFFF_FFFF_FFFF_FF00),
            ),
            ("512@0x1000:256", ParamError::Irq(256)),
            ("512@0x1000:08", ParamError::Number("irq")),
        ] {
            assert_eq!(parse(value), Err(error), "{value}");
        }
    }

    proptest! {
        /// Whatever the VMM writes, parsing returns; what it accepts is in bounds.
        #[test]
        fn any_text_parses_or_fails_cleanly(value in "\\PC{0,40}") {
            if let Ok(d) = parse(&value) {
                prop_assert!((MIN_SIZE..=MAX_SIZE).contains(&d.size));
                prop_assert!(d.base != 0 && d.base % 4 == 0 && d.base + d.size <= ADDRESS_LIMIT);
            }
        }

        /// Near-misses of the real syntax too.
        #[test]
        fn shaped_text_parses_or_fails_cleanly(
            size in "[0-9a-fxXkKmMgG]{0,12}",
            base in "[0-9a-fxX+-]{0,20}",
            irq in "[0-9x]{0,5}",
            tail in "(:[0-9a-z]{0,4}){0,2}",
        ) {
            let _ = parse(&format!("{size}@{base}:{irq}{tail}"));
        }

        /// Every valid device printed as QEMU prints it reads back the same.
        #[test]
        fn round_trip(slot in 0u64..0x7F_FFFF, size in MIN_SIZE..=4096u64, irq in 0u8..=255) {
            let base = slot * 512;
            prop_assume!(base != 0 && base + size <= ADDRESS_LIMIT);
            let value = format!("{size}@{base:#x}:{irq}");
            prop_assert_eq!(parse(&value), Ok(MmioDevice { base, size, irq }));
            let printed = MmioDevice { base, size, irq }.to_string();
            prop_assert_eq!(parse(&printed), Ok(MmioDevice { base, size, irq }));
        }
    }
}
