#![no_main]
//! `egress::fuzzing::well_known`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::well_known(data));
