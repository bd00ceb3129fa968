//! The upgrade classifier on arbitrary methods and header values.
#![no_main]
use edge_guard::routing::Method;
use edge_guard::upgrade;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (method, value) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = upgrade::classify(Method::parse(method), Some(value));
    let _ = upgrade::classify(Method::parse(method), None);
});
