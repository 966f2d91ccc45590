//! tenure-bench: criterion micro-benchmarks (`cargo bench -p tenure-bench`) and, in later
//! issues, the side-by-side macro benchmark against sanlock and the device.
