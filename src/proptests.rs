//! Property tests of the pure parsers with arbitrary input (issue 9): path
//! canonicalisation and route matching against a model of Envoy, the upgrade
//! classifier, the header-map decoder, the frame scanner split at arbitrary
//! points, and the policy reader. No input may panic; every failure proptest
//! ever found is kept as a regression case next to the property.

use proptest::prelude::*;

use crate::headers::{HeaderPairs, RequestHead};
use crate::path::{self, path_part};
use crate::policy::Policy;
use crate::routing::{normalise_prefix, Method, MethodSet, RouteMatch, RouteTable};
use crate::upgrade;
use crate::websocket::frame::{FrameScanner, Sender, SliceSource};

// ---- a model of Envoy's path handling -------------------------------------------------

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// What Envoy routes on with `normalize_path` (RFC 3986 normalisation:
/// percent-encoded unreserved characters decoded, other percent-encodings
/// upper-cased, `\` → `/`, dot segments removed), `merge_slashes` and
/// `path_with_escaped_slashes_action: UNESCAPE_*` (%2F, %5C decoded first).
fn envoy_normalise(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let decoded = h << 4 | l;
                if is_unreserved(decoded) || decoded == b'/' || decoded == b'\\' {
                    out.push(decoded);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    // Dot-segment removal, then merge slashes.
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = text.split('/').skip(1).collect();
    for (n, seg) in parts.iter().enumerate() {
        let last = n + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    let mut merged = String::from("/");
    let mut first = true;
    for (n, seg) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        if seg.is_empty() && !last {
            continue;
        }
        if !first {
            merged.push('/');
        }
        merged.push_str(seg);
        first = false;
    }
    merged
}

/// Envoy's choice among routes listed longest prefix first (as
/// envoy/envoy.yaml and the e2e harness list them), each a
/// `path_separated_prefix` (or `prefix: /` for the root).
fn envoy_route<'a>(prefixes: &'a [String], path: &str) -> Option<&'a str> {
    let path = path_part(path);
    let mut sorted: Vec<&String> = prefixes.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.len()));
    sorted
        .into_iter()
        .find(|p| {
            p.as_str() == "/"
                || path == p.as_str()
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
        })
        .map(String::as_str)
}

// ---- strategies ---------------------------------------------------------------------

/// Paths built from the pieces that make paths hostile.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("api"),
        Just("courses"),
        Just("7"),
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%2E"),
        Just("%2f"),
        Just("%2F"),
        Just("%5c"),
        Just("%5C"),
        Just("%25"),
        Just("%41"),
        Just("%3a"),
        Just("%3A"),
        Just("%C3%A9"),
        Just("%"),
        Just("%z"),
        Just("\\"),
        Just(";"),
        Just(";x=1"),
        Just("a.b"),
        Just("~"),
        Just(" "),
        Just("?"),
        Just("?x=/../"),
        Just("#f"),
    ];
    (any::<bool>(), prop::collection::vec(piece, 0..12)).prop_map(|(slash, pieces)| {
        let mut p = String::from(if slash { "/" } else { "" });
        for piece in pieces {
            p.push_str(piece);
        }
        p
    })
}

/// Canonical paths over a small alphabet, so they hit declared prefixes.
fn canonical_path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("api".to_string()),
        Just("courses".to_string()),
        Just("x".to_string()),
        Just("ws".to_string()),
        "[a-z0-9._~-]{1,4}".prop_filter("no dot segment", |s| s != "." && s != ".."),
    ];
    (
        prop::collection::vec(seg, 0..5),
        any::<bool>(),
        prop::option::of("[a-z=&/.]{0,6}"),
    )
        .prop_map(|(segs, trailing, query)| {
            let mut p = String::new();
            for s in &segs {
                p.push('/');
                p.push_str(s);
            }
            if trailing || segs.is_empty() {
                p.push('/');
            }
            if let Some(q) = query {
                p.push('?');
                p.push_str(&q);
            }
            p
        })
}

fn prefixes() -> impl Strategy<Value = Vec<String>> {
    let seg = prop_oneof![
        Just("api"),
        Just("courses"),
        Just("x"),
        Just("ws"),
        Just("a")
    ];
    prop::collection::btree_set(
        prop::collection::vec(seg, 0..3).prop_map(|segs| {
            if segs.is_empty() {
                "/".to_string()
            } else {
                segs.iter().map(|s| format!("/{s}")).collect()
            }
        }),
        1..6,
    )
    .prop_map(|set| set.into_iter().collect())
}

// ---- properties -----------------------------------------------------------------------

/// 2,000 cases per property; `EDGE_GUARD_PROPTEST_CASES` lowers it for
/// `./build.sh mutants`, which runs the whole suite once per mutant (the
/// mutation report says how many it used).
fn cases() -> u32 {
    std::env::var("EDGE_GUARD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn path_check_never_panics_on_any_text(s in ".*") {
        let _ = path::check(&s);
    }

    #[test]
    fn path_check_never_panics_on_any_bytes(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = path::check(&String::from_utf8_lossy(&b));
    }

    /// A canonical path is one Envoy's normalisation leaves alone, so
    /// edge-guard decides on the path Envoy routes whatever the HCM says.
    #[test]
    fn canonical_paths_are_fixed_points_of_envoys_normalisation(p in hostile_path()) {
        if path::check(&p).is_ok() {
            let only = path_part(&p);
            prop_assert_eq!(envoy_normalise(only), only.to_string(), "{}", p);
        }
    }

    /// And every path Envoy's normalisation would change is refused.
    #[test]
    fn paths_envoy_would_change_are_refused(p in hostile_path()) {
        let only = path_part(&p);
        if only.starts_with('/') && envoy_normalise(only) != only {
            prop_assert!(path::check(&p).is_err(), "{} accepted", p);
        }
    }

    /// On canonical paths the filter's trie and Envoy's matcher agree on
    /// the route: segment boundaries and longest prefix.
    #[test]
    fn route_table_agrees_with_envoy_on_canonical_paths(
        declared in prefixes(),
        p in canonical_path(),
    ) {
        prop_assume!(path::check(&p).is_ok());
        let normalised: Vec<String> = declared
            .iter()
            .filter_map(|d| normalise_prefix(d).ok())
            .collect();
        let table = RouteTable::build(normalised.iter().map(|d| (d.as_str(), MethodSet::ANY)));
        let ours = match table.resolve(&p, Method::Get) {
            RouteMatch::Route(id) => normalised.get(id).map(String::as_str),
            _ => None,
        };
        prop_assert_eq!(ours, envoy_route(&normalised, &p), "{}", p);
    }

    #[test]
    fn upgrade_classification_never_panics(method in "[A-Z]{0,8}", value in ".{0,40}") {
        let _ = upgrade::classify(Method::parse(&method), Some(&value));
    }

    #[test]
    fn header_map_decoder_never_panics(b in prop::collection::vec(any::<u8>(), 0..256)) {
        let head = RequestHead::from_pairs(HeaderPairs::new(&b));
        let _ = head.client_deadline_headers().count();
    }

    #[test]
    fn header_map_decoder_reads_what_was_encoded(
        pairs in prop::collection::vec(("[:a-z-]{1,12}", prop::collection::vec(any::<u8>(), 0..20)), 0..8)
    ) {
        let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in &pairs {
            bytes.extend((k.len() as u32).to_le_bytes());
            bytes.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in &pairs {
            bytes.extend(k.as_bytes());
            bytes.push(0);
            bytes.extend(v);
            bytes.push(0);
        }
        let decoded: Vec<(Vec<u8>, Vec<u8>)> = HeaderPairs::new(&bytes)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    /// Splitting a stream into chunks anywhere never changes what the
    /// scanner finds: the same frames, then the same error if any.
    #[test]
    fn frame_scanner_is_independent_of_chunking(
        stream in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(0usize..300, 0..8),
        client in any::<bool>(),
    ) {
        let sender = if client { Sender::Client } else { Sender::Server };
        let whole = scan(sender, &[&stream[..]]);
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= stream.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&stream[at..c]);
            at = c;
        }
        chunks.push(&stream[at..]);
        prop_assert_eq!(scan(sender, &chunks), whole);
    }

    #[test]
    fn policy_reader_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Policy::from_json(&b);
    }

    #[test]
    fn policy_reader_never_panics_on_json_shaped_input(
        name in ".{0,10}",
        prefix in ".{0,10}",
        timeout in ".{0,6}",
        limit in any::<i64>(),
        extra in prop::option::of("[a-z_]{1,8}"),
    ) {
        let mut doc = serde_json::json!({
            "routes": [{"name": name, "prefix": prefix, "cluster": "c", "timeout": timeout,
                        "websocket": true, "max_connections": limit}],
            "timeouts": {"classes": {"standard": timeout.clone()}},
            "websocket": {"max_connections": limit, "idle_timeout": timeout}
        });
        if let Some(extra) = extra {
            doc[extra] = serde_json::json!(limit);
        }
        let _ = Policy::from_json(doc.to_string().as_bytes());
    }
}

/// What the scanner reports over `chunks`: each frame's fields (offsets
/// made absolute in the stream), then the first error.
fn scan(sender: Sender, chunks: &[&[u8]]) -> Vec<String> {
    let mut scanner = FrameScanner::new(sender);
    let mut out = Vec::new();
    for chunk in chunks {
        let mut source = SliceSource(chunk);
        for item in scanner.frames(&mut source) {
            match item {
                Ok(f) => out.push(format!(
                    "{} {} {:?} {} {} {}",
                    f.fin, f.rsv, f.opcode, f.masked, f.payload_len, f.header_len
                )),
                Err(e) => {
                    out.push(format!("error {:?}", e.error));
                    return out;
                }
            }
        }
    }
    out
}

/// Regression cases: inputs proptest (or review) found, kept forever.
#[test]
fn regressions() {
    // A dot segment at the end and an encoded dot next to a raw one.
    for p in ["/a/..", "/a/.", "/.%2e/", "/%2e", "/a//", "//"] {
        assert!(path::check(p).is_err(), "{p}");
        assert_ne!(envoy_normalise(path_part(p)), p, "{p}");
    }
    assert!(path::check("/").is_ok());
    assert_eq!(envoy_normalise("/"), "/");
}
