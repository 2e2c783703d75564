//! One turn of the front's loop: the poll set built from every
//! connection's state, and the walk over what it reported.
//!
//! The set is laid out as: the stop socket, the listener (-1 while accepting
//! is paused), one entry per connection for the socket its state waits on,
//! one entry per connection watching the client hang up while tiny_http
//! has its request (-1 otherwise), then the idle kept connections to
//! tiny_http.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{Front, State};
use crate::infra::poll::pollfd;

/// The poll set of one turn (its buffer is reused from turn to turn).
#[derive(Default)]
pub(super) struct PollSet {
    pub(super) fds: Vec<libc::pollfd>,
    watch_start: usize,
    pool_start: usize,
}

impl PollSet {
    /// The stop socket hung up (or got anything): the daemon stops.
    pub(super) fn stopping(&self) -> bool {
        self.fds[0].revents != 0
    }
}

impl Front {
    /// Fills `set` for this turn.
    pub(super) fn fill(&self, set: &mut PollSet) {
        let fds = &mut set.fds;
        fds.clear();
        fds.push(pollfd(self.stop.as_raw_fd(), libc::POLLIN));
        let listening = self.accept_paused_until.is_none();
        let listener = if listening {
            self.listener.as_raw_fd()
        } else {
            -1
        };
        fds.push(pollfd(listener, libc::POLLIN));
        for c in &self.conns {
            fds.push(match &c.state {
                State::Head { .. } | State::Linger { .. } => {
                    pollfd(c.client.as_raw_fd(), libc::POLLIN)
                }
                State::Backend { up, out, sent, .. } => {
                    let ev = if *sent < out.len() {
                        libc::POLLOUT
                    } else {
                        libc::POLLIN
                    };
                    pollfd(up.as_raw_fd(), ev)
                }
                State::Reply { .. } => pollfd(c.client.as_raw_fd(), libc::POLLOUT),
                // Moved on by `dispatch_queued`, not by its sockets.
                State::Queued { .. } => pollfd(-1, 0),
            });
        }
        // Clients that hang up while their request is with tiny_http (a
        // parked /wait) free their slot soon: a reset at once, an end of
        // stream (a close or a mere half-close, which look the same) after
        // a short grace in which the answer can still go out.
        set.watch_start = fds.len();
        for c in &self.conns {
            let waiting = matches!(c.state, State::Backend { .. } | State::Queued { .. });
            let fd = if waiting && !c.half_closed {
                c.client.as_raw_fd()
            } else {
                -1
            };
            fds.push(pollfd(fd, libc::POLLRDHUP));
        }
        set.pool_start = fds.len();
        fds.extend(self.pool.fds().map(|fd| pollfd(fd, libc::POLLIN)));
    }

    /// How long this turn may wait: until the nearest deadline (or the end
    /// of an accept pause), between 1 ms and 60 s; None: no deadline.
    pub(super) fn timeout(&self, now: Instant) -> Option<Duration> {
        let mut next = self.conns.iter().map(|c| c.deadline).min();
        if let Some(t) = self.accept_paused_until {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| {
            t.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_secs(60))
        })
    }

    /// Acts on what `set` reported: steps ready connections, closes those
    /// that hung up or passed their deadline, accepts newcomers.
    pub(super) fn serve(&mut self, set: &PollSet) {
        let fds = &set.fds;
        let now = Instant::now();
        // Before any connection goes back to the pool.
        self.pool.prune(&fds[set.pool_start..]);
        // Walk connections back to front so removal keeps indexes valid
        // (a removal moves the last one, already walked, into its place).
        for i in (0..self.conns.len()).rev() {
            let (ev, watch) = (fds[2 + i].revents, fds[set.watch_start + i].revents);
            if watch & libc::POLLRDHUP != 0 {
                let c = &mut self.conns[i];
                c.half_closed = true;
                c.deadline = c.deadline.min(now + self.limits.half_close_grace);
            }
            let keep = if watch & (libc::POLLHUP | libc::POLLERR) != 0 {
                false
            } else if ev != 0 {
                self.step(i, now)
            } else {
                now < self.conns[i].deadline || self.expire(i)
            };
            if !keep {
                self.conns.swap_remove(i);
            }
        }
        // Kept connections freed above take the queued requests.
        self.dispatch_queued(now);
        // Before any new client: a descriptor freed above goes back to the
        // spare first.
        self.restore_spare();
        if fds[1].revents != 0 {
            self.accept_all();
        }
    }
}
