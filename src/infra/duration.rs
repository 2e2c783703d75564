//! Go-style durations: `90s`, `20m`, `1h30m`, `250ms`, `1.5h`.

use std::time::Duration;

const UNITS: [(&str, f64); 7] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Parses a Go duration. Negative durations are refused (none of tbot's
/// settings can be negative); `0` alone is allowed.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid duration {text:?}: {why} (use Go syntax such as 90s, 20m, 1h30m)"
        ))
    };
    let s = text.trim();
    if s.is_empty() {
        return bad("empty");
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return bad("negative");
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return bad("expected a number");
        }
        let number: f64 = match rest[..num_len].parse() {
            Ok(n) => n,
            Err(_) => return bad("malformed number"),
        };
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let Some((_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return if unit.is_empty() {
                bad("missing unit")
            } else {
                bad(&format!("unknown unit {unit:?}"))
            };
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e9 {
        return bad("too large");
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats like Go's `time.Duration.String()` for whole milliseconds and up.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}µs", d.as_micros())
        };
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let s = (ms % 60_000) as f64 / 1000.0;
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    out += &format!("{s}s");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ok =
            |s: &str, secs: f64| assert_eq!(parse(s), Ok(Duration::from_secs_f64(secs)), "{s}");
        ok("90s", 90.0);
        ok("20m", 1200.0);
        ok("1h30m", 5400.0);
        ok("1.5h", 5400.0);
        ok("250ms", 0.25);
        ok("0", 0.0);
        ok("1h0m0s", 3600.0);
        for bad in ["", "5", "5x", "-1s", "h", "1..5s", "s5", "1e3s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(100)), "100ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
