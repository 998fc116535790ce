//! libFuzzer's entry to [`weir_management_fuzz::otlp`], where the input format and the
//! invariants are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_management_fuzz::otlp::run(data));
