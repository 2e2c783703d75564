//! `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat`, parsed once for
//! every reader: the `process_*` metrics (`metrics::process`) and the thread
//! list of `/debug/pprof/threads` (`diag::debug`).
//!
//! The line is `pid (comm) state ppid ...` (proc(5)); comm may itself hold
//! spaces and parentheses, so it runs from the first `(` to the last `)`
//! and the numbered fields start after that. proc(5) numbers fields from 1:
//! state is field 3.

/// The fields tbot reads from a stat line. Times are in clock ticks
/// (`_SC_CLK_TCK`, see `rustix::param::clock_ticks_per_second`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 2: the command name, as the kernel keeps it (15 bytes at most).
    pub comm: String,
    /// Field 3: `R`, `S`, `D`, `Z`, ...
    pub state: char,
    /// Fields 14 and 15 added: user and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 20: the process's thread count.
    pub threads: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    pub start_ticks: u64,
    /// Field 23: virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Field 24: resident set size, in pages.
    pub resident_pages: u64,
}

/// Parses one stat line; `None` if it is cut short or a field is not a
/// number.
pub fn parse(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    let f: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        comm,
        state: f.first()?.chars().next()?,
        cpu_ticks: field(14)?.saturating_add(field(15)?),
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses() {
        // A real /proc/<pid>/stat line (52 fields), with an odd name.
        let line = "4242 (tb (o) t) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 130 0 0 20 0 13 0 987654 842010624 2151 \
                    18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 \
                    0 0 0 0 0 0 0 0";
        assert_eq!(
            parse(line),
            Some(Stat {
                comm: "tb (o) t".to_string(),
                state: 'S',
                cpu_ticks: 380,
                threads: 13,
                start_ticks: 987654,
                virtual_bytes: 842010624,
                resident_pages: 2151,
            })
        );
    }

    #[test]
    fn a_thread_line_cut_after_rss() {
        let line = "4242 ((a) b)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 12345 1000 200 18446744073709551615";
        let s = parse(line).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.state, s.cpu_ticks),
            ("(a) b)", 'S', 300)
        );
    }

    #[test]
    fn truncated_or_garbage() {
        assert_eq!(parse("4242 (tbot"), None);
        assert_eq!(parse("4242 (tbot) S 1 2"), None);
        assert_eq!(parse("4242 (x) S 1 2"), None, "truncated");
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("4242 (x) "), None, "no state");
    }
}
