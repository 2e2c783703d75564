//! One line per event on stderr, as text (`time LEVEL msg key=value ...`) or
//! JSON (`{"time":..,"level":..,"msg":..,"key":..}`).

use std::fmt::{Display, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::SystemTime;

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

pub fn configure(format: Format, debug: bool) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
    MIN_LEVEL.store(if debug { 0 } else { 1 }, Ordering::Relaxed);
}

pub type Fields<'a> = &'a [(&'a str, &'a dyn Display)];

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

fn emit(level: u8, name: &str, msg: &str, fields: Fields) {
    if level < MIN_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let mut line = render(
        JSON.load(Ordering::Relaxed),
        SystemTime::now(),
        name,
        msg,
        fields,
    );
    line.push('\n');
    // A closed stderr must not take the daemon down: drop the line.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn render(json: bool, now: SystemTime, level: &str, msg: &str, fields: Fields) -> String {
    let time = crate::timefmt::rfc3339_millis(now);
    if json {
        let mut obj = serde_json::Map::new();
        obj.insert("time".into(), time.into());
        obj.insert("level".into(), level.to_ascii_lowercase().into());
        obj.insert("msg".into(), msg.into());
        for (k, v) in fields {
            obj.insert((*k).into(), v.to_string().into());
        }
        serde_json::Value::Object(obj).to_string()
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
}
