//! gzip for `/metrics`, as Go's promhttp does it: compressed when the
//! scraper accepts gzip (Prometheus always says `Accept-Encoding: gzip`),
//! and `Vary: Accept-Encoding` on every answer.
//!
//! Compression costs about as much CPU as rendering: both run on the
//! renderer thread (`render.rs`), never on the serving loop.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

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
}
