//! libFuzzer's entry to [`weir_gateway_fuzz::jwt`], where the input format and the
//! invariants are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_gateway_fuzz::jwt::run(data));
