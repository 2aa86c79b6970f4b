#![no_main]
//! `egress::fuzzing::no_proxy`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::no_proxy(data));
