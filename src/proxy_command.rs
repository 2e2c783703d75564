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

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::exit;
use crate::services::ssh_multiplexer::{
    wait_readable, wait_writable, DIAL_TIMEOUT, ERROR_PREFIX, MAX_REQUEST,
};

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
    let stdout = io::stdout().as_raw_fd();
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
    send_fd(stdout, conn.as_raw_fd())
        .map_err(|e| format!("passing the connection to ssh over stdout: {e}"))
}

fn is_socket(fd: RawFd) -> io::Result<bool> {
    // SAFETY: fstat fills the zeroed stat we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// Waits up to `wait` for the first reply bytes and returns the
/// multiplexer's reason if they are its error line. Leaves them unread.
fn refusal(conn: &UnixStream, wait: Duration) -> Option<String> {
    if !wait_readable(conn.as_raw_fd(), wait).unwrap_or(false) {
        return None;
    }
    let mut buf = [0u8; 1024];
    // SAFETY: recv into a buffer we own, of the length given.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let head = buf.get(..usize::try_from(n).ok()?)?;
    let reason = head.strip_prefix(ERROR_PREFIX.as_bytes())?;
    let line = reason.split(|&b| b == b'\n').next().unwrap_or_default();
    Some(String::from_utf8_lossy(line).into_owned())
}

/// Sends `fd` over the Unix socket `over` with SCM_RIGHTS and one data byte,
/// as OpenSSH's `mm_send_fd` (which `mm_receive_fd` in ssh expects).
pub fn send_fd(over: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    if space > std::mem::size_of_val(&control) {
        return Err(io::Error::other("control buffer too small for SCM_RIGHTS"));
    }
    // SAFETY: a zeroed msghdr is valid; every pointer set below points into
    // locals that outlive the sendmsg calls, with the lengths given.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control has room for one header and one int (checked above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
    }
    loop {
        // SAFETY: msg is fully initialised (see above).
        let n = unsafe { libc::sendmsg(over, &msg, 0) };
        match n {
            1 => return Ok(()),
            -1 => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => wait_writable(over)?,
                    _ => return Err(e),
                }
            }
            n => return Err(io::Error::other(format!("sendmsg sent {n} bytes, not 1"))),
        }
    }
}
