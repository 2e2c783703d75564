//! TLS on the front's connections (rustls with its `ring` provider; no
//! crypto of tbot's own), within the front's one polling thread.
//!
//! - [`Client`]: a client's socket, plain or TLS. A TLS one reads and
//!   writes through a rustls `ServerConnection` on the nonblocking socket:
//!   the handshake happens inside the `Head` state's reads, so it costs a
//!   buffer and no thread, counts toward the head timeout, and a client
//!   that stalls in it is closed (or evicted) as one that stalls in its
//!   head. Writes stop at rustls' buffer limit (64 KiB of records), so a
//!   large answer to a slow reader is held once, as for plain HTTP.
//! - [`TlsSource`]: the rustls configuration for new connections, from the
//!   web configuration's `tls_server_config`. The certificate, key and
//!   client CA files are looked at (stat(2): inode, size, modification and
//!   change times) at every handshake and read again when one changed, as
//!   exporter-toolkit reads them for every handshake: a certificate renewed
//!   on disk (cert-manager swaps a symlink; a cron job renames a file) is
//!   used from the next connection on, without a restart or a reload. Files
//!   that do not load (half-written, a key that does not match) change
//!   nothing: the last good configuration stays, with one warning per
//!   change seen.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, TlsConfig, TlsVersion};
use crate::infra::sockets::drained;
use crate::log;

/// A client's connection: plain TCP, TLS over it, or a peer of the local
/// debug socket (plain, [`super::local`]).
pub(crate) enum Client {
    Plain(TcpStream),
    Tls(Box<Tls>),
    Local(UnixStream),
}

pub(crate) struct Tls {
    sock: TcpStream,
    conn: ServerConnection,
}

impl Client {
    /// `sock` as it comes from accept(), with TLS when `config` is given.
    pub(super) fn new(sock: TcpStream, config: Option<Arc<ServerConfig>>) -> io::Result<Client> {
        let Some(config) = config else {
            return Ok(Client::Plain(sock));
        };
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Client::Tls(Box::new(Tls { sock, conn })))
    }

    /// Reads and drops what the socket under it has, records or not (a
    /// lingering close; see [`crate::infra::sockets::drained`]).
    pub(super) fn drained(&self, total: &mut usize, max: usize) -> bool {
        match self {
            Client::Plain(s) => drained(s, total, max),
            Client::Tls(t) => drained(&t.sock, total, max),
            Client::Local(s) => drained(s, total, max),
        }
    }

    /// Whether bytes of the client's stream were decrypted and not read yet:
    /// epoll cannot tell, so the front steps such a connection without an
    /// event.
    pub(super) fn has_plaintext(&mut self) -> bool {
        match self {
            Client::Plain(_) | Client::Local(_) => false,
            Client::Tls(t) => t
                .conn
                .process_new_packets()
                .is_ok_and(|s| s.plaintext_bytes_to_read() > 0),
        }
    }

    /// Whether TLS records wait to be written (a handshake flight the
    /// socket did not take at once): the socket must wait for writability
    /// too.
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Client::Plain(_) | Client::Local(_) => false,
            Client::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Writes what TLS holds; true once nothing is left (always for plain).
    pub(super) fn flushed(&mut self) -> bool {
        match self {
            Client::Plain(_) | Client::Local(_) => true,
            Client::Tls(t) => {
                let _ = t.flush();
                !t.conn.wants_write()
            }
        }
    }

    /// Whether the client showed a certificate that verified against
    /// `client_ca_file` (rustls refuses a handshake with one that does not).
    pub(super) fn has_certificate(&self) -> bool {
        match self {
            Client::Plain(_) | Client::Local(_) => false,
            Client::Tls(t) => t.conn.peer_certificates().is_some_and(|c| !c.is_empty()),
        }
    }

    /// Shuts down the sending side; TLS says `close_notify` first.
    pub(super) fn shutdown_write(&mut self) {
        let _ = match self {
            Client::Plain(s) => s.shutdown(Shutdown::Write),
            Client::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.flush();
                t.sock.shutdown(Shutdown::Write)
            }
            Client::Local(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Tls {
    /// Writes TLS records until none are left or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock)? == 0 {
                return Err(ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

impl Read for Client {
    /// Plaintext from the client. For TLS: records are read and decrypted
    /// until some plaintext comes out (handshake messages are answered on
    /// the way); `WouldBlock` when the socket has no more. A TLS error (a
    /// client that speaks plain HTTP, a certificate that does not verify)
    /// sends rustls' alert and is an `InvalidData` error: the front closes.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Client::Plain(s) => return s.read(out),
            Client::Local(s) => return s.read(out),
            Client::Tls(t) => t,
        };
        let _ = t.flush();
        loop {
            match t.conn.reader().read(out) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if t.conn.read_tls(&mut t.sock)? == 0 {
                return Ok(0);
            }
            let processed = t.conn.process_new_packets();
            // The answer to a handshake message, or the alert of an error.
            let _ = t.flush();
            if let Err(e) = processed {
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for Client {
    /// Takes plaintext only once earlier records are out, and no more than
    /// rustls' buffer limit: `WouldBlock` while the client has not taken
    /// what it was sent. The last records may still be pending when all
    /// the plaintext is taken: see [`Client::flushed`].
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Client::Plain(s) => return s.write(buf),
            Client::Local(s) => return s.write(buf),
            Client::Tls(t) => t,
        };
        t.flush()?;
        let n = t.conn.writer().write(buf)?;
        match t.flush() {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ if n == 0 && !buf.is_empty() => Err(ErrorKind::WouldBlock.into()),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Client::Plain(_) | Client::Local(_) => Ok(()),
            Client::Tls(t) => t.flush(),
        }
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Client::Plain(s) => s.as_fd(),
            Client::Tls(t) => t.sock.as_fd(),
            Client::Local(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// What identifies a file's contents cheaply: inode, size, modification
/// and change times (None: it cannot be looked at).
type Stamp = Vec<Option<(u64, u64, i64, i64, i64, i64)>>;

/// The rustls configuration for new connections, kept in line with the
/// files on disk.
pub(crate) struct TlsSource {
    tls: TlsConfig,
    /// A required client certificate is checked per request, not at the
    /// handshake (some paths need none).
    per_request: bool,
    /// Served; the last configuration that loaded.
    current: Arc<ServerConfig>,
    /// The files as `current` was read from them.
    stamp: Stamp,
    /// The files as they were when they last failed to load (not tried
    /// again until they change).
    failed: Option<Stamp>,
}

impl TlsSource {
    /// Reads the files `tls` names. `per_request`: a required client
    /// certificate is optional at the handshake and enforced per request
    /// (when `diag_unauthenticated_paths` lists some). Errors say which
    /// file and why.
    pub(crate) fn load(tls: &TlsConfig, per_request: bool) -> Result<TlsSource, String> {
        let stamp = stamp(tls);
        let current = server_config(tls, per_request)?;
        Ok(TlsSource {
            tls: tls.clone(),
            per_request,
            current,
            stamp,
            failed: None,
        })
    }

    /// The configuration for a new connection: read again first if a file
    /// changed since (three stat(2) calls when none did).
    pub(crate) fn config(&mut self) -> Arc<ServerConfig> {
        let now = stamp(&self.tls);
        if now != self.stamp && self.failed.as_ref() != Some(&now) {
            match server_config(&self.tls, self.per_request) {
                Ok(c) => {
                    self.current = c;
                    self.stamp = now;
                    self.failed = None;
                    log::info(
                        "diagnostics TLS certificate reloaded from disk",
                        &[("cert_file", &self.tls.cert_file.display())],
                    );
                }
                Err(e) => {
                    self.failed = Some(now);
                    log::warn(
                        "diagnostics TLS files changed but do not load; still serving the previous certificate",
                        &[("error", &e)],
                    );
                }
            }
        }
        self.current.clone()
    }
}

fn stamp(tls: &TlsConfig) -> Stamp {
    let files = [
        Some(&tls.cert_file),
        Some(&tls.key_file),
        tls.client_ca_file.as_ref(),
    ];
    files
        .iter()
        .flatten()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| {
                (
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

fn pem_error(file: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", file.display())
}

/// A rustls server configuration from the files `tls` names.
fn server_config(tls: &TlsConfig, per_request: bool) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| pem_error(&tls.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&tls.cert_file, e))?;
    if certs.is_empty() {
        return Err(pem_error(&tls.cert_file, "no PEM certificate in it"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| pem_error(&tls.key_file, e))?;
    // ring: deprecated in rustls 0.23.48 for lacking post-quantum key
    // exchange (X25519MLKEM768), which aws-lc-rs has; kept for now (a C
    // compiler builds it; see Cargo.toml).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<_> = [
        (TlsVersion::Tls13, &rustls::version::TLS13),
        (TlsVersion::Tls12, &rustls::version::TLS12),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, s)| s)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (tls.client_auth, &tls.client_ca_file) {
        (ClientAuth::NoClientCert, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem_error(ca, e))? {
                let c = c.map_err(|e| pem_error(ca, e))?;
                roots.add(c).map_err(|e| pem_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            // Required: at the handshake, or per request by the front when
            // some paths need none (see `auth`).
            let verifier = match auth {
                ClientAuth::RequireAndVerifyClientCert if !per_request => verifier,
                _ => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| pem_error(ca, e))?)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {}: {e}",
            tls.cert_file.display(),
            tls.key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
