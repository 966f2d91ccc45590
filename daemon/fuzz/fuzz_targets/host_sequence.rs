#![no_main]
//! Fuzz target: `tenured::fuzzing::host_sequence` (see that function for what it checks).

libfuzzer_sys::fuzz_target!(|data: &[u8]| tenured::fuzzing::host_sequence(data));
