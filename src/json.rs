//! A minimal JSON writer for the documents edge-guard sends (error bodies,
//! the status endpoint).
//!
//! Owns string escaping and separators. It exists because serde_json's
//! `Value` output pulls float formatting into the wasm (~15 KB) for numbers
//! edge-guard never has. Never parses anything.

use std::fmt::Write;

/// Writes `{...}` with the fields `fill` adds.
pub fn object(fill: impl FnOnce(&mut Obj<'_>)) -> String {
    let mut out = String::with_capacity(128);
    Obj::write(&mut out, fill);
    out
}

fn escape_into(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn write(out: &'a mut String, fill: impl FnOnce(&mut Obj<'_>)) {
        out.push('{');
        let mut obj = Obj { out, first: true };
        fill(&mut obj);
        obj.out.push('}');
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        escape_into(self.out, key);
        self.out.push(':');
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(self.out, value);
        self
    }

    pub fn num(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub fn opt_num(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.num(key, v),
            None => self.null(key),
        }
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn opt_bool(&mut self, key: &str, value: Option<bool>) -> &mut Self {
        match value {
            Some(v) => self.bool(key, v),
            None => self.null(key),
        }
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push_str("null");
        self
    }

    pub fn obj(&mut self, key: &str, fill: impl FnOnce(&mut Obj<'_>)) -> &mut Self {
        self.key(key);
        Obj::write(self.out, fill);
        self
    }

    /// An array of the items `fill` adds.
    pub fn arr(&mut self, key: &str, fill: impl FnOnce(&mut Arr<'_>)) -> &mut Self {
        self.key(key);
        self.out.push('[');
        let mut arr = Arr {
            out: self.out,
            first: true,
        };
        fill(&mut arr);
        arr.out.push(']');
        self
    }
}

pub struct Arr<'a> {
    out: &'a mut String,
    first: bool,
}

impl Arr<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
    }

    pub fn str(&mut self, value: &str) {
        self.sep();
        escape_into(self.out, value);
    }

    pub fn obj(&mut self, fill: impl FnOnce(&mut Obj<'_>)) {
        self.sep();
        Obj::write(self.out, fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json_with_escapes() {
        let text = object(|o| {
            o.str("s", "quote \" back \\ nl \n ctl \u{1} é")
                .num("n", 42)
                .opt_num("none", None)
                .bool("b", true)
                .obj("inner", |i| {
                    i.str("k", "v");
                })
                .arr("list", |a| {
                    a.str("x");
                    a.obj(|o| {
                        o.num("y", 1);
                    });
                });
        });
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["s"], "quote \" back \\ nl \n ctl \u{1} é");
        assert_eq!(v["n"], 42);
        assert!(v["none"].is_null());
        assert_eq!(v["inner"]["k"], "v");
        assert_eq!(v["list"][1]["y"], 1);
    }

    #[test]
    fn empty_containers() {
        assert_eq!(
            object(|o| {
                o.arr("a", |_| {});
            }),
            r#"{"a":[]}"#
        );
    }

    #[test]
    fn only_control_characters_are_escaped_as_unicode() {
        let mut out = String::new();
        escape_into(&mut out, "a b~\u{1f}\u{7f}");
        assert_eq!(out, "\"a b~\\u001f\u{7f}\"");
    }
}
