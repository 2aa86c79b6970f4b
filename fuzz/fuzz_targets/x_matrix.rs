#![no_main]
//! `egress::fuzzing::x_matrix`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::x_matrix(data));
