//! The emulated 82599 VF: registers, mailbox, descriptor rings.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| host_vmm::fuzzing::ixgbevf(data));
