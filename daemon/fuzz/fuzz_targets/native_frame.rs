#![no_main]
//! Fuzz target: `tenured::fuzzing::native_frame` (see that function for what it checks).

libfuzzer_sys::fuzz_target!(|data: &[u8]| tenured::fuzzing::native_frame(data));
