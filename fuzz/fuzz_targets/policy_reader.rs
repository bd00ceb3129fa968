//! The policy reader on arbitrary bytes: a policy or an error, never a panic.
#![no_main]
use edge_guard::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = Policy::from_json(data) {
        let _ = e.to_string();
    }
});
