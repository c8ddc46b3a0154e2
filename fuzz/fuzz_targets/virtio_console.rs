//! virtio-console (the guest agent's channel) behind its PCI transport.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| host_vmm::fuzzing::virtio_console(data));
