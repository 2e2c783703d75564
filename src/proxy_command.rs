//! `tbot ssh-multiplexer-proxy-command SOCKET TARGET`: OpenSSH's
//! `ProxyCommand` with `ProxyUseFdpass yes`.
//!
//! It connects to the multiplexer's socket, writes `TARGET\0`, and hands the
//! connected socket to ssh over its stdout (a Unix socket ssh made) with
//! SCM_RIGHTS, as OpenSSH's own `mm_send_fd` does: one data byte carrying the
//! descriptor. Then it exits, so no helper process lives on per session; ssh
//! talks to the multiplexer directly.
//!
//! Before passing the socket it waits (at most [`REPLY_WAIT`]) for the first
//! bytes of the reply and peeks at them without consuming them: if the
//! multiplexer refused the request (its one error line, see
//! `services::ssh_multiplexer`), the reason is printed here and the command
//! exits 1, so the user reads "connection refused" rather than a bad SSH
//! banner. An SSH server speaks first, so on success this wait lasts one
//! connection setup; for a target that waits for the client, the socket is
//! passed on when the wait ends.

use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::fs::FileType;
use rustix::io::Errno;
use rustix::net::{recv, sendmsg, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::exit;
use crate::infra::poll::{wait_readable, wait_writable};
use crate::services::ssh_multiplexer::{DIAL_TIMEOUT, ERROR_PREFIX, MAX_REQUEST};

/// Longest wait for the multiplexer's first reply: its dial timeout and then some.
pub const REPLY_WAIT: Duration = DIAL_TIMEOUT.saturating_add(Duration::from_secs(5));

pub fn run(socket: &Path, target: &str) -> i32 {
    match proxy(socket, target) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("tbot: ssh-multiplexer-proxy-command: {e}");
            exit::FAILURE
        }
    }
}

fn proxy(socket: &Path, target: &str) -> Result<(), String> {
    if target.is_empty() || target.contains('\0') || target.len() >= MAX_REQUEST {
        return Err(format!(
            "invalid TARGET {target:?}: expected host:port, at most {} bytes",
            MAX_REQUEST - 1
        ));
    }
    let stdout = io::stdout();
    let stdout = stdout.as_fd();
    if !is_socket(stdout).map_err(|e| format!("stdout: {e}"))? {
        return Err(
            "stdout is not a socket: this command passes its connection to ssh \
             (ProxyCommand with ProxyUseFdpass yes, as in the ssh_config the \
             ssh-multiplexer service writes)"
                .into(),
        );
    }
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        format!(
            "{}: {e} (is tbot running with an ssh-multiplexer service there?)",
            socket.display()
        )
    })?;
    conn.write_all(format!("{target}\0").as_bytes())
        .map_err(|e| format!("{}: sending the target: {e}", socket.display()))?;
    if let Some(reason) = refusal(&conn, REPLY_WAIT) {
        return Err(reason);
    }
    send_fd(stdout, conn.as_fd())
        .map_err(|e| format!("passing the connection to ssh over stdout: {e}"))
}

fn is_socket(fd: impl AsFd) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(FileType::from_raw_mode(st.st_mode) == FileType::Socket)
}

/// Waits up to `wait` for the first reply bytes and returns the
/// multiplexer's reason if they are its error line. Leaves them unread.
fn refusal(conn: &UnixStream, wait: Duration) -> Option<String> {
    if !wait_readable(conn, wait).unwrap_or(false) {
        return None;
    }
    let mut buf = [0u8; 1024];
    let (n, _) = recv(conn, &mut buf, RecvFlags::PEEK | RecvFlags::DONTWAIT).ok()?;
    let head = buf.get(..n)?;
    let reason = head.strip_prefix(ERROR_PREFIX.as_bytes())?;
    let line = reason.split(|&b| b == b'\n').next().unwrap_or_default();
    Some(String::from_utf8_lossy(line).into_owned())
}

/// Sends `fd` over the Unix socket `over` with SCM_RIGHTS and one data byte,
/// as OpenSSH's `mm_send_fd` (which `mm_receive_fd` in ssh expects).
pub fn send_fd(over: BorrowedFd, fd: BorrowedFd) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control buffer too small for SCM_RIGHTS"));
    }
    loop {
        match sendmsg(
            over,
            &[IoSlice::new(&[0])],
            &mut control,
            SendFlags::empty(),
        ) {
            Ok(1) => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("sendmsg sent {n} bytes, not 1"))),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait_writable(over)?,
            Err(e) => return Err(e.into()),
        }
    }
}
