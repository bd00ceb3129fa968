//! Path canonicalisation and route resolution on arbitrary bytes: never a
//! panic; a canonical path resolves the same with or without its query.
#![no_main]
use edge_guard::path;
use edge_guard::routing::{Method, MethodSet, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let table = RouteTable::build([
        ("/", MethodSet::ANY),
        ("/api", MethodSet::ANY),
        ("/api/courses", MethodSet::ANY),
    ]);
    if path::check(&text).is_ok() {
        let only = path::path_part(&text);
        assert_eq!(
            table.resolve(&text, Method::Get),
            table.resolve(only, Method::Get)
        );
    }
});
