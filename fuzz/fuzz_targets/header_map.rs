//! The header-map decoder on arbitrary bytes: never a panic, never more
//! pairs than the input could hold.
#![no_main]
use edge_guard::headers::{HeaderPairs, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(HeaderPairs::new(data).count() <= data.len());
    let head = RequestHead::from_pairs(HeaderPairs::new(data));
    let _ = head.client_deadline_headers().count();
});
