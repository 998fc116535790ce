//! libFuzzer's entry to [`weir_gateway_fuzz::url_pattern`], where the input format and the
//! invariants are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_gateway_fuzz::url_pattern::run(data));
