#![no_main]
//! `egress::fuzzing::connect_reply`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::connect_reply(data));
