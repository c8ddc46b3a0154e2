//! A migration's State payload as the destination decodes it, device sections restored.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| host_vmm::fuzzing::machine_state(data));
