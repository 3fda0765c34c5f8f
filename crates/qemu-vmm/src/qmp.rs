//! A synchronous QMP client.
//!
//! Hand-rolled rather than the `qapi` crate: vmprobe needs about ten
//! commands, a deadline on every read (qapi's sync stream API blocks for as
//! long as the socket does), replies matched to requests by `id` (so a reply
//! that arrives after a timeout is discarded instead of answering the next
//! request), and the offending text in errors; qapi's generated types also
//! follow the newest QAPI schema rather than QEMU 7.2's (7.2 has
//! `trace-event-get-state`, no `trace-event-list`).
//!
//! ```no_run
//! # fn main() -> qemu_vmm::Result<()> {
//! use qemu_vmm::Qmp;
//! use std::time::Duration;
//! let mut qmp = Qmp::connect_unix("/tmp/vm/qmp.sock".as_ref(), Duration::from_secs(5))?;
//! let status = qmp.query_status()?;
//! qmp.trace_event_set_state("serial_write", true)?;
//! let stub = qmp.open_gdbstub_tcp(0)?; // a free loopback port
//! # let _ = (status, stub); Ok(()) }
//! ```

use crate::{Error, Result, io_err};
use host_clock::monotonic_ns;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest message accepted; QEMU's largest replies (e.g. every trace event
/// with its state, about 250 KB) fit many times over.
const MAX_MESSAGE: usize = 16 << 20;
/// Asynchronous events kept until taken; older ones are dropped (and counted).
const MAX_QUEUED_EVENTS: usize = 4096;

/// A QMP command: its wire name, arguments (the struct's fields) and reply.
pub trait Command: Serialize {
    const NAME: &'static str;
    type Reply: DeserializeOwned;
}

/// A reply without data (`{"return": {}}`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Empty {}

macro_rules! no_arg_command {
    ($ty:ident, $name:literal, $reply:ty) => {
        #[derive(Clone, Debug, Default, Serialize)]
        pub struct $ty {}
        impl Command for $ty {
            const NAME: &'static str = $name;
            type Reply = $reply;
        }
    };
}

no_arg_command!(QmpCapabilities, "qmp_capabilities", Empty);
no_arg_command!(QueryStatus, "query-status", StatusInfo);
no_arg_command!(Stop, "stop", Empty);
no_arg_command!(Cont, "cont", Empty);
no_arg_command!(Quit, "quit", Empty);

no_arg_command!(QueryCpusFast, "query-cpus-fast", Vec<CpuInfoFast>);

/// One vCPU of `query-cpus-fast`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CpuInfoFast {
    #[serde(rename = "cpu-index")]
    pub cpu_index: u32,
    /// The host thread running this vCPU: the `tid` of the trace events it
    /// emits (with KVM or multi-threaded TCG; single-threaded TCG runs all
    /// vCPUs on one thread).
    #[serde(rename = "thread-id")]
    pub thread_id: u32,
    #[serde(rename = "qom-path")]
    pub qom_path: String,
    #[serde(default)]
    pub target: String,
}

/// `trace-event-get-state`: the events matching a name pattern (`*` and `?`
/// wildcards) with their state. QEMU 7.2's name for a trace-event list.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEventGetState {
    pub name: String,
}
impl Command for TraceEventGetState {
    const NAME: &'static str = "trace-event-get-state";
    type Reply = Vec<TraceEventInfo>;
}

/// `trace-event-set-state`: enables or disables every event matching a pattern.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEventSetState {
    pub name: String,
    pub enable: bool,
    /// Skip events compiled out of this binary instead of failing.
    #[serde(rename = "ignore-unavailable", skip_serializing_if = "Option::is_none")]
    pub ignore_unavailable: Option<bool>,
}
impl Command for TraceEventSetState {
    const NAME: &'static str = "trace-event-set-state";
    type Reply = Empty;
}

/// `human-monitor-command`: an HMP command line; the reply is its output.
#[derive(Clone, Debug, Serialize)]
pub struct HumanMonitorCommand {
    #[serde(rename = "command-line")]
    pub command_line: String,
}
impl Command for HumanMonitorCommand {
    const NAME: &'static str = "human-monitor-command";
    type Reply = String;
}

/// `query-status`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StatusInfo {
    pub running: bool,
    pub status: RunState,
    #[serde(default)]
    pub singlestep: bool,
}

/// QEMU's run states (QAPI `RunState`), any newer one as `Other`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Debug,
    Inmigrate,
    InternalError,
    IoError,
    Paused,
    Postmigrate,
    Prelaunch,
    FinishMigrate,
    RestoreVm,
    Running,
    SaveVm,
    Shutdown,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
    #[serde(other)]
    Other,
}

/// One entry of `trace-event-get-state`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TraceEventInfo {
    pub name: String,
    pub state: TraceEventState,
    #[serde(default)]
    pub vcpu: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TraceEventState {
    /// Compiled out of this QEMU build.
    Unavailable,
    Disabled,
    Enabled,
}

/// The server's greeting.
#[derive(Clone, Debug, Deserialize)]
pub struct Greeting {
    pub version: VersionInfo,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct VersionInfo {
    pub qemu: QemuVersion,
    #[serde(default)]
    pub package: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// An asynchronous QMP event (STOP, RESUME, SHUTDOWN, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    /// The event's `data`, `Null` when it has none.
    pub data: Value,
    /// QEMU's own stamp, `g_get_real_time` (CLOCK_REALTIME), in microseconds.
    pub realtime_us: Option<i64>,
    /// When this client read it, CLOCK_MONOTONIC ns.
    pub received_ns: u64,
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }
    fn set_write_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(Some(t)),
            Conn::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(buf),
            Conn::Tcp(s) => s.write_all(buf),
        }
    }
}

/// A QMP session, past the capabilities negotiation.
pub struct Qmp {
    conn: Conn,
    buf: Vec<u8>,
    events: VecDeque<QmpEvent>,
    events_dropped: u64,
    timeout: Duration,
    greeting: Greeting,
    next_id: u64,
}

impl Qmp {
    /// Connects to QEMU's `-qmp unix:PATH,server=on` socket and negotiates
    /// capabilities. `timeout` bounds the handshake and, afterwards, each
    /// request (see [`Qmp::set_timeout`]).
    pub fn connect_unix(path: &Path, timeout: Duration) -> Result<Qmp> {
        let s = UnixStream::connect(path).map_err(|source| Error::Connect {
            addr: path.display().to_string(),
            source,
        })?;
        Self::handshake(Conn::Unix(s), timeout)
    }

    /// Like [`Qmp::connect_unix`], but retries while the socket does not
    /// exist yet or refuses connections (QEMU creates the file with bind(2)
    /// before it calls listen(2)), for up to `timeout` in all.
    pub fn connect_unix_wait(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return Self::handshake(Conn::Unix(s), left);
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(Error::Connect {
                        addr: path.display().to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Connects over TCP. Only loopback addresses are accepted: QMP has no
    /// authentication, so a monitor must never be reachable from the network.
    pub fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<Qmp> {
        if !addr.ip().is_loopback() {
            return Err(Error::Protocol(format!(
                "refusing QMP over TCP to {addr}: only loopback addresses are allowed"
            )));
        }
        let s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
        let _ = s.set_nodelay(true);
        Self::handshake(Conn::Tcp(s), timeout)
    }

    fn handshake(conn: Conn, timeout: Duration) -> Result<Qmp> {
        let timeout = timeout.max(Duration::from_millis(1));
        conn.set_write_timeout(timeout)
            .map_err(io_err("QMP socket"))?;
        let mut qmp = Qmp {
            conn,
            buf: Vec::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            timeout,
            greeting: Greeting {
                version: VersionInfo {
                    qemu: QemuVersion {
                        major: 0,
                        minor: 0,
                        micro: 0,
                    },
                    package: String::new(),
                },
                capabilities: Vec::new(),
            },
            next_id: 1,
        };
        let deadline = Instant::now() + timeout;
        let (text, msg) = qmp.read_message(deadline, "the QMP greeting")?;
        let greeting = msg
            .get("QMP")
            .cloned()
            .ok_or_else(|| Error::Malformed {
                text: text.clone(),
                reason: "expected the QMP greeting".into(),
            })
            .and_then(|g| {
                serde_json::from_value::<Greeting>(g).map_err(|e| Error::Malformed {
                    text,
                    reason: format!("bad greeting: {e}"),
                })
            })?;
        qmp.greeting = greeting;
        qmp.execute(&QmpCapabilities {})?;
        Ok(qmp)
    }

    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The reply timeout of each request.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
        let _ = self.conn.set_write_timeout(self.timeout);
    }

    /// Runs a typed command.
    pub fn execute<C: Command>(&mut self, cmd: &C) -> Result<C::Reply> {
        let args = serde_json::to_value(cmd).map_err(|e| Error::Protocol(e.to_string()))?;
        let ret = self.execute_raw(C::NAME, Some(args))?;
        serde_json::from_value(ret.clone()).map_err(|e| Error::Malformed {
            text: ret.to_string(),
            reason: format!("unexpected reply to {}: {e}", C::NAME),
        })
    }

    /// Runs any command; returns its `return` value.
    pub fn execute_raw(&mut self, name: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = serde_json::json!({ "execute": name, "id": id });
        if let Some(args) = arguments.filter(|a| !a.is_null()) {
            req["arguments"] = args;
        }
        let mut line = req.to_string().into_bytes();
        line.push(b'\n');
        let deadline = Instant::now() + self.timeout;
        self.conn.write_all(&line).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::Timeout {
                what: format!("QEMU to accept `{name}`"),
                after: self.timeout,
            },
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => Error::Closed {
                what: format!("the reply to `{name}`"),
            },
            _ => Error::Io {
                what: "QMP socket".into(),
                source: e,
            },
        })?;
        let what = format!("the reply to `{name}`");
        loop {
            let (text, mut msg) = self.read_message(deadline, &what)?;
            // Replies to requests that timed out earlier carry older ids.
            if msg
                .get("id")
                .and_then(Value::as_u64)
                .is_some_and(|i| i != id)
            {
                continue;
            }
            if let Some(ret) = msg.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(Error::Qmp {
                    command: name.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(Error::Malformed {
                text,
                reason: format!("neither a reply nor an event while waiting for {what}"),
            });
        }
    }

    /// Reads messages until a reply or a non-event; queues events on the way.
    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<(String, Value)> {
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                let msg: Value = serde_json::from_str(&text).map_err(|e| Error::Malformed {
                    text: text.clone(),
                    reason: e.to_string(),
                })?;
                if !msg.is_object() {
                    return Err(Error::Malformed {
                        text,
                        reason: "not a JSON object".into(),
                    });
                }
                if let Some(name) = msg.get("event").and_then(Value::as_str) {
                    self.queue_event(name.to_string(), &msg);
                    continue;
                }
                return Ok((text, msg));
            }
            if self.buf.len() > MAX_MESSAGE {
                let text = String::from_utf8_lossy(&self.buf[..200]).into_owned();
                return Err(Error::Malformed {
                    text,
                    reason: format!("message longer than {MAX_MESSAGE} bytes"),
                });
            }
            self.fill(deadline, what)?;
        }
    }

    /// One read from the socket, bounded by `deadline`.
    fn fill(&mut self, deadline: Instant, what: &str) -> Result<()> {
        let now = Instant::now();
        let timeout = || Error::Timeout {
            what: what.to_string(),
            after: self.timeout,
        };
        if now >= deadline {
            return Err(timeout());
        }
        self.conn
            .set_read_timeout((deadline - now).max(Duration::from_millis(1)))
            .map_err(io_err("QMP socket"))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.conn.read(&mut chunk) {
            Ok(0) => {
                let partial = String::from_utf8_lossy(&self.buf).trim().to_string();
                if partial.is_empty() {
                    Err(Error::Closed {
                        what: what.to_string(),
                    })
                } else {
                    Err(Error::Malformed {
                        text: partial,
                        reason: format!(
                            "connection closed in the middle of a message while waiting for {what}"
                        ),
                    })
                }
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(timeout())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Err(Error::Closed {
                what: what.to_string(),
            }),
            Err(source) => Err(Error::Io {
                what: "QMP socket".into(),
                source,
            }),
        }
    }

    fn queue_event(&mut self, name: String, msg: &Value) {
        let ts = msg.get("timestamp");
        let realtime_us = ts.and_then(|t| {
            let s = t.get("seconds")?.as_i64()?;
            let us = t.get("microseconds")?.as_i64()?;
            Some(s * 1_000_000 + us)
        });
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(QmpEvent {
            name,
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            realtime_us,
            received_ns: monotonic_ns(),
        });
    }

    /// Takes the queued asynchronous events, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Events dropped because nobody took them (the queue holds 4096).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Reads whatever QEMU sends within `timeout` (events only), so events
    /// arrive without issuing a command. Returns how many are queued. Events
    /// read before an error (e.g. QEMU hanging up) stay queued.
    pub fn poll_events(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        match self.read_message(deadline, "QMP events") {
            Ok((text, _)) => Err(Error::Malformed {
                text,
                reason: "a message that is not an event, with no request pending".into(),
            }),
            Err(Error::Timeout { .. }) => Ok(self.events.len()),
            Err(e) => Err(e),
        }
    }

    /// Waits for the first queued or arriving event called `name`; removes it
    /// (and keeps the others queued).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e.name == name) {
                return Ok(self.events.remove(i).expect("index just found"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!("QMP event {name}"),
                    after: timeout,
                });
            }
            // QEMU may send its last events and hang up in one go (SHUTDOWN
            // on exit): look at the queue before reporting the close.
            if let Err(e) = self.poll_events((deadline - now).min(Duration::from_millis(50))) {
                return match self.events.iter().position(|e| e.name == name) {
                    Some(i) => Ok(self.events.remove(i).expect("index just found")),
                    None => Err(e),
                };
            }
        }
    }

    pub fn query_status(&mut self) -> Result<StatusInfo> {
        self.execute(&QueryStatus {})
    }

    /// The vCPUs and their host threads (maps a trace event's `tid` to a
    /// vCPU index).
    pub fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfoFast>> {
        self.execute(&QueryCpusFast {})
    }

    /// The trace events whose names match `pattern` (`*`/`?` wildcards; `*`
    /// for all 4000+), with their state.
    pub fn trace_event_list(&mut self, pattern: &str) -> Result<Vec<TraceEventInfo>> {
        self.execute(&TraceEventGetState {
            name: pattern.to_string(),
        })
    }

    /// Enables or disables every trace event matching `pattern`. An unknown
    /// name is a QMP error (`GenericError: unknown event "..."`).
    pub fn trace_event_set_state(&mut self, pattern: &str, enable: bool) -> Result<()> {
        self.execute(&TraceEventSetState {
            name: pattern.to_string(),
            enable,
            ignore_unavailable: None,
        })
        .map(drop)
    }

    /// Runs an HMP command line; returns its output text.
    pub fn human_monitor_command(&mut self, command_line: &str) -> Result<String> {
        self.execute(&HumanMonitorCommand {
            command_line: command_line.to_string(),
        })
    }

    /// Opens QEMU's gdbstub on a running VM (HMP `gdbserver DEVICE`), for VMs
    /// started without `-gdb`. `device` is a chardev spec; only loopback TCP
    /// and Unix sockets are accepted. See [`Qmp::open_gdbstub_tcp`] and
    /// [`Qmp::open_gdbstub_unix`].
    pub fn open_gdbstub(&mut self, device: &str) -> Result<()> {
        let loopback_tcp = device.strip_prefix("tcp:").is_some_and(|rest| {
            let host = rest.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
            host == "127.0.0.1" || host == "localhost" || host == "[::1]"
        });
        if !(loopback_tcp || device.starts_with("unix:")) {
            return Err(Error::Protocol(format!(
                "refusing gdbstub device {device:?}: use tcp:127.0.0.1:PORT or unix:PATH"
            )));
        }
        let command = format!("gdbserver {device}");
        let out = self.human_monitor_command(&command)?;
        if out.contains("Waiting for gdb connection") {
            Ok(())
        } else {
            Err(Error::Monitor {
                command,
                output: out.trim().to_string(),
            })
        }
    }

    /// Opens a gdbstub on 127.0.0.1:`port`; `port` 0 picks a free port (by
    /// binding and releasing it, so another process could take it in
    /// between: QEMU then fails and this returns the error).
    pub fn open_gdbstub_tcp(&mut self, port: u16) -> Result<SocketAddr> {
        let port = if port == 0 {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io_err("finding a free loopback port"))?
                .port()
        } else {
            port
        };
        self.open_gdbstub(&format!("tcp:127.0.0.1:{port}"))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Opens a gdbstub listening on the Unix socket `path` (which should be in
    /// a private directory).
    pub fn open_gdbstub_unix(&mut self, path: &Path) -> Result<()> {
        let p = path.to_str().filter(|p| !p.contains(',')).ok_or_else(|| {
            Error::Protocol(format!(
                "gdbstub socket path {path:?} must be UTF-8 without commas (chardev syntax)"
            ))
        })?;
        self.open_gdbstub(&format!("unix:{p},server=on,wait=off"))
    }

    /// Closes the gdbstub opened at run time (HMP `gdbserver none`).
    pub fn close_gdbstub(&mut self) -> Result<()> {
        let out = self.human_monitor_command("gdbserver none")?;
        if out.contains("Disabled gdbserver") {
            Ok(())
        } else {
            Err(Error::Monitor {
                command: "gdbserver none".into(),
                output: out.trim().to_string(),
            })
        }
    }

    /// Pauses every vCPU.
    pub fn stop(&mut self) -> Result<()> {
        self.execute(&Stop {}).map(drop)
    }

    /// Resumes the VM (also starts a VM launched with `-S`).
    pub fn cont(&mut self) -> Result<()> {
        self.execute(&Cont {}).map(drop)
    }

    /// Asks QEMU to exit. QEMU may close the socket before or after replying;
    /// both count as success.
    pub fn quit(mut self) -> Result<()> {
        match self.execute(&Quit {}) {
            Ok(_) | Err(Error::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
