//! virtio-net behind its PCI transport over guest memory the input writes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| host_vmm::fuzzing::virtio_net(data));
