//! The protocol client, one file per concern: the connection and its
//! framing (`conn`), the handshake (`connect`), stalls (`stall`), queries
//! and monitor commands (`query`), registers, memory, and run control
//! (breakpoints, resume, stops).

mod conn;
mod connect;
mod memory;
mod query;
mod registers;
mod run_control;
mod stall;

use conn::{Conn, RecvErr, is_console};
pub use memory::PhysicalMemory;
use stall::Owed;
pub use stall::{Stall, StallPolicy};

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
    /// The first error after which the connection cannot be trusted (see
    /// [`Client::lost`]); a cell because errors are made under `&self`.
    lost: std::cell::OnceCell<String>,
    /// Bytes received since the last packet, ack or nak: what a timeout
    /// says came (noise, or a packet too slow to finish).
    since_packet: usize,
    stall: Option<StallPolicy>,
    /// While set, a late reply fails its request at the reply timeout, as
    /// without a policy (see [`Client::set_stalls_deferred`]).
    stalls_deferred: bool,
}

impl Client {
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

    /// The first error that broke the connection (closed, a socket error,
    /// bytes that are not packets), if one did: no later request can be
    /// trusted, so the caller ends its use of this stub.
    pub fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
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
