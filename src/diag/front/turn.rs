//! One turn of the front's loop on epoll(7), level-triggered: what each
//! socket waits for follows from its connection's state, and only changes
//! reach the kernel (`epoll_ctl`), so a turn costs one `epoll_wait` however
//! many connections are open, where poll(2) walked every descriptor twice.
//!
//! Interest per socket:
//! - the stop descriptor (`infra::stop`): readable at the stop, or for a
//!   watchdog poke (read off);
//! - the listeners (the TCP port, the debug socket): readable, unless
//!   accepting is paused, or tiny_http is taking the descriptors it needs
//!   to accept a connection the front made (`Front::connect_upstream`);
//! - a client: readable and its hang-up (`EPOLLRDHUP`) while its head is
//!   read, while it lingers, and while tiny_http has its request or it is
//!   queued (see `client_interest`), writable while its answer is written,
//!   nothing once it half-closed with its request at tiny_http;
//! - a connection to tiny_http: readable for its life (an idle kept one
//!   that gets anything is dropped), and writable too while heads are only
//!   partly sent.
//!
//! Where a registration is kept: a client's in its [`Conn`], a connection
//! to tiny_http's beside it (`State::Backend`'s `up_ev`, a kept one's in its
//! [`super::kept::KeptConn`]). A socket closed leaves the epoll set by itself,
//! so a new socket that reuses its number starts unregistered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};

use super::accept::Door;
use super::{Conn, Front, State, RESERVE_FDS};

/// How often a front whose reserve is short looks for free descriptors.
const RESERVE_RETRY: Duration = Duration::from_millis(100);

/// The epoll set and the events of the last wait.
pub(super) struct Events {
    ep: OwnedFd,
    ready: Vec<epoll::Event>,
    /// (descriptor, events) of the last wait, sorted by descriptor.
    got: Vec<(RawFd, EventFlags)>,
    /// The listener is in the set (not paused).
    listening: bool,
}

impl Events {
    /// An epoll set holding the stop descriptor and the listeners (made
    /// before the front's thread starts: [`super::Front::ready`]).
    pub(super) fn epoll_set(front: &Front) -> io::Result<OwnedFd> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = front.stop.fd()?;
        epoll::add(&ep, stop, data(stop.as_raw_fd()), EventFlags::IN)?;
        for l in front.listeners() {
            epoll::add(&ep, l, data(l.as_raw_fd()), EventFlags::IN)?;
        }
        Ok(ep)
    }

    /// The events of the epoll set `ep` ([`Events::epoll_set`]), on the front's
    /// thread.
    pub(super) fn of_set(ep: OwnedFd) -> Events {
        Events {
            ep,
            ready: Vec::with_capacity(256),
            got: Vec::with_capacity(256),
            listening: true,
        }
    }

    /// Makes `fd`'s registration `want` (empty: out of the set), from what
    /// it is (`have`, updated). An error leaves `have` as it was: the next
    /// turn tries again.
    fn set(&self, fd: impl AsFd, have: &mut EventFlags, want: EventFlags) {
        if *have == want {
            return;
        }
        let raw = fd.as_fd().as_raw_fd();
        let done = if want.is_empty() {
            epoll::delete(&self.ep, fd)
        } else if have.is_empty() {
            epoll::add(&self.ep, fd, data(raw), want)
        } else {
            epoll::modify(&self.ep, fd, data(raw), want)
        };
        if done.is_ok() {
            *have = want;
        }
    }

    /// Waits for events, at most `timeout` (None: without a limit).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        self.ready.clear();
        loop {
            let buf = rustix::buffer::spare_capacity(&mut self.ready);
            match epoll::wait(&self.ep, buf, ts.as_ref()) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.got.clear();
        self.got
            .extend(self.ready.iter().map(|e| (e.data.u64() as RawFd, e.flags)));
        self.got.sort_unstable_by_key(|&(fd, _)| fd);
        Ok(())
    }

    /// What the last wait reported for `fd` (empty: nothing).
    pub(super) fn of(&self, fd: RawFd) -> EventFlags {
        match self.got.binary_search_by_key(&fd, |&(f, _)| f) {
            Ok(i) => self.got[i].1,
            Err(_) => EventFlags::empty(),
        }
    }
}

fn data(fd: RawFd) -> EventData {
    EventData::new_u64(fd as u64)
}

/// What a client's socket waits for in its state.
///
/// Readable and its hang-up both while a head is read and while tiny_http
/// has the request: a keep-alive client goes from one to the other and
/// back for every request, and an unchanged registration costs no
/// `epoll_ctl`. A client that sends more while its request is with
/// tiny_http (pipelining, or its end of stream) is left readable, which
/// level-triggered epoll would report every turn: it waits for its hang-up
/// only, until its next head is read (`sent_more`).
fn client_interest(c: &Conn) -> EventFlags {
    match &c.state {
        // TLS: and writable while a handshake flight waits to go out.
        State::Head { .. } if c.client.wants_write() => {
            EventFlags::IN | EventFlags::RDHUP | EventFlags::OUT
        }
        State::Head { .. } | State::Linger { .. } => EventFlags::IN | EventFlags::RDHUP,
        State::Reply { .. } => EventFlags::OUT,
        // Clients that hang up while their request is with tiny_http (a
        // parked /wait) free their slot soon: a reset at once, an end of
        // stream (a close or a mere half-close, which look the same) after
        // a short grace in which the answer can still go out.
        State::Backend { .. } | State::Queued(_) | State::Piped(_) | State::Auth(_)
            if c.half_closed =>
        {
            EventFlags::empty()
        }
        State::Backend { .. } | State::Queued(_) | State::Piped(_) | State::Auth(_)
            if c.sent_more =>
        {
            EventFlags::RDHUP
        }
        State::Backend { .. } | State::Queued(_) | State::Piped(_) | State::Auth(_) => {
            EventFlags::IN | EventFlags::RDHUP
        }
    }
}

impl Front {
    /// The listening sockets: the TCP port and the local debug socket,
    /// those there are.
    fn listeners(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let tcp = self.listener.as_ref().map(|l| l.as_fd());
        tcp.into_iter()
            .chain(self.local.as_ref().map(|l| l.as_fd()))
    }

    /// Brings the epoll set in line with every connection's state, then
    /// waits for events until the nearest deadline.
    pub(super) fn wait(&mut self, events: &mut Events, now: Instant) -> io::Result<()> {
        // Not while tiny_http is to accept a connection made on the
        // reserve: an accept here could take the number it needs.
        let listen = self.accept_paused_until.is_none() && self.upstream_accepting(now).is_none();
        if listen != events.listening {
            let (have, want) = match listen {
                true => (EventFlags::empty(), EventFlags::IN),
                false => (EventFlags::IN, EventFlags::empty()),
            };
            for l in self.listeners() {
                let mut h = have;
                events.set(l, &mut h, want);
            }
            events.listening = listen;
        }
        for c in &mut self.conns {
            if !matches!(
                c.state,
                State::Backend { .. } | State::Queued(_) | State::Piped(_) | State::Auth(_)
            ) {
                c.sent_more = false;
            }
            // TLS: a head decrypted but not read yet gets no event.
            if matches!(c.state, State::Head { .. }) && c.client.has_plaintext() {
                c.kick = true;
            }
            let want = client_interest(c);
            events.set(&c.client, &mut c.client_ev, want);
            if let State::Backend {
                up,
                out,
                sent,
                up_ev,
                ..
            } = &mut c.state
            {
                let want = match *sent < out.len() {
                    true => EventFlags::IN | EventFlags::OUT,
                    false => EventFlags::IN,
                };
                events.set(&*up, up_ev, want);
            }
        }
        for p in &mut self.kept {
            let want = p.interest();
            events.set(&p.stream, &mut p.ev, want);
        }
        if let Some(a) = &mut self.checker {
            events.set(&a.wake, &mut a.wake_ev, EventFlags::IN);
        }
        events.wait(self.timeout(now))
    }

    /// How long this turn may wait: until the nearest deadline (or the end
    /// of an accept pause, or of tiny_http's time to accept, or the next
    /// look for descriptors while the reserve is short), between 1 ms and
    /// 60 s; None: no deadline.
    pub(super) fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.kicked() {
            // An answer is ready to go (a kept connection broke late in
            // the last turn): look, do not wait.
            return Some(Duration::ZERO);
        }
        let mut next = self.conns.iter().map(|c| c.deadline).min();
        // A reserve short of descriptors is filled again as they free up,
        // which nothing may announce (tiny_http closes its ends on its own
        // threads): look again in a while.
        let refill = (self.reserve.held() < RESERVE_FDS).then(|| now + RESERVE_RETRY);
        for t in [
            self.accept_paused_until,
            self.upstream_accepting(now),
            refill,
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| {
            t.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_secs(60))
        })
    }

    /// Acts on what the wait reported: steps ready connections, closes
    /// those that hung up or passed their deadline, accepts newcomers.
    pub(super) fn serve(&mut self, events: &Events) {
        let now = Instant::now();
        // Answers first: their clients are stepped below.
        self.serve_kept(events, now);
        // An answer ends tiny_http's time to accept a connection made with
        // the reserve given up: the reserve is whole again before the
        // answer goes out.
        self.refill_reserve();
        // Checked passwords: those requests go on ([`super::auth`]).
        if let Some(a) = &self.checker {
            if !events.of(a.wake.as_raw_fd()).is_empty() {
                self.checked(now);
            }
        }
        // Walk connections back to front so removal keeps indexes valid
        // (a removal moves the last one, already walked, into its place).
        for i in (0..self.conns.len()).rev() {
            let c = &self.conns[i];
            let client = events.of(c.client.as_raw_fd());
            // The socket the state waits on, and the client's hang-up
            // while tiny_http has its request.
            let (ev, watch) = match &c.state {
                State::Backend { up, .. } => (events.of(up.as_raw_fd()), client),
                State::Queued(_) | State::Piped(_) | State::Auth(_) => {
                    (EventFlags::empty(), client)
                }
                _ => (client, EventFlags::empty()),
            };
            if watch.contains(EventFlags::RDHUP) {
                let c = &mut self.conns[i];
                c.half_closed = true;
                c.deadline = c.deadline.min(now + self.limits.half_close_grace);
            } else if watch.contains(EventFlags::IN) {
                self.conns[i].sent_more = true;
            }
            // Taken whatever else happens: a kick left set would make every
            // later turn look without waiting.
            let kicked = std::mem::take(&mut self.conns[i].kick);
            let keep = if watch.intersects(EventFlags::HUP | EventFlags::ERR) {
                false
            } else if !ev.is_empty() || kicked {
                self.step(i, now)
            } else {
                now < self.conns[i].deadline || self.expire(i, now)
            };
            if !keep {
                self.conns.swap_remove(i);
            }
        }
        // Before any new client: a descriptor freed above goes back to the
        // reserve first (unless it was freed for a newcomer in the last
        // turn's accept: that one takes it now).
        self.refill_reserve();
        self.newcomer_first = false;
        let ready = |l: Option<BorrowedFd>| l.is_some_and(|l| !events.of(l.as_raw_fd()).is_empty());
        if ready(self.listener.as_ref().map(|l| l.as_fd())) {
            // Tests wedge the front here (`diag-front-accept=sleep:MS`).
            crate::infra::failpoints::hit("diag-front-accept");
            self.accept_from(Door::Tcp);
        }
        if ready(self.local.as_ref().map(|l| l.as_fd())) {
            self.accept_from(Door::Local);
        }
        // Every request queued this turn goes down the kept connections,
        // several in one write where they can.
        self.dispatch_queued(now);
    }

    /// Whether the daemon stopped the front. The stop descriptor also
    /// wakes it for watchdog pokes, which only had to wake this turn: read
    /// off. A descriptor that cannot be had also stops the front.
    pub(super) fn stopping(&self, events: &Events) -> bool {
        let Ok(fd) = self.stop.fd() else {
            return true;
        };
        if events.of(fd.as_raw_fd()).is_empty() {
            return false;
        }
        self.stop.take_wakes()
    }
}
