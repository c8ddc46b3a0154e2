//! Boot, in order: descriptor tables, boot information, command line and log, page tables,
//! heap ranges, clock, the main thread's TLS block (std programs), then the app. Both
//! entries (arch::entry) arrive here.
//!
//! Every step is sized for a guest whose ring-0 instructions are emulated at ~0.4 µs each:
//! no loops over tables, no logging at the default level, nothing zeroed, and the heap and
//! interrupt setup deferred to their first use.

use crate::arch::{self, bootmem, cpuid};
use crate::{abi, bootinfo, cmdline, heap, logger, memmap, serial, timer};

/// The kernel's Rust entry, called by `roam_entry64` on the boot stack with the physical
/// address of the `hvm_start_info`.
pub extern "C" fn kernel_main(start_info: u64) -> ! {
    // First, so that any fault from here on is reported instead of triple-faulting.
    arch::gdt::load();
    arch::idt::load();
    serial::init();

    let info = bootmem::read_start_info(start_info);
    if let Err(err) = bootinfo::validate(start_info, &info) {
        panic!("bad boot information: {err}");
    }
    let options = cmdline::parse(bootmem::copy_cmdline(info.cmdline_paddr));
    logger::init(options.log_level);
    if let Some(value) = options.bad_log_value {
        log::warn!(
            "cmdline: `log={value}` is not a level (off|error|warn|info|debug|trace); using {}",
            options.log_level
        );
    }
    if options.not_utf8 {
        log::warn!("cmdline: not UTF-8, ignored");
    } else if log::log_enabled!(log::Level::Debug) {
        // What the VMM really passed: QEMU microvm appends its virtio-mmio devices here.
        log::debug!(
            "cmdline: {}",
            core::str::from_utf8(bootmem::cmdline()).unwrap_or("")
        );
    }
    if let Some(value) = options.bad_env_value {
        log::warn!("cmdline: `env={value}` is not NAME=VALUE; ignored");
    }

    // One `Ranges`, narrowed in place from RAM to the heap: copies cost emulated time.
    let mut free = memmap::ram(bootmem::memmap(&info));
    if info.memmap_entries > bootmem::MEMMAP_MAX || free.dropped > 0 {
        log::warn!(
            "memory map: too many entries ({}); some RAM is not used",
            info.memmap_entries
        );
    }
    if log::log_enabled!(log::Level::Debug) {
        for e in bootmem::memmap(&info) {
            log::debug!(
                "memory map: {:#x}..{:#x} type {}",
                e.addr,
                e.addr.saturating_add(e.size),
                e.kind
            );
        }
    }
    arch::paging::init(free.as_slice().iter().map(|r| (r.start, r.end)));
    let (image_start, image_end) = bootmem::image_bounds();
    // The app gets its own 2 MiB stack with unmapped guards around it, out of the heap.
    let stack = memmap::stack_block(&free, image_end);
    let ram_mib = if log::log_enabled!(log::Level::Info) {
        free.total() >> 20
    } else {
        0
    };
    free.keep_heap(image_end);
    match stack {
        Some(block) => {
            free.remove(block.start, block.end);
            arch::paging::map_stack(block.start);
        }
        None => log::warn!("boot: no 2 MiB of RAM for the guarded app stack; using the boot stack"),
    }
    log::info!(
        "boot: image {image_start:#x}..{image_end:#x}, RAM {ram_mib} MiB, heap {} MiB",
        free.total() >> 20
    );
    heap::init(free);

    let features = cpuid::features();
    log::debug!("cpu: {features:?}");
    timer::init(&features);
    abi::init(&features);
    if let Err(e) = arch::tls::init_main_thread() {
        panic!("boot: {e}");
    }
    log::info!(
        "boot: kernel ready after {} us; starting the app",
        timer::now_ns() / 1000
    );
    abi::start_app(stack.map(|_| arch::paging::STACK_TOP))
}
