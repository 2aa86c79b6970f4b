#![no_main]
//! `egress::fuzzing::server_name`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::server_name(data));
