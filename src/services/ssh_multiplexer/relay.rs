//! Dialing the target and relaying bytes both ways until both directions
//! have ended (an EOF passed on as a half-close; a client gone altogether
//! cuts the relay).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::infra::poll::{poll, PollFd, PollFlags};
use crate::infra::threads::within;
use rustix::net::{shutdown, Shutdown};

use crate::log;

use super::request::Target;

const RELAY_BUFFER: usize = 64 * 1024;
/// TCP keepalive on the target connection: a target that vanishes (host
/// down, network partition) while the relay is idle is noticed after
/// IDLE + INTERVAL × COUNT (2 minutes), and the relay ends.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_COUNT: u32 = 4;
/// Once the client has sent its EOF, how often the relay also checks
/// whether the target → client direction has ended (normally a hang-up on
/// the client socket says so at once).
const HANGUP_CHECK: Duration = Duration::from_secs(1);

impl Target {
    /// Resolves the host and connects to the first address that answers.
    pub fn dial(&self, timeout: Duration) -> Result<TcpStream, String> {
        let addrs = match &self.zone {
            Some(zone) => vec![self.scoped(zone)?],
            None => self.resolve(timeout)?,
        };
        self.connect(addrs, timeout)
    }

    /// The address of an IPv6 target with a zone: the zone is an interface
    /// index, or a name looked up now (interfaces come and go).
    fn scoped(&self, zone: &str) -> Result<SocketAddr, String> {
        let ip: std::net::Ipv6Addr = self
            .host
            .parse()
            .map_err(|_| format!("{}: not an IPv6 address", self.host))?;
        let scope = match zone.parse::<u32>() {
            Ok(index) => index,
            Err(_) => {
                use rustix::net::{socket, AddressFamily, SocketType};
                let sock = socket(AddressFamily::INET6, SocketType::DGRAM, None)
                    .map_err(|e| format!("looking up interface {zone:?}: {e}"))?;
                rustix::net::netdevice::name_to_index(&sock, zone).map_err(|e| {
                    format!("{self}: no network interface {zone:?} for the address's zone (RFC 4007): {e}")
                })?
            }
        };
        Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
            ip, self.port, 0, scope,
        )))
    }

    /// The target's addresses, looked up within `timeout`.
    fn resolve(&self, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
        // getaddrinfo(3) cannot be cut short, and its own bound (resolv.conf's
        // timeout × attempts × servers, per family) is not ours: it runs
        // beside, and the dial gives up on it after `timeout`.
        let (host, port) = (self.host.clone(), self.port);
        let lookup = move || (host.as_str(), port).to_socket_addrs().map(|a| a.collect());
        let addrs: Vec<SocketAddr> = within("mux-lookup", timeout, || false, lookup)
            .map_err(|_| {
                format!(
                    "resolving {}: no answer within {}",
                    self.host,
                    crate::infra::duration::format(timeout)
                )
            })?
            .map_err(|e: io::Error| format!("resolving {}: {e}", self.host))?;
        Ok(addrs)
    }

    /// Connects to the first of `addrs` that answers within `timeout`.
    fn connect(&self, addrs: Vec<SocketAddr>, timeout: Duration) -> Result<TcpStream, String> {
        let mut last = format!("resolving {}: no addresses", self.host);
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    // Interactive sessions: no Nagle delay on keystrokes.
                    let _ = s.set_nodelay(true);
                    if let Err(e) = keepalive(&s) {
                        log::warn(
                            "ssh multiplexer: cannot enable TCP keepalive; a vanished target may hold its relay",
                            &[("target", &self), ("error", &e)],
                        );
                    }
                    return Ok(s);
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    last = format!(
                        "connecting to {a}: no answer within {}",
                        crate::infra::duration::format(timeout)
                    )
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        Err(last)
    }
}

/// Turns on TCP keepalive with [`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`]
/// and [`KEEPALIVE_COUNT`].
fn keepalive(s: &TcpStream) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(s, true)?;
    sockopt::set_tcp_keepidle(s, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(s, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(s, KEEPALIVE_COUNT)?;
    Ok(())
}

/// Relays until both directions have ended. Returns the bytes sent up
/// (client → target) and down; an error only if the relay could not start
/// (then nothing has been relayed yet).
/// `claim` is given back once the relay holds its descriptors.
pub(super) fn relay(
    client: &UnixStream,
    target: &TcpStream,
    early: &[u8],
    claim: super::budget::Claim,
) -> Result<(u64, u64), String> {
    let mut client_w = client
        .try_clone()
        .map_err(|e| format!("relay: duplicating the client socket: {e}"))?;
    let mut target_r = target
        .try_clone()
        .map_err(|e| format!("relay: duplicating the target socket: {e}"))?;
    drop(claim);
    let down = crate::infra::threads::spawn("mux-conn-down", move || {
        let n = pump(&mut target_r, &mut client_w);
        end_direction(&n, &client_w, &target_r);
        n.unwrap_or(0)
    })
    .map_err(|e| format!("cannot start a relay thread: {e}"))?;
    let (mut from, mut to) = (client, target);
    let up = to
        .write_all(early)
        .and_then(|()| pump(&mut from, &mut to))
        .map(|n| n + early.len() as u64);
    end_direction(&up, target, client);
    if up.is_ok() {
        wait_for_down(&down, client, target);
    }
    let down = down.join().unwrap_or(0);
    Ok((up.unwrap_or(0), down))
}

/// After the client's EOF went up: waits until the target → client
/// direction has ended, or until the client is gone altogether (closed, or
/// shut down both ways; POLLHUP), in which case nothing will ever read what
/// the target sends: both sockets are cut, so that a target that stays
/// silent cannot hold the relay (its slot, threads and descriptors) forever.
/// A client that only shut down its sending side keeps receiving.
fn wait_for_down(down: &JoinHandle<u64>, client: &UnixStream, target: &TcpStream) {
    while !down.is_finished() {
        // Events 0: only POLLHUP and POLLERR, which poll(2) always reports.
        // (POLLHUP also comes once the down direction shuts the client's
        // write side: then both sides of it are shut. Cutting is harmless then.)
        let mut fds = [PollFd::new(client, PollFlags::empty())];
        match poll(&mut fds, Some(HANGUP_CHECK)) {
            Ok(_) if fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) => {
                end_direction(&Err(ErrorKind::BrokenPipe.into()), target, client);
                return;
            }
            Ok(_) => {}
            // Cannot watch (no memory for poll): wait for the target as before.
            Err(_) => return,
        }
    }
}

/// After one direction (`from` → `to`) ends: on EOF, pass the half-close
/// on; on an error, cut both sockets so that the other direction ends too.
fn end_direction(outcome: &io::Result<u64>, to: impl AsFd, from: impl AsFd) {
    // Errors (ENOTCONN once the peer is gone) change nothing here.
    match outcome {
        Ok(_) => {
            let _ = shutdown(to, Shutdown::Write);
        }
        Err(_) => {
            let _ = shutdown(to, Shutdown::Both);
            let _ = shutdown(from, Shutdown::Both);
        }
    }
}

/// Copies until EOF; returns the bytes copied.
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::tests::target;
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn targets_are_dialed_with_tcp_keepalive() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = target("127.0.0.1", port)
            .dial(Duration::from_secs(5))
            .unwrap();
        let get = |level, name| {
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt(2) into a c_int we own, its size given.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            value as u64
        };
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            KEEPALIVE_IDLE.as_secs()
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            KEEPALIVE_INTERVAL.as_secs()
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            u64::from(KEEPALIVE_COUNT)
        );
    }
}
