//! Text that came from outside (a configuration file, a peer) shown in an
//! error or a log line: on one line, and bounded in length, whatever it
//! held (a key of a megabyte, a value with newlines that would forge a log
//! line of its own).

use std::fmt::Write;

/// How much of a message that quotes input is shown, in characters.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// `s` on one line (control characters written as `\n`, `\r`, `\t`,
/// `\u{..}`) and at most `max` characters, a cut one ending with
/// `… (N more bytes)`.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (shown, (i, c)) in s.char_indices().enumerate() {
        if shown >= max {
            let _ = write!(out, "… ({} more bytes)", s.len() - i);
            return out;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_bounded() {
        assert_eq!(one_line("a\nb\u{1b}c", 100), "a\\nb\\u{1b}c");
        let long = "x".repeat(1000);
        let cut = one_line(&long, 10);
        assert_eq!(cut, format!("{}… (990 more bytes)", "x".repeat(10)));
        assert_eq!(one_line("ok", 2), "ok");
    }
}
