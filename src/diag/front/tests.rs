//! The front against a stand-in for tiny_http that the test drives: what
//! goes down a kept connection, and what happens when one closes with
//! requests on it ([`super::kept`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Front, Limits};
use crate::infra::progress::Beat;
use crate::infra::stop::{Stop, Stopper};

/// The test's end of a front's stop signal: dropping it stops the front;
/// [`StopEnd::poke`] is a watchdog poke.
struct StopEnd {
    _stopper: Stopper,
    stop: Stop,
}

impl StopEnd {
    fn poke(&self) {
        self.stop.wake();
    }
}

/// A front on a free port whose tiny_http is `sock`, with one kept
/// connection. Dropping the returned stream stops it.
fn front(sock: PathBuf) -> (SocketAddr, StopEnd, std::thread::JoinHandle<()>) {
    front_beating(sock, Beat::default())
}

/// [`front`], counting its turns on `beat`.
fn front_beating(sock: PathBuf, beat: Beat) -> (SocketAddr, StopEnd, std::thread::JoinHandle<()>) {
    front_with(sock, one_kept(), beat)
}

/// The default limits, with one kept connection.
fn one_kept() -> Limits {
    Limits {
        kept_connections: 1,
        ..Limits::default()
    }
}

/// [`front_beating`] with these limits.
fn front_with(
    sock: PathBuf,
    limits: Limits,
    beat: Beat,
) -> (SocketAddr, StopEnd, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stopper, stop_far) = Stop::new();
    let stop = StopEnd {
        _stopper: stopper,
        stop: stop_far.clone(),
    };
    let f = Front::new(
        (Some(listener), None),
        Arc::new(Mutex::new(sock)),
        Arc::new(|_: &std::path::Path| {}),
        limits,
        stop_far,
    )
    .unwrap()
    .beating(beat)
    .ready()
    .unwrap();
    // A stack glibc will not hand to a later, smaller thread once this
    // one ends (its cache reuses a stack up to 4 times the size asked):
    // infra::threads' test checks that service threads get small stacks.
    let t = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || f.run())
        .unwrap();
    (addr, stop, t)
}

/// Reads from `s` until `n` request heads came; returns their targets.
fn heads(s: &mut UnixStream, n: usize) -> Vec<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < n {
        let k = s.read(&mut chunk).expect("heads in time");
        assert!(
            k > 0,
            "the front closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..k]);
    }
    String::from_utf8(got)
        .unwrap()
        .split("\r\n\r\n")
        .filter(|h| !h.is_empty())
        .map(|h| h.split(' ').nth(1).unwrap().to_string())
        .collect()
}

fn answer(target: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}",
        target.len()
    )
}

/// `n` keep-alive clients, each sending `GET /readyz/c{i}`; returns them.
fn clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let req = format!("GET /readyz/c{i} HTTP/1.1\r\nHost: x\r\n\r\n");
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect()
}

/// Every client got the answer to its own request (the body names it).
fn check(clients: &mut [TcpStream]) {
    for (i, c) in clients.iter_mut().enumerate() {
        check_one(c, i);
    }
}

/// Client `i` got a 200 answer to its own request, `/readyz/c{i}`.
fn check_one(c: &mut TcpStream, i: usize) {
    let mut got = Vec::new();
    let want = format!("/readyz/c{i}");
    let mut chunk = [0u8; 1024];
    while !got.ends_with(want.as_bytes()) {
        let k = c.read(&mut chunk).unwrap();
        assert!(
            k > 0,
            "client {i} closed: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..k]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "client {i}: {got}");
}

/// The front's next connection to the stand-in (it fails, not hangs, when
/// none comes).
fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    panic!("the front did not connect within 10 s");
}

fn cleanup(sock: &std::path::Path) {
    let _ = std::fs::remove_dir_all(sock.parent().unwrap());
}

fn socket(tag: &str) -> (PathBuf, UnixListener) {
    let dir = std::env::temp_dir().join(format!("tbot-pipe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("http.sock");
    let l = UnixListener::bind(&sock).unwrap();
    (sock, l)
}

/// Requests that come together go down the one kept connection together,
/// and each answer, split by its Content-Length, reaches its own client.
/// (With one request at a time per connection, the stand-in never sees
/// the four heads: it fails there.)
#[test]
fn requests_that_come_together_are_pipelined() {
    let (sock, l) = socket("together");
    let (addr, stop, front) = front(sock.clone());
    let mut cs = clients(addr, 4);
    let mut up = accept(&l);
    let got = heads(&mut up, 4);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["/readyz/c0", "/readyz/c1", "/readyz/c2", "/readyz/c3"]
    );
    // The answers in the order of the requests, in one write.
    let all: String = got.iter().map(|t| answer(t)).collect();
    up.write_all(all.as_bytes()).unwrap();
    check(&mut cs);
    drop(stop);
    front.join().unwrap();
    cleanup(&sock);
}

/// A kept connection that closes with requests on it: the ones it did not
/// answer are sent again, in order, on a new one; the ones it answered are
/// not. (Checked to fail when they are not sent again: the clients get 502.)
#[test]
fn unanswered_requests_go_again_on_a_new_connection() {
    let (sock, l) = socket("again");
    let (addr, stop, front) = front(sock.clone());
    let mut cs = clients(addr, 4);
    let mut up = accept(&l);
    let got = heads(&mut up, 4);
    // Answer the first, then close with three unanswered.
    up.write_all(answer(&got[0]).as_bytes()).unwrap();
    drop(up);
    let mut again = accept(&l);
    let resent = heads(&mut again, 3);
    assert_eq!(resent, got[1..], "the unanswered ones, in order");
    let all: String = resent.iter().map(|t| answer(t)).collect();
    again.write_all(all.as_bytes()).unwrap();
    check(&mut cs);
    drop(stop);
    front.join().unwrap();
    cleanup(&sock);
}

/// A kept connection lost twice with the same request at its head fails
/// that request only (502): the ones pipelined behind it are sent again and
/// answered. (Checked to fail when every request on a lost connection is
/// blamed: then all four clients get 502.)
#[test]
fn a_lost_connection_fails_only_the_request_at_its_head() {
    let (sock, l) = socket("blame");
    let (addr, stop, front) = front(sock.clone());
    let mut cs = clients(addr, 4);
    let first = heads(&mut accept(&l), 4);
    let second = heads(&mut accept(&l), 4);
    assert_eq!(second, first, "all four again, in order");
    let mut third = accept(&l);
    let resent = heads(&mut third, 3);
    assert_eq!(resent, second[1..], "all but the one at the head");
    let all: String = resent.iter().map(|t| answer(t)).collect();
    third.write_all(all.as_bytes()).unwrap();
    let head: usize = second[0].trim_start_matches("/readyz/c").parse().unwrap();
    let mut got = String::new();
    cs[head].read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    for (i, c) in cs.iter_mut().enumerate().filter(|(i, _)| *i != head) {
        check_one(c, i);
    }
    drop(stop);
    front.join().unwrap();
    cleanup(&sock);
}

/// A client that gives up (its answer is late: 504) takes its kept
/// connection down, and every other request on it is sent again with none
/// blamed: not even the one at the head, already sent twice. (Checked to
/// fail with the head blamed, as before: its client got a 502.)
#[test]
fn a_late_client_blames_no_one_on_its_connection() {
    let (sock, l) = socket("late");
    let limits = Limits {
        half_close_grace: Duration::from_millis(300),
        ..one_kept()
    };
    let (addr, stop, front) = front_with(sock.clone(), limits, Beat::default());
    let mut cs = clients(addr, 3);
    // Lost once: the head is blamed (sent again once already).
    let first = heads(&mut accept(&l), 3);
    let mut second = accept(&l);
    assert_eq!(heads(&mut second, 3), first);
    // The client behind the head half-closes: its answer is late at once.
    let n = |t: &str| -> usize { t.trim_start_matches("/readyz/c").parse().unwrap() };
    let late = n(&first[1]);
    cs[late].shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    cs[late].read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 504"), "{got}");
    let mut third = accept(&l);
    let resent = heads(&mut third, 2);
    assert_eq!(resent, [first[0].clone(), first[2].clone()]);
    let all: String = resent.iter().map(|t| answer(t)).collect();
    third.write_all(all.as_bytes()).unwrap();
    for t in &resent {
        check_one(&mut cs[n(t)], n(t));
    }
    drop(second);
    drop(stop);
    front.join().unwrap();
    cleanup(&sock);
}

/// A page answered later (`/metrics`) never has a request queued behind it
/// on its connection: tiny_http would hold the serving loop until the
/// renderer answered it.
#[test]
fn nothing_is_pipelined_behind_a_page_answered_later() {
    let (sock, l) = socket("later");
    let (addr, stop, front) = front(sock.clone());
    let mut m = TcpStream::connect(addr).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut up = accept(&l);
    assert_eq!(heads(&mut up, 1), ["/metrics"]);
    let mut cs = clients(addr, 2);
    // Nothing more comes down this connection until /metrics is answered.
    up.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut chunk = [0u8; 64];
    assert!(up.read(&mut chunk).is_err(), "a request behind /metrics");
    up.set_nonblocking(false).unwrap();
    up.write_all(answer("/metrics").as_bytes()).unwrap();
    let got = heads(&mut up, 2);
    let all: String = got.iter().map(|t| answer(t)).collect();
    up.write_all(all.as_bytes()).unwrap();
    check(&mut cs);
    let mut body = Vec::new();
    let mut chunk = [0u8; 1024];
    while !body.ends_with(b"/metrics") {
        let k = m.read(&mut chunk).unwrap();
        assert!(k > 0);
        body.extend_from_slice(&chunk[..k]);
    }
    drop(stop);
    front.join().unwrap();
    cleanup(&sock);
}

/// Waits up to 10 s for `beat` to pass `n` turns.
fn turns_past(beat: &Beat, n: u64) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while beat.count() <= n {
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A wake-up on the stop descriptor (a systemd watchdog poke) turns the
/// idle front once and does not stop it; the stop does. (Checked to fail
/// with any event on the stop descriptor taken for a stop: the front is
/// gone.)
#[test]
fn a_poke_turns_the_idle_front_and_the_stop_stops_it() {
    let (sock, l) = socket("poke");
    let beat = Beat::default();
    let (addr, stop, front) = front_beating(sock.clone(), beat.clone());
    // Idle, with no client and no deadline: it sleeps without turning.
    std::thread::sleep(Duration::from_millis(100));
    let idle = beat.count();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(beat.count(), idle, "an idle front turned unpoked");
    for _ in 0..3 {
        let before = beat.count();
        stop.poke();
        assert!(turns_past(&beat, before), "a poke did not turn the front");
    }
    // Still serving.
    let mut cs = clients(addr, 1);
    let mut up = accept(&l);
    assert_eq!(heads(&mut up, 1), ["/readyz/c0"]);
    up.write_all(answer("/readyz/c0").as_bytes()).unwrap();
    check(&mut cs);
    drop(stop);
    front.join().unwrap();
    cleanup(&sock);
}
