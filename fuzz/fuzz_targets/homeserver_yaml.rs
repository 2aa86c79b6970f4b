#![no_main]
//! `egress::fuzzing::homeserver_yaml`: see that function for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::homeserver_yaml(data));
