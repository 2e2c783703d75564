//! Records from dependencies that log through the `log` crate (tiny_http
//! logs its accept failures with `log::error!`) become tbot log lines at
//! their own level: `error` ERROR, `warn` WARN, `info` INFO, `debug` and
//! `trace` DEBUG. The record's text is the message; `from` names its
//! target (the dependency's module path).

use ::log::{Level, LevelFilter, Metadata, Record};

struct Bridge;

static BRIDGE: Bridge = Bridge;

/// tbot's level (0 debug … 3 error) for a record's level.
fn level_of(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 2,
        Level::Info => 1,
        Level::Debug | Level::Trace => 0,
    }
}

impl ::log::Log for Bridge {
    fn enabled(&self, metadata: &Metadata) -> bool {
        super::enabled(level_of(metadata.level()))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let from = record.target();
        super::at_level(level_of(record.level()), &text, &[("from", &from)]);
    }

    fn flush(&self) {}
}

/// Installs the bridge as the `log` crate's logger (once; later calls
/// change nothing).
pub fn install() {
    if ::log::set_logger(&BRIDGE).is_ok() {
        ::log::set_max_level(LevelFilter::Trace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_level() {
        assert_eq!(
            [
                Level::Error,
                Level::Warn,
                Level::Info,
                Level::Debug,
                Level::Trace
            ]
            .map(level_of),
            [3, 2, 1, 0, 0]
        );
        install();
        install();
        assert_eq!(::log::max_level(), LevelFilter::Trace);
        // Errors always pass; debug records only in debug mode.
        let error = Metadata::builder().level(Level::Error).build();
        assert!(::log::logger().enabled(&error));
    }
}
