//! One line per event on stderr, as text (`time LEVEL msg key=value ...`) or
//! JSON (`{"time":..,"level":..,"msg":..,"key":..}`).
//!
//! When stderr is the journal ([`crate::infra::systemd::journal`]), every line, text
//! or JSON, starts with its sd-daemon(3) priority prefix: `<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug. journald takes the prefix off and files
//! the line under that priority (so `journalctl -p warning` works); the
//! message it stores is the line without it, so a JSON line stays one JSON
//! object. Anywhere else (a terminal, a file, a pipe) no prefix is written.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

mod bridge;
pub mod follow;
mod sink;

pub use sink::flush;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

static JSON: AtomicBool = AtomicBool::new(false);
/// 0 debug, 1 info.
static MIN_LEVEL: AtomicU8 = AtomicU8::new(1);

/// Sets the line format and whether debug lines are written; also makes
/// dependencies' `log` records tbot lines (see `bridge`).
pub fn configure(format: Format, debug: bool) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
    MIN_LEVEL.store(if debug { 0 } else { 1 }, Ordering::Relaxed);
    bridge::install();
}

/// Whether debug lines are written (`--debug`, a runtime level, or a log
/// follower that asked for them): work done only for them can be skipped.
pub fn debug_enabled() -> bool {
    enabled(0)
}

/// Whether a line at `level` (0 debug … 3 error) is written somewhere:
/// on stderr, or to a follower ([`follow`]).
fn enabled(level: u8) -> bool {
    level >= MIN_LEVEL.load(Ordering::Relaxed) || follow::wants(level)
}

/// The level lines are written to stderr at (0 debug … 3 error): set by
/// `configure` (start, and every reload: `-d` or `debug:` make it debug,
/// else info) and by [`set_level`] in between.
pub fn level() -> u8 {
    MIN_LEVEL.load(Ordering::Relaxed)
}

/// Sets the level at runtime (the debug socket's `PUT /log-level`), from
/// the next line on, until the next `configure` (a reload).
pub fn set_level(level: u8) {
    MIN_LEVEL.store(level.min(3), Ordering::Relaxed);
}

/// The name of a level, as `GET /log-level` answers it.
pub fn level_name(level: u8) -> &'static str {
    match level {
        0 => "debug",
        1 => "info",
        2 => "warn",
        _ => "error",
    }
}

/// A level by name, ASCII case ignored (`debug`, `info`, `warn` or
/// `warning`, `error`; Teleport's clients send `DEBUG` and the like).
pub fn parse_level(name: &str) -> Option<u8> {
    match name.trim().to_ascii_lowercase().as_str() {
        "debug" => Some(0),
        "info" => Some(1),
        "warn" | "warning" => Some(2),
        "error" => Some(3),
        _ => None,
    }
}

pub type Fields<'a> = &'a [(&'a str, &'a dyn Field)];

/// A value a log line carries: text in text lines; in JSON lines, numbers
/// and booleans are JSON numbers and booleans, everything else a string.
pub trait Field: Display {
    fn json(&self) -> serde_json::Value {
        self.to_string().into()
    }
}

macro_rules! json_as_is {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn json(&self) -> serde_json::Value {
                serde_json::json!(*self)
            }
        }
    )*};
}
json_as_is!(bool, u8, u16, u32, u64, usize, i32, i64, f64);

macro_rules! json_as_text {
    ($($t:ty),*) => {$( impl Field for $t {} )*};
}
json_as_text!(
    str,
    String,
    char,
    std::io::Error,
    std::net::SocketAddr,
    std::path::Display<'_>,
    std::fmt::Arguments<'_>
);

impl<T: Field + ?Sized> Field for &T {
    fn json(&self) -> serde_json::Value {
        (**self).json()
    }
}

/// A line at `level` (0 debug … 3 error).
fn at_level(level: u8, msg: &str, fields: Fields) {
    match level {
        0 => debug(msg, fields),
        1 => info(msg, fields),
        2 => warn(msg, fields),
        _ => error(msg, fields),
    }
}

pub fn debug(msg: &str, fields: Fields) {
    emit(0, "DEBUG", msg, fields)
}
pub fn info(msg: &str, fields: Fields) {
    emit(1, "INFO", msg, fields)
}
pub fn warn(msg: &str, fields: Fields) {
    emit(2, "WARN", msg, fields)
}
pub fn error(msg: &str, fields: Fields) {
    emit(3, "ERROR", msg, fields)
}

/// The sd-daemon(3) prefix (syslog(3) priority) of tbot's level `level`.
fn priority_prefix(level: u8) -> &'static str {
    match level {
        0 => "<7>",
        1 => "<6>",
        2 => "<4>",
        _ => "<3>",
    }
}

fn emit(level: u8, name: &str, msg: &str, fields: Fields) {
    if !enabled(level) {
        return;
    }
    let mut line = String::new();
    let prefix = if crate::infra::systemd::journal::stderr_is_journal() {
        priority_prefix(level)
    } else {
        ""
    };
    line.push_str(prefix);
    line += &render(
        JSON.load(Ordering::Relaxed),
        SystemTime::now(),
        name,
        msg,
        fields,
    );
    line.push('\n');
    // Followers first: `line` goes to the writer.
    follow::publish(level, &line.as_bytes()[prefix.len()..]);
    if level >= MIN_LEVEL.load(Ordering::Relaxed) {
        sink::write(line);
    }
}

/// The warning the log writer adds once stderr takes lines again after
/// `dropped` of them did not fit its queue.
fn dropped_line(dropped: u64) -> String {
    let mut line = String::new();
    if crate::infra::systemd::journal::stderr_is_journal() {
        line.push_str(priority_prefix(2));
    }
    line += &render(
        JSON.load(Ordering::Relaxed),
        SystemTime::now(),
        "WARN",
        "log lines dropped: standard error was not being read",
        &[("dropped", &dropped)],
    );
    line.push('\n');
    line
}

/// The line on stderr for an error that ends the process (usage,
/// configuration, start-up): `tbot: MSG` in the text format; in the JSON
/// format one JSON object like every other line
/// (`{"time":..,"level":"error","msg":MSG,"fatal":true}`), so that a JSON
/// stream stays JSON to its end. It starts with the error priority `<3>` when
/// stderr is the journal, so that `journalctl -p err` shows why tbot did not
/// start. Written whatever the level: a fatal error is never filtered out.
pub fn fatal(msg: &str) {
    let prefix = if crate::infra::systemd::journal::stderr_is_journal() {
        priority_prefix(3)
    } else {
        ""
    };
    // One line, always: the message may quote input.
    let msg = crate::infra::quote::one_line(msg, 4096);
    let line = if JSON.load(Ordering::Relaxed) {
        render(true, SystemTime::now(), "ERROR", &msg, &[("fatal", &true)])
    } else {
        format!("tbot: {msg}")
    };
    sink::write_fatal(format!("{prefix}{line}\n"));
}

/// Sets the line format alone, before anything else is known (the command
/// line asked for JSON but could not be parsed): fatal errors come in it.
pub fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

fn render(json: bool, now: SystemTime, level: &str, msg: &str, fields: Fields) -> String {
    let time = crate::infra::timefmt::rfc3339_millis(now);
    if json {
        // time, level and msg first, then the fields in the caller's order
        // (a JSON object's keys are unordered, but people read these too).
        let json = |v: serde_json::Value| v.to_string();
        let mut out = format!(
            "{{\"time\":{},\"level\":{},\"msg\":{}",
            json(time.into()),
            json(level.to_ascii_lowercase().into()),
            json(msg.into())
        );
        for (k, v) in fields {
            if matches!(*k, "time" | "level" | "msg") {
                continue;
            }
            let _ = write!(out, ",{}:{}", json((*k).into()), json(v.json()));
        }
        out.push('}');
        out
    } else {
        let mut out = format!("{time} {level:<5} {msg}");
        for (k, v) in fields {
            let v = v.to_string();
            let plain = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '=');
            if plain {
                let _ = write!(out, " {k}={v}");
            } else {
                let _ = write!(out, " {k}={v:?}");
            }
        }
        out
    }
}

/// Rate limit for warnings the network can trigger at will: true at most
/// once a second, however hard the port is hit.
pub fn once_a_second(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_quotes_values_that_need_it() {
        let line = render(
            false,
            SystemTime::UNIX_EPOCH,
            "INFO",
            "hello",
            &[("a", &"b"), ("why", &"x y"), ("n", &3)],
        );
        assert_eq!(
            line,
            r#"1970-01-01T00:00:00.000Z INFO  hello a=b why="x y" n=3"#
        );
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(
            [0, 1, 2, 3].map(priority_prefix),
            ["<7>", "<6>", "<4>", "<3>"]
        );
    }

    #[test]
    fn json_is_one_object_per_line() {
        let line = render(
            true,
            SystemTime::UNIX_EPOCH,
            "WARN",
            "m\n",
            &[("k", &"v\"")],
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "m\n");
        assert_eq!(v["k"], "v\"");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_keeps_numbers_and_booleans_and_the_callers_order() {
        let err = std::io::Error::from_raw_os_error(13);
        let line = render(
            true,
            SystemTime::UNIX_EPOCH,
            "INFO",
            "m",
            &[
                ("services", &3usize),
                ("debug", &false),
                ("ratio", &0.5),
                ("port", &"3001"),
                ("error", &err),
            ],
        );
        assert_eq!(
            line,
            r#"{"time":"1970-01-01T00:00:00.000Z","level":"info","msg":"m","services":3,"debug":false,"ratio":0.5,"port":"3001","error":"Permission denied (os error 13)"}"#
        );
    }
}
