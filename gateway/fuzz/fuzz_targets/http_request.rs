//! libFuzzer's entry to [`weir_gateway_fuzz::http_request`], where the input format and the
//! invariants are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_gateway_fuzz::http_request::run(data));
