//! The configuration file's front door: checks on the raw text before the
//! YAML parser sees it.
//!
//! - A UTF-8 byte-order mark (U+FEFF, as Notepad and PowerShell save files)
//!   is allowed at the start of the stream (YAML 1.2 §5.2, as PyYAML and Go's
//!   yaml accept it) and dropped; anywhere else it is refused with its place.
//! - Nesting: the YAML parser takes quadratic time on deeply nested flow
//!   collections (`services: [[[[...` 40k deep: 2.3 s; a 1 MiB file:
//!   minutes). No valid configuration nests deeper than 5 levels
//!   (`services[0].destination.path` is 4), so one linear pass refuses
//!   anything past [`MAX_DEPTH`] with the line and column where it goes too
//!   deep. It counts flow collections (`[`, `{`) outside quoted scalars and
//!   comments, block indentation levels, and the `- `/`? `/`: ` indicators
//!   that open a nested block collection on the same line (`- - - - x`).
//!   Block scalars (`|`, `>`) are skipped. The count may be a little above
//!   the parser's own for odd but valid text; the limit leaves ample room.

/// The deepest nesting accepted, in collection levels.
pub const MAX_DEPTH: usize = 32;

const BOM: char = '\u{feff}';

/// A front-door refusal: 1-based line and column, and the message.
pub type Refusal = (usize, usize, String);

/// The text for the YAML parser (without a leading BOM), or why not.
pub fn admit(text: &str) -> Result<&str, Refusal> {
    let text = text.strip_prefix(BOM).unwrap_or(text);
    if let Some(at) = text.find(BOM) {
        let (line, col) = line_col(text, at);
        return Err((
            line,
            col,
            "a byte-order mark (U+FEFF) is allowed only at the start of the file".into(),
        ));
    }
    check_depth(text)?;
    Ok(text)
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// Where a line stands for the block structure.
#[derive(Default)]
struct Block {
    /// Indentation columns of the open block collections.
    indents: Vec<usize>,
    /// Inside a block scalar started at this indentation: more-indented
    /// (and blank) lines are its content.
    scalar: Option<usize>,
}

impl Block {
    /// A line of block structure at `indent` whose text after the
    /// indentation is `rest`: its depth, and the text after the indicators
    /// that open collections on the line itself.
    fn enter<'a>(&mut self, indent: usize, rest: &'a str) -> (usize, &'a str) {
        while self.indents.last().is_some_and(|&i| i > indent) {
            self.indents.pop();
        }
        if self.indents.last() != Some(&indent) {
            self.indents.push(indent);
        }
        let mut depth = self.indents.len();
        let mut body = rest;
        loop {
            let t = body.trim_start_matches(' ');
            match t.as_bytes() {
                [b'-' | b'?' | b':', b' ' | b'\t', ..] => {
                    depth += 1;
                    body = &t[2..];
                }
                _ => return (depth, body),
            }
        }
    }
}

/// Scanner state carried across lines.
#[derive(Clone, Copy, Default, PartialEq)]
enum Quote {
    #[default]
    None,
    Single,
    Double,
}

/// Flow collections and quoted scalars, which may span lines.
#[derive(Default)]
struct Flow {
    depth: usize,
    /// The block depth where the outermost open flow collection began.
    base: usize,
    quote: Quote,
}

impl Flow {
    /// Scans `body` (a line, or its part after block indicators) at block
    /// depth `base`; `Err(byte offset in body)` where it gets too deep.
    fn scan(&mut self, body: &str, base: usize) -> Result<(), usize> {
        let mut prev: Option<char> = None;
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match self.quote {
                Quote::Single => {
                    if c == '\'' {
                        if chars.peek().is_some_and(|&(_, d)| d == '\'') {
                            chars.next();
                        } else {
                            self.quote = Quote::None;
                        }
                    }
                }
                Quote::Double => match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => self.quote = Quote::None,
                    _ => {}
                },
                Quote::None => match c {
                    '#' if prev.is_none_or(|p| p == ' ' || p == '\t') => break,
                    '\'' if prev.is_none_or(|p| " \t[{,:".contains(p)) => {
                        self.quote = Quote::Single
                    }
                    '"' if prev.is_none_or(|p| " \t[{,:".contains(p)) => self.quote = Quote::Double,
                    '[' | '{' => {
                        if self.depth == 0 {
                            self.base = base;
                        }
                        self.depth += 1;
                        if self.base + self.depth > MAX_DEPTH {
                            return Err(i);
                        }
                    }
                    ']' | '}' => self.depth = self.depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = Some(c);
        }
        Ok(())
    }

    /// Outside any flow collection and quoted scalar: indentation counts.
    fn idle(&self) -> bool {
        self.depth == 0 && self.quote == Quote::None
    }
}

fn check_depth(text: &str) -> Result<(), Refusal> {
    let mut block = Block::default();
    let mut flow = Flow::default();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        if let Some(s) = block.scalar {
            if rest.is_empty() || indent > s {
                continue;
            }
            block.scalar = None;
        }
        let (mut body, mut base) = (rest, flow.base);
        if flow.idle() {
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            let (depth, after) = block.enter(indent, rest);
            body = after;
            if depth > MAX_DEPTH {
                return Err(too_deep(n, line.len() - body.len()));
            }
            base = depth;
        }
        if let Err(i) = flow.scan(body, base) {
            return Err(too_deep(n, line.len() - body.len() + i));
        }
        if flow.idle() && block_scalar_header(body) {
            block.scalar = Some(indent);
        }
    }
    Ok(())
}

/// Whether a line's content ends with a block scalar header (`|`, `>-`,
/// `|2+`), before any comment.
fn block_scalar_header(body: &str) -> bool {
    let code = match body.find(" #") {
        Some(i) => &body[..i],
        None => body,
    };
    let last = code.trim_end().rsplit([' ', '\t']).next().unwrap_or("");
    let mut b = last.bytes();
    matches!(b.next(), Some(b'|' | b'>')) && b.all(|c| c == b'-' || c == b'+' || c.is_ascii_digit())
}

fn too_deep(line_index: usize, byte_col: usize) -> Refusal {
    (
        line_index + 1,
        byte_col + 1,
        format!(
            "nested more than {MAX_DEPTH} levels deep; no valid configuration comes near that (the deepest needs 5)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "\
version: v2
storage: {type: directory, path: /var/lib/tbot}
services:
  - type: identity
    name: a   # a comment with [[[[ and {{{{
    principals: [deploy, '[x', \"{y\"]
    destination:
      type: directory
      path: /opt/x
  - type: ssh-multiplexer
    destination: {type: directory, path: '/opt/y'}
    note: |
      [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
      - - - - - - - - - - - - - - - - - - - - - -
";

    #[test]
    fn a_real_configuration_passes() {
        assert_eq!(admit(VALID), Ok(VALID));
    }

    #[test]
    fn a_bom_is_dropped_at_the_start_only() {
        let with = format!("{BOM}{VALID}");
        assert_eq!(admit(&with), Ok(VALID));
        let inside = format!("version: v2\nstorage: x{BOM}\n");
        let (line, col, msg) = admit(&inside).unwrap_err();
        assert_eq!((line, col), (2, 11));
        assert!(msg.contains("byte-order mark"), "{msg}");
    }

    fn refused_at(text: &str) -> (usize, usize) {
        let (line, col, msg) = admit(text).unwrap_err();
        assert!(msg.contains("nested more than"), "{msg}");
        (line, col)
    }

    #[test]
    fn deep_flow_nesting_is_refused_with_its_place() {
        let ok = format!("services: {}{}\n", "[".repeat(31), "]".repeat(31));
        assert!(admit(&ok).is_ok());
        let deep = format!(
            "version: v2\nservices: {}{}\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        // The top mapping is level 1: the 32nd `[` is level 33.
        assert_eq!(refused_at(&deep), (2, 11 + 31));
        let braces = format!("a:\n  b: {}\n", "{x: ".repeat(100));
        assert_eq!(refused_at(&braces).0, 2);
        // Spread over lines, the count goes on.
        let lines = format!("a: {}\n", "[\n".repeat(50));
        assert_eq!(refused_at(&lines).0, 32);
    }

    #[test]
    fn deep_block_nesting_is_refused_with_its_place() {
        let compact = format!("services:\n  {}x\n", "- ".repeat(100));
        assert_eq!(refused_at(&compact).0, 2);
        let mut indented = String::new();
        for i in 0..40 {
            indented += &format!("{}k{i}:\n", " ".repeat(i));
        }
        assert_eq!(refused_at(&indented), (33, 33));
    }

    #[test]
    fn quotes_and_comments_hide_brackets() {
        let text = format!(
            "a: '{0}'\nb: \"{0}\\\"{0}\"\nc: x # {0}\nd: \"multi\n  line {0}\"\ne: it's {1}\n",
            "[".repeat(100),
            "x".repeat(3)
        );
        assert!(admit(&text).is_ok(), "{:?}", admit(&text));
    }

    #[test]
    fn a_mebibyte_of_nesting_is_refused_in_one_pass() {
        let deep = format!("services: {}", "[".repeat(1 << 20));
        assert_eq!(refused_at(&deep), (1, 11 + 31));
        let deep = format!("services:\n{}", "- ".repeat(1 << 19));
        assert_eq!(refused_at(&deep).0, 2);
    }
}
