//! The protocol client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Error;
use crate::packet::{self, Decoder, Event, decode_hex_into, push_hex, show};
use crate::regs::{RegisterMap, Registers, le_u64};
use crate::types::{BreakpointKind, Features, ResumeAction, StopReply, ThreadId, VContSupport};

/// Bound on buffered `O` console output.
const MAX_CONSOLE: usize = 1 << 20;
/// Bound on one `qXfer` object.
const MAX_XFER: usize = 1 << 20;
/// How long a client with an abort check waits on the socket between two
/// looks at it.
const ABORT_POLL: Duration = Duration::from_millis(50);

/// How late a reply must be before a stall policy's abort check is looked
/// at: a reply a healthy stub is merely slow with is not given up on when
/// the run ends.
const STALL_ABORT_GRACE: Duration = Duration::from_secs(1);

/// A check a client makes while it waits for the stub (e.g. "was SIGINT
/// received, or is the deadline past?"): true ends the wait with
/// [`Error::Aborted`].
pub type AbortCheck = Box<dyn Fn() -> bool + Send>;

/// What a client does when the stub is late with a reply it owes (to a
/// request, an interrupt or a single step): see [`Client::set_stall_policy`].
pub struct StallPolicy {
    /// How long a reply is awaited in all, from when it was asked for (in
    /// place of the reply timeout).
    pub limit: Duration,
    /// How late a reply is when [`Stall::Silent`] is reported (at most
    /// `limit`).
    pub notice: Duration,
    /// Told of a stall as it goes: once a reply is `notice` late, when it
    /// comes after that, and when the wait gives up at `limit`.
    pub report: Box<dyn FnMut(Stall) + Send>,
    /// Looked at, at least every 50 ms, once a reply is a second late:
    /// true ends the wait with [`Error::Aborted`] (a signal, a deadline).
    pub abort: Option<AbortCheck>,
}

/// A stall, as reported to a [`StallPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// No reply for `waited` (the policy's notice); the wait goes on up
    /// to `limit`.
    Silent { waited: Duration, limit: Duration },
    /// The reply came, `after` it was asked for.
    Answered { after: Duration },
    /// No reply for `waited` (the policy's limit): the request fails with
    /// [`Error::Stalled`].
    GaveUp { waited: Duration },
}

/// A reply the stub owes: when it was asked for, and whether its lateness
/// was reported.
struct Owed {
    asked: Instant,
    reported: bool,
}

impl Owed {
    fn now() -> Owed {
        Owed {
            asked: Instant::now(),
            reported: false,
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.write(buf),
        }
    }

    /// Writes all of `buf` by `deadline`. The socket's write timeout is at
    /// most [`ABORT_POLL`] while there is an abort check, which is looked
    /// at whenever the stub is slow to take the bytes.
    fn write_all(
        &mut self,
        mut buf: &[u8],
        deadline: Instant,
        abort: Option<&AbortCheck>,
    ) -> Result<(), SendErr> {
        let total = buf.len();
        while !buf.is_empty() {
            match self.write(buf) {
                Ok(0) => return Err(SendErr::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if abort.is_some_and(|f| f()) {
                        return Err(SendErr::Aborted {
                            partial: buf.len() < total,
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(SendErr::Io(e));
                    }
                }
                Err(e) => return Err(SendErr::Io(e)),
            }
        }
        Ok(())
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            #[cfg(unix)]
            Conn::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(t),
            #[cfg(unix)]
            Conn::Unix(s) => s.set_write_timeout(t),
        }
    }
}

enum RecvErr {
    Timeout,
    /// A stall policy's limit passed with no reply.
    Stalled(Duration),
    Closed,
    Aborted,
    Io(io::Error),
    Malformed {
        packet: String,
        reason: String,
    },
    /// Writing a `-` or a retransmission failed.
    Send(Error),
}

enum SendErr {
    /// `partial`: part of the bytes went out, so the stream is out of step.
    Aborted {
        partial: bool,
    },
    Io(io::Error),
}

impl From<io::Error> for RecvErr {
    fn from(e: io::Error) -> Self {
        RecvErr::Io(e)
    }
}

/// A connection to a gdb stub. See the crate docs.
pub struct Client {
    conn: Conn,
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    dec: Decoder,
    /// Payload of the last request (kept for error messages).
    cmd: Vec<u8>,
    /// Encoded last packet (kept for retransmission on `-`), from `wstart`;
    /// a piggybacked `+` may precede it.
    wbuf: Vec<u8>,
    wstart: usize,
    ack_mode: bool,
    /// In ack mode: a received packet not yet acked. The `+` is sent with the
    /// next outgoing packet (one write), or at once where a stub may wait.
    pending_ack: bool,
    timeout: Duration,
    /// Read timeout currently set on the socket (`None`: blocking).
    sock_timeout: Option<Duration>,
    features: Features,
    regmap: Arc<RegisterMap>,
    selected_g: Option<ThreadId>,
    selected_c: Option<ThreadId>,
    trust_stop_thread: bool,
    stub_ignores_acks: bool,
    running: bool,
    p_supported: bool,
    /// Process id last seen in a multiprocess thread id.
    pid: Option<u64>,
    round_trips: u64,
    console: Vec<u8>,
    /// The stub's memory mode as we last set it: `m` reads physical
    /// addresses while true (QEMU's `Qqemu.PhyMemMode`).
    phys_mode: bool,
    /// Whether the stub has a physical-memory mode (`None`: not asked yet).
    phys_supported: Option<bool>,
    abort: Option<AbortCheck>,
    /// A request was sent whole and its wait aborted: its reply may still
    /// come, and is taken before the next request's.
    unanswered: bool,
    /// When that reply was asked for, if its wait goes on from then (a
    /// request that failed late under a stall policy, deferred); after an
    /// abort or a wait that gave up at the limit, it starts afresh.
    unanswered_asked: Option<Instant>,
    /// A write was aborted part way: the stream is out of step for good.
    broken: bool,
    /// Bytes received since the last packet, ack or nak: what a timeout
    /// says came (noise, or a packet too slow to finish).
    since_packet: usize,
    stall: Option<StallPolicy>,
    /// While set, a late reply fails its request at the reply timeout, as
    /// without a policy (see [`Client::set_stalls_deferred`]).
    stalls_deferred: bool,
}

fn map_io_connect(addr: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Connect { addr, source }
}

impl Client {
    /// Connects over TCP (with `TCP_NODELAY`) and performs the handshake.
    /// `timeout` bounds the connect and becomes the reply timeout.
    pub fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<Client, Error> {
        Self::connect_tcp_abortable(addr, timeout, None)
    }

    /// [`connect_tcp`](Self::connect_tcp) with an abort check, kept by the
    /// client (see [`Client::set_abort`]): connecting and the handshake end
    /// with [`Error::Aborted`] soon after it says so.
    pub fn connect_tcp_abortable(
        addr: SocketAddr,
        timeout: Duration,
        abort: Option<AbortCheck>,
    ) -> Result<Client, Error> {
        let deadline = Instant::now() + timeout;
        let s = loop {
            // In attempts of 200 ms, to look at the abort check between.
            let slice = match &abort {
                Some(_) => Duration::from_millis(200),
                None => timeout,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&addr, slice.min(left).max(Duration::from_millis(1))) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::TimedOut && Instant::now() < deadline => {
                    if abort.as_ref().is_some_and(|f| f()) {
                        return Err(Error::Aborted);
                    }
                }
                Err(e) => return Err(map_io_connect(addr.to_string())(e)),
            }
        };
        s.set_nodelay(true)?;
        Self::handshake(Conn::Tcp(s), timeout, abort)
    }

    /// Connects to a Unix socket and performs the handshake.
    #[cfg(unix)]
    pub fn connect_unix(path: &std::path::Path, timeout: Duration) -> Result<Client, Error> {
        Self::connect_unix_abortable(path, timeout, false, None)
    }

    /// [`connect_unix`](Self::connect_unix) to a stub that is still
    /// starting: retries while the socket does not exist or refuses (QEMU
    /// binds its socket before it listens on it) until `timeout` has passed.
    #[cfg(unix)]
    pub fn connect_unix_wait(path: &std::path::Path, timeout: Duration) -> Result<Client, Error> {
        Self::connect_unix_abortable(path, timeout, true, None)
    }

    /// [`connect_unix`](Self::connect_unix), or with `wait`
    /// [`connect_unix_wait`](Self::connect_unix_wait), with an abort check
    /// kept by the client (see [`Client::set_abort`]): connecting and the
    /// handshake end with [`Error::Aborted`] soon after it says so.
    #[cfg(unix)]
    pub fn connect_unix_abortable(
        path: &std::path::Path,
        timeout: Duration,
        wait: bool,
        abort: Option<AbortCheck>,
    ) -> Result<Client, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Self::handshake(Conn::Unix(s), timeout, abort),
                Err(e)
                    if wait
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        )
                        && Instant::now() < deadline =>
                {
                    if abort.as_ref().is_some_and(|f| f()) {
                        return Err(Error::Aborted);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(map_io_connect(path.display().to_string())(e)),
            }
        }
    }

    fn handshake(
        conn: Conn,
        timeout: Duration,
        abort: Option<AbortCheck>,
    ) -> Result<Client, Error> {
        let timeout = timeout.max(Duration::from_millis(1));
        let mut c = Client {
            conn,
            rbuf: vec![0u8; 64 * 1024].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            dec: Decoder::default(),
            cmd: Vec::with_capacity(256),
            wbuf: Vec::with_capacity(4096),
            wstart: 0,
            ack_mode: true,
            pending_ack: false,
            timeout,
            sock_timeout: None,
            features: Features::default(),
            regmap: Arc::new(RegisterMap::default()),
            selected_g: None,
            selected_c: None,
            trust_stop_thread: false,
            stub_ignores_acks: false,
            running: false,
            p_supported: true,
            pid: None,
            round_trips: 0,
            console: Vec::new(),
            phys_mode: false,
            phys_supported: None,
            abort: None,
            unanswered: false,
            unanswered_asked: None,
            broken: false,
            since_packet: 0,
            stall: None,
            stalls_deferred: false,
        };
        c.set_abort(abort);
        c.request_str(
            "qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+;no-resumed+;xmlRegisters=i386",
        )?;
        c.check_error()?;
        c.features = Features::parse_qsupported(&c.dec.payload);
        // Tried even when not advertised (harmless: unknown packets get an
        // empty reply). QEMU 7.2 does not implement it; we then stay in ack
        // mode and piggyback each `+` on the next packet we send.
        c.request_str("QStartNoAckMode")?;
        if c.dec.payload == b"OK" {
            c.flush_ack()?;
            c.ack_mode = false;
            c.features.no_ack = true;
        }
        c.request_str("vCont?")?;
        c.features.vcont = VContSupport::parse(&c.dec.payload);
        // A debugger that died inside `with_physical` leaves QEMU's (global)
        // physical-memory mode on; learn the mode now, so that the first
        // virtual access switches it back.
        c.has_physical_mode()?;
        if c.features.xfer_features {
            let root = c.xfer_read_string("features", "target.xml")?;
            let map = RegisterMap::from_target_xml(&root, &mut |annex| {
                c.xfer_read_string("features", annex)
            })?;
            c.regmap = Arc::new(map);
        }
        Ok(c)
    }

    /// Sets the reply timeout for requests (and [`Client::step_thread`]).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t.max(Duration::from_millis(1));
        self.set_write_timeout();
    }

    /// The reply timeout for requests.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets (or with `None` removes) the check looked at, at least every
    /// 50 ms, while the client waits for the stub to take a request or to
    /// answer: once it returns true, the wait ends with [`Error::Aborted`].
    /// A request whose reply was not awaited has it taken before the next
    /// request's; a request aborted part way through being sent leaves the
    /// connection unusable.
    pub fn set_abort(&mut self, abort: Option<AbortCheck>) {
        self.abort = abort;
        self.set_write_timeout();
    }

    fn set_write_timeout(&mut self) {
        let t = match self.abort {
            Some(_) => self.timeout.min(ABORT_POLL),
            None => self.timeout,
        };
        let _ = self.conn.set_write_timeout(Some(t));
    }

    /// Sets (or with `None` removes) what the client does when the stub is
    /// late with a reply it owes. Without a policy a request fails at the
    /// reply timeout ([`Error::Timeout`]). With one, the client waits for
    /// that reply (nothing is sent again, so the reply still answers its
    /// request) up to the policy's limit, telling the policy as the stall
    /// goes (see [`Stall`]), and fails with [`Error::Stalled`] at the
    /// limit. A request that failed late leaves the client consistent: its
    /// reply, if it comes, is taken before the next request's. Stop
    /// replies to an interrupt or a step are awaited through
    /// [`Client::wait_stop_owed`] and [`Client::step_thread`].
    pub fn set_stall_policy(&mut self, policy: Option<StallPolicy>) {
        self.stall = policy;
    }

    /// While `deferred`, a late reply fails its request at the reply
    /// timeout as without a stall policy, for a caller that others wait on
    /// meanwhile (one holding a shared lock); the reply is then awaited
    /// under the policy before the next request's.
    pub fn set_stalls_deferred(&mut self, deferred: bool) {
        self.stalls_deferred = deferred;
    }

    fn aborted(&self) -> bool {
        self.abort.as_ref().is_some_and(|f| f())
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn register_map(&self) -> &RegisterMap {
        &self.regmap
    }

    /// Shared handle to the register map (for [`Registers::new`]).
    pub fn register_map_arc(&self) -> Arc<RegisterMap> {
        self.regmap.clone()
    }

    /// Number of request/reply exchanges plus resumes so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// True between a resume and the stop reply that ends it.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Takes the console output received in `O` packets so far.
    pub fn take_console_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.console)
    }

    /// Trust that a stop makes the stopped thread the `Hg` thread (true for
    /// QEMU), saving an `Hg` round trip before reading its registers.
    /// Off by default: then the `Hg` cache is cleared on every resume.
    pub fn set_trust_stop_thread(&mut self, trust: bool) {
        self.trust_stop_thread = trust;
    }

    /// Declare that the stub never waits for our `+` before reading its next
    /// packet (true for QEMU's system-mode stub, which has no no-ack mode but
    /// ignores acks). Lets [`Client::write_register_and_resume`] send two
    /// packets in one write even in ack mode. Off by default: a stub such as
    /// gdbserver waits for the ack and would drop a packet sent before it.
    pub fn set_stub_ignores_acks(&mut self, yes: bool) {
        self.stub_ignores_acks = yes;
    }

    // ----- low level -----------------------------------------------------

    /// Sets the socket read timeout for a read that must return by
    /// `deadline`, skipping the syscall when the current setting is close.
    fn arm_read_timeout(&mut self, deadline: Option<Instant>) -> Result<(), RecvErr> {
        let want = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(RecvErr::Timeout);
                }
                Some((d - now).max(Duration::from_millis(1)))
            }
        };
        let ok = match (self.sock_timeout, want) {
            (None, None) => true,
            (Some(cur), Some(w)) => cur <= w + Duration::from_millis(10) && cur * 2 >= w,
            _ => false,
        };
        if !ok {
            self.conn.set_read_timeout(want)?;
            self.sock_timeout = want;
        }
        Ok(())
    }

    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), RecvErr> {
        // With an abort check, each read blocks for at most ABORT_POLL.
        let slice = match self.abort {
            None => deadline,
            Some(_) => {
                if self.aborted() {
                    return Err(RecvErr::Aborted);
                }
                let poll = Instant::now() + ABORT_POLL;
                Some(deadline.map_or(poll, |d| d.min(poll)))
            }
        };
        self.arm_read_timeout(slice)?;
        match self.conn.read(&mut self.rbuf) {
            Ok(0) => Err(RecvErr::Closed),
            Ok(n) => {
                self.rpos = 0;
                self.rlen = n;
                self.since_packet = self.since_packet.saturating_add(n);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                match deadline {
                    Some(d) if Instant::now() >= d => Err(RecvErr::Timeout),
                    _ => Ok(()),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Err(RecvErr::Closed)
            }
            Err(e) => Err(RecvErr::Io(e)),
        }
    }

    /// Receives the next packet into `self.dec.payload`.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<(), RecvErr> {
        let mut naks = 0;
        let mut bad = 0;
        loop {
            while self.rpos < self.rlen {
                let (n, ev) = self.dec.feed(&self.rbuf[self.rpos..self.rlen]);
                self.rpos += n;
                if ev.is_some() {
                    self.since_packet = self.rlen - self.rpos;
                }
                match ev {
                    None | Some(Event::Ack) | Some(Event::Notification) => {}
                    Some(Event::Packet) => {
                        self.pending_ack = self.ack_mode;
                        return Ok(());
                    }
                    Some(Event::Nak) => {
                        if self.ack_mode && naks < 5 && self.wbuf.len() > self.wstart {
                            naks += 1;
                            let range = self.wstart..self.wbuf.len();
                            self.write_wbuf(range, |_| "a retransmission".into())
                                .map_err(RecvErr::Send)?;
                        }
                    }
                    Some(Event::BadChecksum { expected, computed }) => {
                        if self.ack_mode && bad < 3 {
                            bad += 1;
                            self.write_bytes(b"-").map_err(RecvErr::Send)?;
                        } else {
                            return Err(RecvErr::Malformed {
                                packet: show(&self.dec.payload),
                                reason: format!(
                                    "checksum mismatch: packet says {expected:02x}, computed {computed:02x}"
                                ),
                            });
                        }
                    }
                    Some(Event::Malformed(reason)) => {
                        return Err(RecvErr::Malformed {
                            packet: show(&self.dec.payload),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
            self.fill(deadline)?;
        }
    }

    /// Receives the next packet of a reply the stub owes: by `timeout`
    /// after it was asked for or, under a stall policy that is not
    /// deferred, by the policy's limit, reporting the stall as it goes.
    fn recv_owed(&mut self, owed: &mut Owed, timeout: Duration) -> Result<(), RecvErr> {
        let (limit, notice, abortable) = match &self.stall {
            Some(p) if !self.stalls_deferred => (p.limit, p.notice.min(p.limit), p.abort.is_some()),
            _ => return self.recv(Some(owed.asked + timeout)),
        };
        loop {
            let now = Instant::now();
            let mut until = owed.asked + if owed.reported { limit } else { notice };
            if abortable {
                let grace = owed.asked + STALL_ABORT_GRACE;
                until = until.min(if now >= grace {
                    now + ABORT_POLL
                } else {
                    grace
                });
            }
            match self.recv(Some(until)) {
                Err(RecvErr::Timeout) => {}
                done => return done,
            }
            let late = owed.asked.elapsed();
            let policy = self.stall.as_mut().expect("matched above");
            if late >= STALL_ABORT_GRACE && policy.abort.as_ref().is_some_and(|f| f()) {
                return Err(RecvErr::Aborted);
            }
            if late >= limit {
                (policy.report)(Stall::GaveUp { waited: late });
                return Err(RecvErr::Stalled(late));
            }
            if !owed.reported && late >= notice {
                (policy.report)(Stall::Silent {
                    waited: notice,
                    limit,
                });
                owed.reported = true;
            }
        }
    }

    /// The reply `owed` was for came: says so if it was reported late.
    fn answered(&mut self, owed: &Owed) {
        if owed.reported
            && let Some(p) = self.stall.as_mut()
        {
            (p.report)(Stall::Answered {
                after: owed.asked.elapsed(),
            });
        }
    }

    /// Takes the reply to a request that failed before it came (aborted,
    /// or late under a stall policy), if it comes.
    fn take_unanswered(&mut self) -> Result<(), Error> {
        if !self.unanswered {
            return Ok(());
        }
        let mut owed = Owed::now();
        if let Some(asked) = self.unanswered_asked {
            owed.asked = asked;
        }
        let timeout = self.timeout;
        let got = self.recv_owed(&mut owed, timeout);
        if let Err(RecvErr::Stalled(_)) = got {
            self.unanswered_asked = None;
        }
        got.map_err(|e| self.recv_err(e, || "the reply to an earlier request".into()))?;
        self.answered(&owed);
        self.unanswered = false;
        Ok(())
    }

    fn cmd_text(&self) -> String {
        format!("`{}`", show(&self.cmd))
    }

    /// The error for `e` while waiting for `what` (a reply, a stop reply).
    fn recv_err(&self, e: RecvErr, what: impl FnOnce() -> String) -> Error {
        match e {
            // Silence, noise and a trickle all end at the timeout; which
            // one it was is told by what came.
            RecvErr::Timeout => Error::Timeout {
                waiting_for: match self.since_packet {
                    0 => what(),
                    1 => format!("{} (1 byte received, not a whole packet)", what()),
                    n => format!("{} ({n} bytes received, not one whole packet)", what()),
                },
            },
            RecvErr::Stalled(waited) => Error::Stalled {
                waited,
                waiting_for: what(),
            },
            RecvErr::Closed => Error::Closed {
                during: format!("waiting for {}", what()),
            },
            RecvErr::Aborted => Error::Aborted,
            RecvErr::Io(e) => Error::Io(e),
            RecvErr::Malformed { packet, reason } => Error::Malformed { packet, reason },
            RecvErr::Send(e) => e,
        }
    }

    fn not_running(&self) -> Result<(), Error> {
        if self.running {
            return Err(Error::Unexpected {
                packet: show(&self.cmd),
                expected: "a stopped target: it is running; interrupt() and wait_stop() first \
                           (any byte sent to QEMU while running stops it)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Sends a pending ack now (where a stub may wait for it).
    fn flush_ack(&mut self) -> Result<(), Error> {
        if self.pending_ack {
            self.pending_ack = false;
            self.write_bytes(b"+")?;
        }
        Ok(())
    }

    /// Writes `self.wbuf[range]`; `what` names it in errors.
    fn write_wbuf(
        &mut self,
        range: std::ops::Range<usize>,
        what: impl FnOnce(&Self) -> String,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let sent = match self.broken {
            true => Err(SendErr::Aborted { partial: true }),
            false => (self.conn).write_all(&self.wbuf[range], deadline, self.abort.as_ref()),
        };
        self.sent(sent, what)
    }

    /// Writes a few bytes of their own (an ack, a nak, an interrupt).
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let sent = match self.broken {
            true => Err(SendErr::Aborted { partial: true }),
            false => (self.conn).write_all(bytes, deadline, self.abort.as_ref()),
        };
        self.sent(sent, |_| format!("`{}`", show(bytes)))
    }

    fn sent(
        &mut self,
        sent: Result<(), SendErr>,
        what: impl FnOnce(&Self) -> String,
    ) -> Result<(), Error> {
        match sent {
            Ok(()) => Ok(()),
            Err(SendErr::Aborted { partial }) => {
                self.broken |= partial;
                Err(Error::Aborted)
            }
            Err(SendErr::Io(e)) => Err(match e.kind() {
                io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted => Error::Closed {
                    during: format!("sending {}", what(self)),
                },
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                    waiting_for: format!("the stub to accept {}", what(self)),
                },
                _ => Error::Io(e),
            }),
        }
    }

    /// Encodes `self.cmd` (after a pending `+`) and writes it in one write.
    fn send_cmd(&mut self) -> Result<(), Error> {
        self.wbuf.clear();
        if std::mem::take(&mut self.pending_ack) {
            self.wbuf.push(b'+');
        }
        self.wstart = self.wbuf.len();
        packet::encode(&mut self.wbuf, &self.cmd);
        self.write_wbuf(0..self.wbuf.len(), Self::cmd_text)
    }

    /// Sends `self.cmd` and receives the reply into `self.dec.payload`.
    fn exchange(&mut self) -> Result<(), Error> {
        self.not_running()?;
        // The reply to an aborted (or late) request comes first, if at all.
        self.take_unanswered()?;
        self.send_cmd()?;
        self.round_trips += 1;
        // A stop reply answers only `?`. One arriving for any other request
        // is unsolicited: QEMU sends one when a new debugger connects to a
        // VM that an earlier one detached from (it stops the VM). Taking it
        // as this request's reply would shift every later reply by one.
        // Console output answers only `qRcmd`; elsewhere it is a running
        // target's, kept as `wait_stop` keeps it.
        let expects_stop = self.cmd.first() == Some(&b'?');
        let expects_console = self.cmd.starts_with(b"qRcmd,");
        let mut owed = Owed::now();
        let timeout = self.timeout;
        loop {
            match self.recv_owed(&mut owed, timeout) {
                Ok(()) => {}
                Err(RecvErr::Aborted) => {
                    self.unanswered = true;
                    self.unanswered_asked = None;
                    return Err(Error::Aborted);
                }
                Err(e) => {
                    // Under a stall policy the reply may still come late.
                    if self.stall.is_some() && matches!(e, RecvErr::Timeout | RecvErr::Stalled(_)) {
                        self.unanswered = true;
                        self.unanswered_asked =
                            (!matches!(e, RecvErr::Stalled(_))).then_some(owed.asked);
                    }
                    return Err(self.recv_err(e, || format!("reply to {}", self.cmd_text())));
                }
            }
            let p = &self.dec.payload;
            if is_console(p) && !expects_console {
                self.keep_console();
            } else if expects_stop || !looks_like_stop_reply(p) {
                self.answered(&owed);
                return Ok(());
            }
            // A stub may wait for the ack of what it sent unasked.
            self.flush_ack()?;
        }
    }

    /// Keeps the output of the `O` packet just received, up to
    /// [`MAX_CONSOLE`] bytes in all (more is dropped).
    fn keep_console(&mut self) {
        let p = &self.dec.payload;
        if self.console.len() + p.len() / 2 <= MAX_CONSOLE {
            let start = self.console.len();
            self.console.resize(start + p.len() / 2, 0);
            let _ = decode_hex_into(&p[1..], &mut self.console[start..]);
        }
    }

    fn request_str(&mut self, s: &str) -> Result<(), Error> {
        self.cmd.clear();
        self.cmd.extend_from_slice(s.as_bytes());
        self.exchange()
    }

    fn reply_is_error(&self) -> Option<String> {
        let p = &self.dec.payload;
        if p.len() == 3 && p[0] == b'E' && p[1].is_ascii_hexdigit() && p[2].is_ascii_hexdigit() {
            return Some(show(&p[1..]));
        }
        if let Some(text) = p.strip_prefix(b"E.") {
            return Some(show(text));
        }
        None
    }

    fn check_error(&self) -> Result<(), Error> {
        match self.reply_is_error() {
            Some(code) => Err(Error::ErrorReply {
                command: show(&self.cmd),
                code,
            }),
            None => Ok(()),
        }
    }

    fn unexpected(&self, expected: &str) -> Error {
        Error::Unexpected {
            packet: show(&self.dec.payload),
            expected: format!("{expected} in reply to {}", self.cmd_text()),
        }
    }

    /// Checks for `OK`; empty means unsupported (`feature`).
    fn expect_ok(&self, feature: impl FnOnce() -> String) -> Result<(), Error> {
        match &self.dec.payload[..] {
            b"OK" => Ok(()),
            b"" => Err(Error::Unsupported { feature: feature() }),
            _ => {
                self.check_error()?;
                Err(self.unexpected("OK"))
            }
        }
    }

    fn push_tid(&mut self, t: ThreadId) {
        let t = if self.features.multiprocess {
            t
        } else {
            ThreadId { pid: None, ..t }
        };
        let _ = write!(self.cmd, "{t}");
    }

    /// Sends an arbitrary request payload (escaped and framed by the client)
    /// and returns the decoded reply payload. Error replies are returned as
    /// [`Error::ErrorReply`].
    pub fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        self.cmd.clear();
        self.cmd.extend_from_slice(payload);
        self.exchange()?;
        self.check_error()?;
        Ok(self.dec.payload.clone())
    }

    fn xfer_read_string(&mut self, object: &str, annex: &str) -> Result<String, Error> {
        let data = self.xfer_read(object, annex)?;
        String::from_utf8(data).map_err(|_| Error::Malformed {
            packet: format!("qXfer:{object}:read:{annex}"),
            reason: "not UTF-8".into(),
        })
    }

    /// Reads a whole `qXfer` object (chunked `m`/`l` replies).
    pub fn xfer_read(&mut self, object: &str, annex: &str) -> Result<Vec<u8>, Error> {
        let chunk = self.features.packet_size.saturating_sub(5).max(16);
        let mut out = Vec::new();
        loop {
            self.cmd.clear();
            let _ = write!(
                self.cmd,
                "qXfer:{object}:read:{annex}:{:x},{chunk:x}",
                out.len()
            );
            self.exchange()?;
            self.check_error()?;
            let p = &self.dec.payload;
            let (&kind, data) = match p.split_first() {
                Some(x) => x,
                None => {
                    return Err(Error::Unsupported {
                        feature: format!("qXfer:{object}:read ({annex})"),
                    });
                }
            };
            if out.len() + data.len() > MAX_XFER {
                return Err(Error::Malformed {
                    packet: format!("qXfer:{object}:read:{annex}"),
                    reason: "object larger than 1 MiB".into(),
                });
            }
            out.extend_from_slice(data);
            match kind {
                b'l' => return Ok(out),
                b'm' if !data.is_empty() => {}
                b'm' => return Err(self.unexpected("a non-empty `m` chunk")),
                _ => return Err(self.unexpected("`m` or `l` followed by data")),
            }
        }
    }

    // ----- threads and registers ----------------------------------------

    /// Lists threads (vCPUs) with `qfThreadInfo`/`qsThreadInfo`.
    pub fn threads(&mut self) -> Result<Vec<ThreadId>, Error> {
        let mut out = Vec::new();
        self.request_str("qfThreadInfo")?;
        loop {
            self.check_error()?;
            let p = &self.dec.payload;
            match p.split_first() {
                Some((b'l', _)) => return Ok(out),
                Some((b'm', list)) => {
                    for t in list.split(|&b| b == b',').filter(|t| !t.is_empty()) {
                        let t = ThreadId::parse(t).ok_or_else(|| Error::Malformed {
                            packet: show(p),
                            reason: "bad thread id".into(),
                        })?;
                        if let Some(pid) = t.pid.filter(|&p| p != u64::MAX) {
                            self.pid = Some(pid);
                        }
                        out.push(t);
                    }
                    if out.len() > 65536 {
                        return Err(Error::Malformed {
                            packet: show(p),
                            reason: "too many threads".into(),
                        });
                    }
                }
                None => {
                    return Err(Error::Unsupported {
                        feature: "qfThreadInfo".into(),
                    });
                }
                _ => return Err(self.unexpected("`m` thread list or `l`")),
            }
            self.request_str("qsThreadInfo")?;
        }
    }

    fn select_thread(&mut self, op: u8, t: ThreadId) -> Result<(), Error> {
        let cached = if op == b'g' {
            self.selected_g
        } else {
            self.selected_c
        };
        if cached == Some(t) {
            return Ok(());
        }
        self.cmd.clear();
        self.cmd.push(b'H');
        self.cmd.push(op);
        self.push_tid(t);
        self.exchange()?;
        self.expect_ok(|| format!("H{} (thread selection)", op as char))?;
        if op == b'g' {
            self.selected_g = Some(t);
        } else {
            self.selected_c = Some(t);
        }
        Ok(())
    }

    /// Reads all registers of `thread` with `g`.
    pub fn read_registers(&mut self, thread: ThreadId) -> Result<Registers, Error> {
        let mut r = Registers::new(self.regmap.clone());
        self.read_registers_into(thread, &mut r)?;
        Ok(r)
    }

    /// Like [`Client::read_registers`], reusing `regs`' buffer.
    pub fn read_registers_into(
        &mut self,
        thread: ThreadId,
        regs: &mut Registers,
    ) -> Result<(), Error> {
        self.select_thread(b'g', thread)?;
        self.cmd.clear();
        self.cmd.push(b'g');
        self.exchange()?;
        self.check_error()?;
        let p = &self.dec.payload;
        if p.is_empty() || !p.len().is_multiple_of(2) {
            return Err(self.unexpected("hex register contents"));
        }
        if !Arc::ptr_eq(&regs.map, &self.regmap) {
            regs.map = self.regmap.clone();
        }
        regs.bytes.clear();
        regs.bytes.resize(p.len() / 2, 0);
        decode_hex_into(p, &mut regs.bytes).ok_or_else(|| Error::Malformed {
            packet: show(p),
            reason: "bad hex in `g` reply".into(),
        })
    }

    /// Reads one register (at most 64 bits, little-endian) with `p`, falling
    /// back to `g` if the stub does not implement `p`.
    pub fn read_register(&mut self, thread: ThreadId, name: &str) -> Result<u64, Error> {
        let info = self.regmap.lookup(name).ok_or_else(|| Error::Unsupported {
            feature: format!("register `{name}` (not in the target description)"),
        })?;
        if info.bitsize > 64 {
            return Err(Error::Unsupported {
                feature: format!("reading {}-bit register `{name}` as u64", info.bitsize),
            });
        }
        let regnum = info.regnum;
        if self.p_supported {
            let raw = self.read_register_raw_num(thread, regnum)?;
            if let Some(raw) = raw {
                return Ok(le_u64(raw));
            }
        }
        let regs = self.read_registers(thread)?;
        regs.get(name).ok_or_else(|| Error::Unexpected {
            packet: format!("`g` reply of {} bytes", regs.bytes.len()),
            expected: format!("register `{name}` in the `g` reply"),
        })
    }

    /// Reads a register's raw bytes (target order) with `p`; `Ok(None)` if
    /// `p` is unsupported.
    fn read_register_raw_num(
        &mut self,
        thread: ThreadId,
        regnum: u32,
    ) -> Result<Option<&[u8]>, Error> {
        self.select_thread(b'g', thread)?;
        self.cmd.clear();
        let _ = write!(self.cmd, "p{regnum:x}");
        self.exchange()?;
        if self.dec.payload.is_empty() {
            self.p_supported = false;
            return Ok(None);
        }
        self.check_error()?;
        let p = &mut self.dec.payload;
        if !p.len().is_multiple_of(2) {
            return Err(Error::Malformed {
                packet: show(p),
                reason: "odd-length `p` reply".into(),
            });
        }
        // Decode in place: byte i comes from hex digits 2i, 2i+1 (>= i).
        let n = p.len() / 2;
        for i in 0..n {
            let pair = [p[2 * i], p[2 * i + 1]];
            let mut b = [0u8];
            if decode_hex_into(&pair, &mut b).is_none() {
                return Err(Error::Malformed {
                    packet: show(p),
                    reason: "bad hex in `p` reply".into(),
                });
            }
            p[i] = b[0];
        }
        Ok(Some(&self.dec.payload[..n]))
    }

    /// Raw bytes of a register via `p` (falls back to `g`), any width.
    pub fn read_register_raw(&mut self, thread: ThreadId, name: &str) -> Result<Vec<u8>, Error> {
        let regnum = self
            .regmap
            .lookup(name)
            .ok_or_else(|| Error::Unsupported {
                feature: format!("register `{name}` (not in the target description)"),
            })?
            .regnum;
        if self.p_supported
            && let Some(raw) = self.read_register_raw_num(thread, regnum)?
        {
            return Ok(raw.to_vec());
        }
        let regs = self.read_registers(thread)?;
        regs.raw(name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Unexpected {
                packet: format!("`g` reply of {} bytes", regs.bytes.len()),
                expected: format!("register `{name}` in the `g` reply"),
            })
    }

    /// Writes a register (`P`), value little-endian, truncated to its size.
    pub fn write_register(
        &mut self,
        thread: ThreadId,
        name: &str,
        value: u64,
    ) -> Result<(), Error> {
        self.encode_register_write(thread, name, value)?;
        self.exchange()?;
        self.expect_ok(|| "P (register write)".into())
    }

    /// Selects `thread` for `g`/`P` and puts the `P` packet into `self.cmd`.
    fn encode_register_write(
        &mut self,
        thread: ThreadId,
        name: &str,
        value: u64,
    ) -> Result<(), Error> {
        let info = self.regmap.lookup(name).ok_or_else(|| Error::Unsupported {
            feature: format!("register `{name}` (not in the target description)"),
        })?;
        let (regnum, size) = (info.regnum, info.size());
        self.select_thread(b'g', thread)?;
        self.cmd.clear();
        let _ = write!(self.cmd, "P{regnum:x}=");
        let bytes = value.to_le_bytes();
        let mut buf = [0u8; 64];
        let size = size.min(buf.len());
        buf[..size.min(8)].copy_from_slice(&bytes[..size.min(8)]);
        push_hex(&mut self.cmd, &buf[..size]);
        Ok(())
    }

    // ----- memory -------------------------------------------------------

    fn mem_chunk(&self) -> usize {
        (self.features.packet_size.saturating_sub(4) / 2).max(1)
    }

    /// Reads target memory with `m`, split so each reply fits `PacketSize`.
    /// Addresses are virtual, in the selected vCPU's current address space.
    pub fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.ensure_virtual_mode()?;
        self.read_memory_raw(addr, buf)
    }

    /// `m` reads in whatever mode the stub is in.
    fn read_memory_raw(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let chunk = self.mem_chunk();
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(chunk);
            let a = addr.wrapping_add(done as u64);
            self.cmd.clear();
            let _ = write!(self.cmd, "m{a:x},{len:x}");
            self.exchange()?;
            self.check_error()?;
            let p = &self.dec.payload;
            let n = p.len() / 2;
            if !p.len().is_multiple_of(2) || n == 0 || n > len {
                return Err(self.unexpected(&format!("{len} bytes of hex memory contents")));
            }
            if decode_hex_into(p, &mut buf[done..done + n]).is_none() {
                return Err(Error::Malformed {
                    packet: show(p),
                    reason: "bad hex in `m` reply".into(),
                });
            }
            done += n;
        }
        Ok(())
    }

    /// Writes target memory with `M`, split by `PacketSize` (virtual
    /// addresses).
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.ensure_virtual_mode()?;
        let chunk = (self.features.packet_size.saturating_sub(32) / 2).max(1);
        for (i, part) in data.chunks(chunk).enumerate() {
            let a = addr.wrapping_add((i * chunk) as u64);
            self.cmd.clear();
            let _ = write!(self.cmd, "M{a:x},{:x}:", part.len());
            push_hex(&mut self.cmd, part);
            self.exchange()?;
            self.expect_ok(|| "M (memory write)".into())?;
        }
        Ok(())
    }

    /// Reads guest-physical memory: switches the stub to physical mode,
    /// reads, and switches back (also when the read failed). For several
    /// reads in a row, [`Client::with_physical`] switches once.
    pub fn read_physical(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.with_physical(|m| m.read(addr, buf))?
    }

    /// Runs `f` with the stub in physical-memory mode (QEMU:
    /// `Qqemu.PhyMemMode:1`, where `m` reads guest-physical addresses) and
    /// switches back to virtual mode afterwards, whatever `f` returned.
    /// `Err` only if the mode could not be switched; `f`'s own result is
    /// returned inside `Ok`. If switching back fails, the client remembers
    /// and switches back before its next virtual read or write.
    pub fn with_physical<R>(
        &mut self,
        f: impl FnOnce(&mut PhysicalMemory<'_>) -> R,
    ) -> Result<R, Error> {
        self.not_running()?;
        if self.phys_supported == Some(false) {
            return Err(phys_unsupported());
        }
        self.set_phys_mode(true)?;
        let r = f(&mut PhysicalMemory { client: self });
        self.set_phys_mode(false)?;
        Ok(r)
    }

    /// Whether the stub reads physical memory ([`Client::with_physical`]);
    /// asked once (`qqemu.PhyMemMode`), during the handshake.
    pub fn has_physical_mode(&mut self) -> Result<bool, Error> {
        if let Some(s) = self.phys_supported {
            return Ok(s);
        }
        self.request_str("qqemu.PhyMemMode")?;
        let s = matches!(&self.dec.payload[..], b"0" | b"1");
        // A stub left in physical mode (a client that died in it) is put
        // back, so virtual reads mean what they say.
        if self.dec.payload == b"1" {
            self.phys_mode = true;
        }
        self.phys_supported = Some(s);
        Ok(s)
    }

    fn ensure_virtual_mode(&mut self) -> Result<(), Error> {
        if self.phys_mode {
            self.set_phys_mode(false)?;
        }
        Ok(())
    }

    fn set_phys_mode(&mut self, on: bool) -> Result<(), Error> {
        self.cmd.clear();
        let _ = write!(self.cmd, "Qqemu.PhyMemMode:{}", on as u8);
        self.exchange()?;
        if self.dec.payload.is_empty() {
            self.phys_supported = Some(false);
            return Err(phys_unsupported());
        }
        match self.expect_ok(|| "Qqemu.PhyMemMode".into()) {
            Ok(()) => {
                self.phys_supported = Some(true);
                self.phys_mode = on;
                Ok(())
            }
            Err(e) => {
                // Unknown state: assume the worst, so the next virtual
                // access tries to switch back first.
                if !on {
                    self.phys_mode = true;
                }
                Err(e)
            }
        }
    }

    // ----- breakpoints --------------------------------------------------

    fn z_packet(&mut self, op: u8, kind: BreakpointKind, addr: u64, len: u64) -> Result<(), Error> {
        self.cmd.clear();
        let _ = write!(self.cmd, "{}{},{addr:x},{len:x}", op as char, kind.z_type());
        self.exchange()?;
        self.expect_ok(|| format!("{}{} ({kind:?} breakpoints)", op as char, kind.z_type()))
    }

    /// `Z0`-`Z4`. `len` is the kind/length field (1 for x86 breakpoints).
    pub fn insert_breakpoint(
        &mut self,
        kind: BreakpointKind,
        addr: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.z_packet(b'Z', kind, addr, len)
    }

    /// `z0`-`z4`.
    pub fn remove_breakpoint(
        &mut self,
        kind: BreakpointKind,
        addr: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.z_packet(b'z', kind, addr, len)
    }

    // ----- execution control --------------------------------------------

    /// Resumes: `(Some(t), a)` applies `a` to thread `t`, `(None, a)` is the
    /// default for all other threads (threads without an action stay
    /// stopped). An empty slice continues all threads. Sends `vCont` (or, if
    /// unsupported, `c`/`s`, preceded by `Hc` for a single thread); no reply
    /// is expected: the target is running until [`Client::wait_stop`]
    /// returns a stop.
    pub fn resume(&mut self, actions: &[(Option<ThreadId>, ResumeAction)]) -> Result<(), Error> {
        self.not_running()?;
        self.take_unanswered()?;
        self.encode_resume(actions)?;
        self.send_cmd()?;
        self.round_trips += 1;
        self.now_running();
        Ok(())
    }

    /// Writes a register of `thread` (`P`) and resumes (`vCont`) in one
    /// write, then reads the `P` reply. This saves waiting a round trip for
    /// `OK` before resuming, the common case at a probe hit (move the pc
    /// past an instruction, continue). Stubs handle packets in order, so the
    /// `P` reply always arrives before any stop reply. If `P` fails the
    /// target is running anyway and the error is returned. In ack mode this
    /// needs [`Client::set_stub_ignores_acks`]; otherwise it is two exchanges.
    pub fn write_register_and_resume(
        &mut self,
        thread: ThreadId,
        name: &str,
        value: u64,
        actions: &[(Option<ThreadId>, ResumeAction)],
    ) -> Result<(), Error> {
        self.not_running()?;
        self.take_unanswered()?;
        if self.ack_mode && !self.stub_ignores_acks {
            self.write_register(thread, name, value)?;
            return self.resume(actions);
        }
        self.encode_register_write(thread, name, value)?;
        let write_cmd = std::mem::take(&mut self.cmd);
        self.encode_resume(actions)?;
        let resume_cmd = std::mem::replace(&mut self.cmd, write_cmd);
        self.wbuf.clear();
        if std::mem::take(&mut self.pending_ack) {
            self.wbuf.push(b'+');
        }
        self.wstart = self.wbuf.len();
        packet::encode(&mut self.wbuf, &self.cmd);
        packet::encode(&mut self.wbuf, &resume_cmd);
        self.write_wbuf(0..self.wbuf.len(), Self::cmd_text)?;
        self.round_trips += 1;
        let mut owed = Owed::now();
        let timeout = self.timeout;
        self.recv_owed(&mut owed, timeout)
            .map_err(|e| self.recv_err(e, || format!("reply to {}", self.cmd_text())))?;
        self.answered(&owed);
        // The reply is never acked: the stub took the resume packet's `$` as
        // the end of it, and an ack now would reach a running target, which
        // QEMU 8.1+ takes as an interrupt that sends no stop reply.
        self.pending_ack = false;
        self.now_running();
        self.expect_ok(|| "P (register write)".into())
    }

    fn now_running(&mut self) {
        self.running = true;
        self.selected_g = None;
        self.selected_c = None;
    }

    /// Puts the resume packet for `actions` into `self.cmd` (`vCont`, or
    /// `c`/`s` after an `Hc` exchange when the stub lacks `vCont`).
    fn encode_resume(&mut self, actions: &[(Option<ThreadId>, ResumeAction)]) -> Result<(), Error> {
        const ALL_CONTINUE: &[(Option<ThreadId>, ResumeAction)] = &[(None, ResumeAction::Continue)];
        let actions = if actions.is_empty() {
            ALL_CONTINUE
        } else {
            actions
        };
        let defaults = actions.iter().filter(|(t, _)| t.is_none()).count();
        if defaults > 1 {
            return Err(Error::Unsupported {
                feature: "more than one default resume action".into(),
            });
        }
        let letter = |a: ResumeAction| match a {
            ResumeAction::Continue => b'c',
            ResumeAction::Step => b's',
        };
        let vcont_ok = self.features.vcont.is_some_and(|v| {
            actions.iter().all(|(_, a)| match a {
                ResumeAction::Continue => v.cont,
                ResumeAction::Step => v.step,
            })
        });
        if vcont_ok {
            self.cmd.clear();
            self.cmd.extend_from_slice(b"vCont");
            for &(t, a) in actions {
                if let Some(t) = t {
                    self.cmd.push(b';');
                    self.cmd.push(letter(a));
                    self.cmd.push(b':');
                    self.push_tid(t);
                }
            }
            // The default action must come last (leftmost match wins).
            if let Some(&(_, a)) = actions.iter().find(|(t, _)| t.is_none()) {
                self.cmd.push(b';');
                self.cmd.push(letter(a));
            }
        } else {
            let threads: Vec<_> = actions
                .iter()
                .filter_map(|(t, a)| t.map(|t| (t, *a)))
                .collect();
            let action = match (
                threads.as_slice(),
                actions.iter().find(|(t, _)| t.is_none()),
            ) {
                ([], Some(&(_, a))) => a,
                ([(t, a)], _) => {
                    let (t, a) = (*t, *a);
                    self.select_thread(b'c', t)?;
                    a
                }
                _ => {
                    return Err(Error::Unsupported {
                        feature: "vCont (needed for different resume actions per thread)".into(),
                    });
                }
            };
            self.cmd.clear();
            self.cmd.push(letter(action));
        }
        Ok(())
    }

    /// Single-steps one thread (`vCont;s:TID`; other threads stay stopped)
    /// and waits (up to the reply timeout) for its stop reply.
    pub fn step_thread(&mut self, thread: ThreadId) -> Result<StopReply, Error> {
        self.resume(&[(Some(thread), ResumeAction::Step)])?;
        let t = self.timeout;
        self.wait_stop_owed(t, || {
            format!("the stop reply after single-stepping thread {thread}")
        })
    }

    /// Waits for a stop reply the stub owes (after [`Client::interrupt`]
    /// or a step), where silence is a stall: up to `timeout`, or under a
    /// stall policy up to its limit ([`Client::set_stall_policy`]). `what`
    /// names the reply in errors. Console output is collected and skipped.
    pub fn wait_stop_owed(
        &mut self,
        timeout: Duration,
        what: impl Fn() -> String,
    ) -> Result<StopReply, Error> {
        let mut owed = Owed::now();
        loop {
            self.recv_owed(&mut owed, timeout)
                .map_err(|e| self.recv_err(e, &what))?;
            if is_console(&self.dec.payload) {
                self.flush_ack()?;
                self.keep_console();
                continue;
            }
            self.answered(&owed);
            let p = &self.dec.payload;
            return match StopReply::parse(p) {
                Ok(stop) => {
                    self.on_stop(&stop);
                    Ok(stop)
                }
                Err(reason) => Err(Error::Unexpected {
                    packet: show(p),
                    expected: format!("a stop reply ({reason})"),
                }),
            };
        }
    }

    /// Waits for a stop reply. `Ok(None)` on timeout (the target is still
    /// running; a partially received packet is kept for the next call).
    /// `None` waits forever. `O` console packets are collected (see
    /// [`Client::take_console_output`]) and skipped.
    pub fn wait_stop(&mut self, timeout: Option<Duration>) -> Result<Option<StopReply>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.recv(deadline) {
                Ok(()) => {}
                Err(RecvErr::Timeout) => return Ok(None),
                Err(e) => return Err(self.recv_err(e, || "a stop reply".into())),
            }
            if is_console(&self.dec.payload) {
                // A stub may wait for the ack before sending more.
                self.flush_ack()?;
                self.keep_console();
                continue;
            }
            let p = &self.dec.payload;
            return match StopReply::parse(p) {
                Ok(stop) => {
                    self.on_stop(&stop);
                    Ok(Some(stop))
                }
                Err(reason) => Err(Error::Unexpected {
                    packet: show(p),
                    expected: format!("a stop reply ({reason})"),
                }),
            };
        }
    }

    fn on_stop(&mut self, stop: &StopReply) {
        self.running = false;
        if let Some(pid) = stop.thread().and_then(|t| t.pid).filter(|&p| p != u64::MAX) {
            self.pid = Some(pid);
        }
        self.selected_c = None;
        self.selected_g = if self.trust_stop_thread {
            stop.thread()
        } else {
            None
        };
    }

    /// Sends the raw interrupt byte `0x03`. The caller then `wait_stop`s.
    /// To a running target that byte alone: QEMU 8.1+ stops the VM at any
    /// other byte without a stop reply, then drops the `0x03` as garbage.
    pub fn interrupt(&mut self) -> Result<(), Error> {
        if !self.running {
            self.flush_ack()?;
        }
        self.write_bytes(&[0x03])
    }

    /// `?`: why the target is stopped.
    pub fn halt_reason(&mut self) -> Result<StopReply, Error> {
        self.request_str("?")?;
        self.check_error()?;
        let stop = StopReply::parse(&self.dec.payload)
            .map_err(|r| self.unexpected(&format!("a stop reply ({r})")))?;
        self.on_stop(&stop);
        Ok(stop)
    }

    /// `D` (multiprocess: `D;PID`, which QEMU requires, with the pid last
    /// seen in a thread id, default 1): detaches; QEMU removes breakpoints
    /// and resumes the VM.
    pub fn detach(&mut self) -> Result<(), Error> {
        self.cmd.clear();
        self.cmd.push(b'D');
        if self.features.multiprocess {
            let _ = write!(self.cmd, ";{:x}", self.pid.unwrap_or(1));
        }
        self.exchange()?;
        self.flush_ack()?;
        self.expect_ok(|| "D (detach)".into())
    }

    /// `k`: kills the target (QEMU exits). No reply is awaited.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.cmd.clear();
        self.cmd.push(b'k');
        self.send_cmd()?;
        self.round_trips += 1;
        Ok(())
    }

    /// `qRcmd`: runs a monitor command (QEMU: HMP), returning its output.
    pub fn monitor(&mut self, command: &str) -> Result<String, Error> {
        self.cmd.clear();
        self.cmd.extend_from_slice(b"qRcmd,");
        push_hex(&mut self.cmd, command.as_bytes());
        self.exchange()?;
        let deadline = Instant::now() + self.timeout;
        let mut out = Vec::new();
        loop {
            if is_console(&self.dec.payload) {
                self.flush_ack()?;
                let p = &self.dec.payload;
                if out.len() + p.len() / 2 > MAX_CONSOLE {
                    return Err(Error::Malformed {
                        packet: show(p),
                        reason: "monitor output larger than 1 MiB".into(),
                    });
                }
                let start = out.len();
                out.resize(start + p.len() / 2, 0);
                let _ = decode_hex_into(&p[1..], &mut out[start..]);
            } else if self.dec.payload.is_empty() {
                return Err(Error::Unsupported {
                    feature: "qRcmd (monitor commands)".into(),
                });
            } else {
                self.check_error()?;
                let p = &self.dec.payload;
                if p == b"OK" {
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                // Some stubs send the output hex-encoded as the final reply.
                let mut buf = vec![0u8; p.len() / 2];
                if decode_hex_into(p, &mut buf).is_some() {
                    out.extend_from_slice(&buf);
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                return Err(self.unexpected("`O` output packets then `OK`"));
            }
            self.recv(Some(deadline))
                .map_err(|e| self.recv_err(e, || format!("reply to {}", self.cmd_text())))?;
        }
    }
}

#[cfg(test)]
impl Client {
    pub(crate) fn on_stop_for_test(&mut self, t: ThreadId) {
        self.on_stop(&StopReply::Signal {
            signal: 5,
            thread: Some(t),
            reason: None,
        });
    }
    pub(crate) fn selected_g_for_test(&mut self, t: ThreadId) {
        self.selected_g = Some(t);
    }
    pub(crate) fn in_packet_for_test(&self) -> bool {
        self.dec.in_packet()
    }
}

/// Guest-physical memory, while the stub is in physical mode (see
/// [`Client::with_physical`]).
pub struct PhysicalMemory<'a> {
    client: &'a mut Client,
}

impl PhysicalMemory<'_> {
    /// Reads guest-physical memory at `addr` (split by `PacketSize`).
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.client.read_memory_raw(addr, buf)
    }
}

fn phys_unsupported() -> Error {
    Error::Unsupported {
        feature: "physical memory reads (Qqemu.PhyMemMode)".into(),
    }
}

/// `O` + hex console output (but not `OK`).
fn is_console(p: &[u8]) -> bool {
    p.len() >= 3
        && p[0] == b'O'
        && !p.len().is_multiple_of(2)
        && p[1..].iter().all(u8::is_ascii_hexdigit)
}

/// `Sxx`, `Txx...`, `Wxx`, `Xxx`: the shapes of a stop reply. No other reply
/// starts with one of these letters followed by two hex digits.
fn looks_like_stop_reply(p: &[u8]) -> bool {
    p.len() >= 3
        && matches!(p[0], b'S' | b'T' | b'W' | b'X')
        && p[1].is_ascii_hexdigit()
        && p[2].is_ascii_hexdigit()
}
