#![no_main]
//! `egress::fuzzing::serve`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::serve(data));
