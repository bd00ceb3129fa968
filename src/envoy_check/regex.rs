//! A small subset of RE2, enough to evaluate the `safe_regex` route matchers
//! people write for paths (`^/api/v[0-9]+/courses(/.*)?$`).
//!
//! Owns parsing and full-matching of: literals and escapes, `.`, classes
//! (`[a-z_-]`, `[^/]`, `\d \w \s` and their negations), groups `(…)`/`(?:…)`
//! with `|`, the quantifiers `* + ? {n} {n,} {n,m}` (lazy forms too) and the
//! anchors `^`/`$`. Anything else (flags, `\b`, named groups, backreferences)
//! is refused with `None`, so the caller can say it did not evaluate it rather
//! than guess. Never a dependency: the filter crate stays small.

use std::cell::Cell;

#[derive(Debug)]
enum Node {
    Char(char),
    Any,
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
    Group(Vec<Vec<Node>>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
    Start,
    End,
}

/// Whether `pattern` matches all of `text` (RE2 full match, as Envoy's
/// `safe_regex` route match does). `None` when the pattern is outside the
/// subset or too expensive to decide.
pub fn full_match(pattern: &str, text: &str) -> Option<bool> {
    let mut parser = Parser {
        chars: pattern.chars().collect(),
        pos: 0,
    };
    let alternatives = parser.alternatives()?;
    if parser.pos != parser.chars.len() {
        return None;
    }
    let root = vec![Node::Group(alternatives)];
    let text: Vec<char> = text.chars().collect();
    let matcher = Matcher {
        text: &text,
        steps: Cell::new(0),
    };
    let found = matcher.run(&root, 0, &mut |end| end == text.len());
    if matcher.steps.get() > STEP_LIMIT {
        return None;
    }
    Some(found)
}

const STEP_LIMIT: u32 = 200_000;

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn alternatives(&mut self) -> Option<Vec<Vec<Node>>> {
        let mut alternatives = vec![self.sequence()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alternatives.push(self.sequence()?);
        }
        Some(alternatives)
    }

    fn sequence(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            nodes.push(self.quantified(atom)?);
        }
        Some(nodes)
    }

    fn atom(&mut self) -> Option<Node> {
        match self.next()? {
            '.' => Some(Node::Any),
            '^' => Some(Node::Start),
            '$' => Some(Node::End),
            '(' => {
                if self.peek() == Some('?') {
                    self.pos += 1;
                    if self.next()? != ':' {
                        return None;
                    }
                }
                let group = self.alternatives()?;
                (self.next()? == ')').then_some(Node::Group(group))
            }
            '[' => self.class(),
            '\\' => self.escape(),
            '*' | '+' | '?' | '{' | ')' => None,
            c => Some(Node::Char(c)),
        }
    }

    fn escape(&mut self) -> Option<Node> {
        let c = self.next()?;
        let class = |ranges: Vec<(char, char)>, negated| Some(Node::Class { ranges, negated });
        match c {
            'd' => class(digit(), false),
            'D' => class(digit(), true),
            'w' => class(word(), false),
            'W' => class(word(), true),
            's' => class(space(), false),
            'S' => class(space(), true),
            c if c.is_ascii_punctuation() => Some(Node::Char(c)),
            _ => None,
        }
    }

    fn class(&mut self) -> Option<Node> {
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self.next()?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let low = if c == '\\' {
                let e = self.next()?;
                match e {
                    'd' => {
                        ranges.extend(digit());
                        continue;
                    }
                    'w' => {
                        ranges.extend(word());
                        continue;
                    }
                    's' => {
                        ranges.extend(space());
                        continue;
                    }
                    e if e.is_ascii_punctuation() => e,
                    _ => return None,
                }
            } else if c == '[' {
                return None; // [:alpha:] and friends
            } else {
                c
            };
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']') {
                self.pos += 1;
                let high = match self.next()? {
                    '\\' => self.next().filter(char::is_ascii_punctuation)?,
                    h => h,
                };
                if high < low {
                    return None;
                }
                ranges.push((low, high));
            } else {
                ranges.push((low, low));
            }
        }
        Some(Node::Class { ranges, negated })
    }

    fn quantified(&mut self, atom: Node) -> Option<Node> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.pos += 1;
                let (min, max) = self.braces()?;
                self.skip_lazy();
                return Some(repeat(atom, min, max));
            }
            _ => return Some(atom),
        };
        self.pos += 1;
        self.skip_lazy();
        Some(repeat(atom, min, max))
    }

    /// Laziness changes which match is found, never whether a full match exists.
    fn skip_lazy(&mut self) {
        if self.peek() == Some('?') {
            self.pos += 1;
        }
    }

    fn braces(&mut self) -> Option<(u32, Option<u32>)> {
        let min = self.number()?;
        let max = match self.next()? {
            '}' => return Some((min, Some(min))),
            ',' if self.peek() == Some('}') => None,
            ',' => Some(self.number()?),
            _ => return None,
        };
        (self.next()? == '}').then_some(())?;
        if max.is_some_and(|m| m < min) {
            return None;
        }
        Some((min, max))
    }

    fn number(&mut self) -> Option<u32> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits: String = self.chars.get(start..self.pos)?.iter().collect();
        digits.parse().ok().filter(|n| *n <= 1000)
    }
}

fn repeat(node: Node, min: u32, max: Option<u32>) -> Node {
    Node::Repeat {
        node: Box::new(node),
        min,
        max,
    }
}

fn digit() -> Vec<(char, char)> {
    vec![('0', '9')]
}

fn word() -> Vec<(char, char)> {
    vec![('0', '9'), ('A', 'Z'), ('a', 'z'), ('_', '_')]
}

fn space() -> Vec<(char, char)> {
    vec![(' ', ' '), ('\t', '\r')]
}

/// Backtracking with continuations; `steps` bounds pathological patterns.
struct Matcher<'t> {
    text: &'t [char],
    steps: Cell<u32>,
}

impl Matcher<'_> {
    fn run(&self, nodes: &[Node], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        let steps = self.steps.get().saturating_add(1);
        self.steps.set(steps);
        if steps > STEP_LIMIT {
            return false;
        }
        let Some((first, rest)) = nodes.split_first() else {
            return k(pos);
        };
        match first {
            Node::Start => pos == 0 && self.run(rest, pos, k),
            Node::End => pos == self.text.len() && self.run(rest, pos, k),
            Node::Group(alternatives) => alternatives
                .iter()
                .any(|alt| self.run(alt, pos, &mut |p| self.run(rest, p, k))),
            Node::Repeat { node, min, max } => self.repeat(node, *min, *max, 0, pos, rest, k),
            single => {
                self.text.get(pos).is_some_and(|&c| accepts(single, c))
                    && self.run(rest, pos + 1, k)
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the state of one repetition, kept explicit
    fn repeat(
        &self,
        node: &Node,
        min: u32,
        max: Option<u32>,
        count: u32,
        pos: usize,
        rest: &[Node],
        k: &mut dyn FnMut(usize) -> bool,
    ) -> bool {
        if max.map_or(true, |m| count < m) {
            let once = std::slice::from_ref(node);
            // An empty iteration past `min` can never help and would loop.
            let more = self.run(once, pos, &mut |p| {
                (p != pos || count < min) && self.repeat(node, min, max, count + 1, p, rest, k)
            });
            if more {
                return true;
            }
        }
        count >= min && self.run(rest, pos, k)
    }
}

fn accepts(node: &Node, c: char) -> bool {
    match node {
        Node::Char(expected) => *expected == c,
        Node::Any => c != '\n',
        Node::Class { ranges, negated } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{full_match, STEP_LIMIT};

    #[test]
    fn literal_and_escapes() {
        assert_eq!(full_match("/api/courses", "/api/courses"), Some(true));
        assert_eq!(full_match("/api/courses", "/api/courses/1"), Some(false));
        assert_eq!(full_match(r"/v1\.0/x", "/v1.0/x"), Some(true));
        assert_eq!(full_match(r"/v1\.0/x", "/v1a0/x"), Some(false));
    }

    #[test]
    fn common_path_patterns() {
        let re = r"^/api/v[0-9]+/courses(/.*)?$";
        assert_eq!(full_match(re, "/api/v2/courses"), Some(true));
        assert_eq!(full_match(re, "/api/v12/courses/x/y"), Some(true));
        assert_eq!(full_match(re, "/api/v/courses"), Some(false));
        assert_eq!(full_match(re, "/api/v2/coursesX"), Some(false));
        assert_eq!(
            full_match(r"/users/[^/]+/avatar", "/users/42/avatar"),
            Some(true)
        );
        assert_eq!(
            full_match(r"/users/[^/]+/avatar", "/users/4/2/avatar"),
            Some(false)
        );
        assert_eq!(full_match(r"/(?:a|bc)+/\d{2,3}", "/abca/123"), Some(true));
        assert_eq!(full_match(r"/(?:a|bc)+/\d{2,3}", "/abca/1234"), Some(false));
        assert_eq!(full_match(".*", "/anything"), Some(true));
        assert_eq!(full_match("/x(|/.*)", "/x"), Some(true));
        assert_eq!(full_match("/a.*?b", "/a/b"), Some(true));
    }

    #[test]
    fn nested_empty_repetition_terminates() {
        assert_eq!(full_match("(a*)*b", "aaab"), Some(true));
        assert_eq!(full_match("(a*)*b", "aaac"), Some(false));
        // Refusing empty iterations past the minimum also keeps nested stars
        // cheap: allowing one more at the minimum multiplies the work at
        // every level (this one would pass 200,000 steps).
        assert_eq!(full_match("(((a*)*)*)*b", "aaa"), Some(false));
    }

    #[test]
    fn outside_the_subset_is_refused() {
        assert_eq!(full_match(r"(?i)/api", "/API"), None);
        assert_eq!(full_match(r"\b/api", "/api"), None);
        assert_eq!(full_match(r"(?P<v>\d+)", "1"), None);
        assert_eq!(full_match(r"/api(", "/api"), None);
        assert_eq!(full_match(r"*", "x"), None);
    }

    #[test]
    fn a_match_decided_within_exactly_the_step_limit_counts() {
        // `b|…|b|a` against "a" takes one step for the root, one per failing
        // `b` and three for the `a` that matches (its character, the end of
        // its alternative, the end of the pattern): with STEP_LIMIT - 4 `b`s
        // the match is found on the last step of the budget; one more `b`
        // is one step too many.
        let pattern = |bs: u32| format!("{}a", "b|".repeat(bs as usize));
        assert_eq!(full_match(&pattern(STEP_LIMIT - 4), "a"), Some(true));
        assert_eq!(full_match(&pattern(STEP_LIMIT - 3), "a"), None);
    }

    #[test]
    fn shorthand_classes_and_their_negations() {
        assert_eq!(full_match(r"\d\D", "1a"), Some(true));
        assert_eq!(full_match(r"\d\D", "12"), Some(false));
        assert_eq!(full_match(r"\w+", "Az_09"), Some(true));
        assert_eq!(full_match(r"\w", "-"), Some(false));
        assert_eq!(full_match(r"\W", "-"), Some(true));
        assert_eq!(full_match(r"\W", "a"), Some(false));
        assert_eq!(full_match(r"\s+", " \t\n\r"), Some(true));
        assert_eq!(full_match(r"\s", "a"), Some(false));
        assert_eq!(full_match(r"\S", "a"), Some(true));
        assert_eq!(full_match(r"\S", " "), Some(false));
    }

    #[test]
    fn classes_with_several_items_ranges_and_escapes() {
        assert_eq!(full_match(r"[a-z_-]+", "snake_case-x"), Some(true));
        assert_eq!(full_match(r"[a-z_-]+", "Upper"), Some(false));
        assert_eq!(full_match(r"[\d.]+", "1.2"), Some(true));
        assert_eq!(full_match(r"[\w]+", "a_1"), Some(true));
        assert_eq!(full_match(r"[\s]", "\t"), Some(true));
        assert_eq!(full_match(r"[\.\-]+", ".-"), Some(true));
        assert_eq!(full_match(r"[\.]", "a"), Some(false));
        assert_eq!(full_match(r"[]a]+", "]a"), Some(true));
        assert_eq!(full_match(r"[a-a]", "a"), Some(true));
        assert_eq!(full_match(r"[^a]", "^"), Some(true));
        assert_eq!(full_match(r"[^]a]", "]"), Some(false));
        // Outside the subset or invalid (RE2 refuses a reversed range).
        assert_eq!(full_match(r"[\b]", "b"), None);
        assert_eq!(full_match(r"[z-a]", "a"), None);
        assert_eq!(full_match(r"[[:alpha:]]", "a"), None);
    }

    #[test]
    fn counted_repetitions() {
        assert_eq!(full_match(r"\d{2}", "12"), Some(true));
        assert_eq!(full_match(r"\d{2}", "123"), Some(false));
        assert_eq!(full_match(r"\d{2,}", "12345"), Some(true));
        assert_eq!(full_match(r"\d{2,}", "1"), Some(false));
        assert_eq!(full_match(r"\d{2,2}", "12"), Some(true));
        assert_eq!(full_match(r"\d{3,2}", "12"), None);
        // RE2's largest repeat count is 1000.
        assert_eq!(full_match(r"a{0,1000}", "a"), Some(true));
        assert_eq!(full_match(r"a{0,1001}", "a"), None);
        // Empty iterations count towards the minimum.
        assert_eq!(full_match(r"(a?){3}", "a"), Some(true));
    }

    #[test]
    fn anchors_match_only_at_the_ends() {
        assert_eq!(full_match(r"/a$/b", "/a/b"), Some(false));
        assert_eq!(full_match(r"/a^/b", "/a/b"), Some(false));
        assert_eq!(full_match(r"(/a|/b$)", "/b"), Some(true));
    }

    #[test]
    fn malformed_parts_and_escapes_outside_the_subset_are_refused() {
        // Letter escapes (alone, in a class, as a range bound), a trailing
        // backslash, an unterminated class.
        assert_eq!(full_match(r"\q", "q"), None);
        assert_eq!(full_match(r"/a\", "/a"), None);
        assert_eq!(full_match(r"[\q]", "q"), None);
        assert_eq!(full_match(r"[a-\q]", "a"), None);
        assert_eq!(full_match("[ab", "a"), None);
        // Malformed counts.
        assert_eq!(full_match("a{,2}", "a"), None);
        assert_eq!(full_match("a{2x}", "aa"), None);
        assert_eq!(full_match("a{2,3x", "aa"), None);
        assert_eq!(full_match("a{2", "aa"), None);
        // Lookarounds, unbalanced parentheses, a quantifier with no atom.
        assert_eq!(full_match("(?=ab)", "ab"), None);
        assert_eq!(full_match("(ab", "ab"), None);
        assert_eq!(full_match("ab)", "ab"), None);
        assert_eq!(full_match("a|+", "a"), None);
    }

    #[test]
    fn lazy_quantifiers_escaped_range_bounds_a_trailing_dash_and_dot() {
        assert_eq!(full_match("a{2,3}?", "aa"), Some(true));
        assert_eq!(full_match("a+?", "aaa"), Some(true));
        assert_eq!(full_match("a??b", "ab"), Some(true));
        assert_eq!(full_match("a{1,3}", "aaaa"), Some(false));
        assert_eq!(full_match(r"[!-\/]+", "!/+"), Some(true));
        assert_eq!(full_match(r"[!-\/]+", "0"), Some(false));
        assert_eq!(full_match("[a-]+", "a-"), Some(true));
        assert_eq!(full_match("[a-]+", "b"), Some(false));
        // `.` is any character but a newline.
        assert_eq!(full_match("a.c", "a/c"), Some(true));
        assert_eq!(full_match("a.c", "a\nc"), Some(false));
    }

    #[test]
    fn pathological_patterns_give_up() {
        let text = format!("{}b", "a".repeat(40));
        assert_eq!(full_match("(a|a)*(a|a)*(a|a)*c", &text), None);
    }
}
