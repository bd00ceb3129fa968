//! Path canonicalisation: is the request's `:path` one that every party on
//! the way reads the same?
//!
//! Owns the decision "canonical or not" on the raw `:path` bytes, before any
//! route lookup. Envoy matches routes on the raw path unless the connection
//! manager normalises it (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`), and upstreams resolve dot segments,
//! decode `%2e`/`%2f`/`%5c`, turn `\` into `/` and strip `;` parameters
//! (Tomcat, Spring, Jetty) in their own ways. A path is canonical when none
//! of that can change it:
//!
//! - it is an RFC 3986 `path-absolute` made of unreserved characters,
//!   sub-delimiters, `:`, `@` and percent-encodings only (no control
//!   characters, spaces, non-ASCII bytes, `\`, `"`, `<`, `>`, `` ` ``, `{`,
//!   `}`, `|`, `^`);
//! - no segment is empty (`//`; a single trailing `/` is fine), `.` or `..`;
//! - no `;` (a path parameter hides a segment from Envoy but not from
//!   servlet-style upstreams: `/api/x/..;/payments`);
//! - percent-encoding uses upper-case hex, never encodes an unreserved
//!   character (Envoy's `normalize_path` would decode it: `%2e` is `.`), and
//!   never encodes `/`, `\`, `;`, `%` (double encoding) or a control
//!   character.
//!
//! So a canonical path is a fixed point of Envoy's normalisation with
//! `merge_slashes` and every escaped-slashes action: edge-guard and Envoy's
//! router see the same segments whatever the HCM settings. The query string
//! (after `?`) is not part of the path and is not checked. Never allocates,
//! never panics, linear in the path's length.

use std::fmt;

/// Why a path is not canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Does not start with `/` (e.g. `*`, an empty path).
    NotAbsolute,
    /// `//` somewhere before the end.
    EmptySegment,
    /// A `.` or `..` segment.
    DotSegment,
    /// A raw `\`.
    Backslash,
    /// A `;` path parameter.
    PathParameter,
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// Lower-case hex in a percent-encoding (`%2f` rather than `%2F`).
    LowercasePercentEncoding,
    /// A percent-encoded unreserved character (`%2E`, `%41`): Envoy's
    /// `normalize_path` decodes it.
    EncodedUnreserved(u8),
    /// A percent-encoded `/`, `\`, `;`, `%` or control character.
    EncodedDelimiter(u8),
    /// A byte that has no place in a path (control, space, non-ASCII, …).
    InvalidCharacter(u8),
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathProblem::NotAbsolute => f.write_str("the path must start with \"/\""),
            PathProblem::EmptySegment => f.write_str("the path has an empty segment (\"//\")"),
            PathProblem::DotSegment => f.write_str("the path has a \".\" or \"..\" segment"),
            PathProblem::Backslash => f.write_str("the path has a backslash"),
            PathProblem::PathParameter => f.write_str("the path has a \";\" path parameter"),
            PathProblem::BadPercentEncoding => {
                f.write_str("the path has a \"%\" not followed by two hex digits")
            }
            PathProblem::LowercasePercentEncoding => {
                f.write_str("the path's percent-encoding must use upper-case hex")
            }
            PathProblem::EncodedUnreserved(b) => write!(
                f,
                "the path percent-encodes {:?}, which must be sent as is",
                char::from(*b)
            ),
            PathProblem::EncodedDelimiter(b) => {
                write!(f, "the path percent-encodes the byte 0x{b:02X}")
            }
            PathProblem::InvalidCharacter(b) => {
                write!(
                    f,
                    "the path has the byte 0x{b:02X}, which must be percent-encoded"
                )
            }
        }
    }
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes allowed raw in a canonical path (besides `/` and `%`): unreserved,
/// sub-delimiters without `;`, `:` and `@`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex_value(b: u8) -> Option<(u8, bool)> {
    match b {
        b'0'..=b'9' => Some((b - b'0', false)),
        b'A'..=b'F' => Some((b - b'A' + 10, false)),
        b'a'..=b'f' => Some((b - b'a' + 10, true)),
        _ => None,
    }
}

/// The path part of a `:path` value: up to the first `?` (or `#`, which
/// Envoy refuses by default but the router would also cut at).
pub fn path_part(path: &str) -> &str {
    // A byte search: '?' and '#' are ASCII, so no byte of a multi-byte
    // character matches them (cheaper than a char-pattern search).
    match path.bytes().position(|b| b == b'?' || b == b'#') {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

/// Checks that `path` (a whole `:path` value, query included) is canonical.
pub fn check(path: &str) -> Result<(), PathProblem> {
    let bytes = path_part(path).as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathProblem::NotAbsolute);
    }
    // Start of the current segment (just after its '/').
    let mut segment_start = 1;
    let mut i = 1;
    while i <= bytes.len() {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                let segment = bytes.get(segment_start..i).unwrap_or_default();
                match segment {
                    b"." | b".." => return Err(PathProblem::DotSegment),
                    // Empty: fine only as the last segment (a trailing '/',
                    // or the root "/" itself).
                    b"" if b.is_some() => return Err(PathProblem::EmptySegment),
                    _ => {}
                }
                segment_start = i + 1;
            }
            Some(b'%') => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some((hi, hi_lower)), Some((lo, lo_lower))) = (hi, lo) else {
                    return Err(PathProblem::BadPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                if is_unreserved(decoded) {
                    return Err(PathProblem::EncodedUnreserved(decoded));
                }
                if matches!(decoded, b'/' | b'\\' | b';' | b'%')
                    || decoded < 0x20
                    || decoded == 0x7f
                {
                    return Err(PathProblem::EncodedDelimiter(decoded));
                }
                if hi_lower || lo_lower {
                    return Err(PathProblem::LowercasePercentEncoding);
                }
                i += 3;
                continue;
            }
            Some(b'\\') => return Err(PathProblem::Backslash),
            Some(b';') => return Err(PathProblem::PathParameter),
            Some(b) if !is_path_char(b) => return Err(PathProblem::InvalidCharacter(b)),
            Some(_) => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_are_canonical() {
        for p in [
            "/",
            "/api/courses",
            "/api/courses/",
            "/api/courses/7",
            "/api/courses/7?x=/../y&z=%2e%2e;a",
            "/api/courses/a.b/c..d/...",
            "/api/users/alice@example.com",
            "/a/b:c/d~e_f-g/h!$&'()*+,=",
            "/files/report%20final.pdf",
            "/q/%C3%A9t%C3%A9",
            "/api/courses#frag",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn the_issues_paths_are_refused() {
        let cases: [(&str, PathProblem); 14] = [
            ("//api/courses/7", PathProblem::EmptySegment),
            ("/api//courses/7", PathProblem::EmptySegment),
            ("/api/courses//", PathProblem::EmptySegment),
            ("/api/courses/../payments/1", PathProblem::DotSegment),
            ("/api/courses/7/../../payments/1", PathProblem::DotSegment),
            ("/api/courses/./7", PathProblem::DotSegment),
            ("/api/courses/..", PathProblem::DotSegment),
            (
                "/api/courses/%2e%2e/payments/1",
                PathProblem::EncodedUnreserved(b'.'),
            ),
            (
                "/api/courses/%2E%2E/payments/1",
                PathProblem::EncodedUnreserved(b'.'),
            ),
            (
                "/api/courses/.%2e/payments/1",
                PathProblem::EncodedUnreserved(b'.'),
            ),
            (
                "/api/courses%2f..%2fpayments",
                PathProblem::EncodedDelimiter(b'/'),
            ),
            (
                "/api/courses%5C..%5Cpayments",
                PathProblem::EncodedDelimiter(b'\\'),
            ),
            ("/api/courses\\..\\payments", PathProblem::Backslash),
            ("/api/courses/..;/payments/1", PathProblem::PathParameter),
        ];
        for (p, why) in cases {
            assert_eq!(check(p), Err(why), "{p}");
        }
    }

    #[test]
    fn percent_encoding_must_be_envoys_canonical_form() {
        assert_eq!(check("/a%2"), Err(PathProblem::BadPercentEncoding));
        assert_eq!(check("/a%zz"), Err(PathProblem::BadPercentEncoding));
        assert_eq!(check("/a%"), Err(PathProblem::BadPercentEncoding));
        assert_eq!(check("/a%3a"), Err(PathProblem::LowercasePercentEncoding));
        assert_eq!(check("/a%3A"), Ok(()));
        assert_eq!(check("/a%41"), Err(PathProblem::EncodedUnreserved(b'A')));
        assert_eq!(check("/a%252e"), Err(PathProblem::EncodedDelimiter(b'%')));
        assert_eq!(check("/a%00b"), Err(PathProblem::EncodedDelimiter(0)));
        assert_eq!(check("/a%0D%0A"), Err(PathProblem::EncodedDelimiter(b'\r')));
        assert_eq!(check("/a%3Bb"), Err(PathProblem::EncodedDelimiter(b';')));
    }

    #[test]
    fn checking_goes_on_right_after_a_percent_encoding() {
        assert_eq!(check("/a%20/../x"), Err(PathProblem::DotSegment));
        assert_eq!(check("/a%20b/c%20//x"), Err(PathProblem::EmptySegment));
        assert_eq!(check("/%20%20;x"), Err(PathProblem::PathParameter));
        assert_eq!(check("/a%7F"), Err(PathProblem::EncodedDelimiter(0x7f)));
        assert_eq!(check("/a%1F"), Err(PathProblem::EncodedDelimiter(0x1f)));
    }

    #[test]
    fn raw_bytes_outside_the_path_grammar_are_refused() {
        assert_eq!(check(""), Err(PathProblem::NotAbsolute));
        assert_eq!(check("*"), Err(PathProblem::NotAbsolute));
        assert_eq!(check("api/x"), Err(PathProblem::NotAbsolute));
        assert_eq!(check("?x"), Err(PathProblem::NotAbsolute));
        assert_eq!(check("/a b"), Err(PathProblem::InvalidCharacter(b' ')));
        assert_eq!(check("/a\u{e9}"), Err(PathProblem::InvalidCharacter(0xc3)));
        assert_eq!(
            check("/a\u{fffd}"),
            Err(PathProblem::InvalidCharacter(0xef))
        );
        assert_eq!(check("/a|b"), Err(PathProblem::InvalidCharacter(b'|')));
        assert_eq!(check("/a\tb"), Err(PathProblem::InvalidCharacter(b'\t')));
    }

    #[test]
    fn problems_read_as_sentences() {
        assert_eq!(
            PathProblem::EncodedUnreserved(b'.').to_string(),
            "the path percent-encodes '.', which must be sent as is"
        );
        assert_eq!(
            PathProblem::EncodedDelimiter(b'/').to_string(),
            "the path percent-encodes the byte 0x2F"
        );
    }
}
