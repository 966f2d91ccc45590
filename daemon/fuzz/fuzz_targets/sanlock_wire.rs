#![no_main]
//! Fuzz target: `tenured::fuzzing::sanlock_wire` (see that function for what it checks).

libfuzzer_sys::fuzz_target!(|data: &[u8]| tenured::fuzzing::sanlock_wire(data));
