//! The API's HTTP/1.1 reader, router and JSON bodies.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| host_vmm::fuzzing::http_request(data));
