#![no_main]
//! `egress::fuzzing::media`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::media(data));
