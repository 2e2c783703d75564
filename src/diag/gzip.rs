//! gzip for `/metrics`, as Go's promhttp does it: compressed when the
//! scraper accepts gzip (Prometheus always says `Accept-Encoding: gzip`),
//! and `Vary: Accept-Encoding` on every answer.
//!
//! Compression costs about as much CPU as rendering: a small body is
//! compressed on the serving loop; a large one (a scrape of many services)
//! on a thread of its own, so a scrape never stalls `/livez` behind it. At
//! most [`MAX_BACKGROUND`] such threads run at once; past that, the answer
//! goes out uncompressed (identity is always acceptable), so a flood of
//! scrapes costs the loop no more than it did before compression.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;

/// Bodies up to this size are compressed on the serving loop (well under a
/// millisecond at level 1).
pub const INLINE_MAX_BYTES: usize = 64 * 1024;
/// Compressions running off the loop at once.
pub const MAX_BACKGROUND: usize = 2;

static BACKGROUND: AtomicUsize = AtomicUsize::new(0);

/// Whether an `Accept-Encoding` value allows gzip (RFC 9110 §12.5.3):
/// `gzip` (or `x-gzip`) with a q-value above 0, or, gzip not named, `*`
/// with one. `gzip;q=0` refuses it. Malformed q-values count as 0.
pub fn accepted(accept_encoding: &str) -> bool {
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .map_or(1.0, |v| v.parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return q > 0.0;
        }
        if coding == "*" {
            star = Some(q > 0.0);
        }
    }
    star.unwrap_or(false)
}

/// `body`, gzip-compressed at level 1 (what matters for a scrape is time;
/// Prometheus text compresses 6 to 20 times even so: 1.87 MB to 92 KB at
/// 1000 identity services). Go's promhttp compresses at the default level
/// 6 (`gzip.NewWriter` in prometheus/promhttp/http.go of client_golang
/// 1.14, as Debian packages it): level 1 costs less CPU for a slightly
/// larger body.
pub fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

/// A place among the background compressions, released on drop.
pub struct Slot(());

impl Slot {
    /// `None` when [`MAX_BACKGROUND`] run already.
    pub fn try_take() -> Option<Slot> {
        BACKGROUND
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_BACKGROUND).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BACKGROUND.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_with_q_values() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "deflate, GZIP",
            "gzip;q=0.5",
            "gzip; q=1.0",
            "*",
            "br, *;q=0.1",
            "x-gzip",
        ] {
            assert!(accepted(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip;q=0, *",
            "*;q=0",
            "gzipper",
            "gzip;q=x",
        ] {
            assert!(!accepted(no), "{no}");
        }
    }

    #[test]
    fn compresses_to_valid_gzip() {
        use std::io::Read;
        let body = "tbot_service_health{service=\"a\"} 1\n".repeat(1000);
        let gz = compress(body.as_bytes()).unwrap();
        assert!(gz.len() * 5 < body.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn background_slots_are_bounded_and_released() {
        let held: Vec<Slot> = std::iter::from_fn(Slot::try_take).take(10).collect();
        assert_eq!(held.len(), MAX_BACKGROUND);
        drop(held);
        assert!(Slot::try_take().is_some());
    }
}
