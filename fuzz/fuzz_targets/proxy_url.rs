#![no_main]
//! `egress::fuzzing::proxy_url`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::proxy_url(data));
