//! A connection to vmprobe's plugin inside a QEMU: requests and their
//! answers, and the plugin's own messages (output, traced events, `exit()`)
//! kept in order for whoever serves the run.

use crate::Error;
use plugin_protocol::{
    Attach, Detached, FromPlugin, PROTOCOL_VERSION, ProtocolError, ToPlugin, read_message,
    write_message,
};
use probe_lang::value::{Key, Value};
use probe_runtime::{Cell, MapStore};
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long a request may take. Requests a vCPU must serve (the slide, a
/// memory read) wait for a guest that runs; the plugin itself gives up on
/// a reinstrumentation after 10 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PluginClient {
    writer: UnixStream,
    /// Decoded by a reader thread, so that no frame is cut by a timeout.
    incoming: Receiver<Result<FromPlugin, ProtocolError>>,
    next_id: u64,
    /// Messages that answer no request, received while waiting for one.
    events: VecDeque<FromPlugin>,
    pub vcpus: u32,
    /// The plugin's version (of the vmprobe it was built with).
    pub plugin_version: String,
}

/// The reader thread holds a clone of the socket, so dropping the writer
/// alone would leave the connection open, and the plugin, which serves one
/// vmprobe at a time, busy: shut down, both ends see it closed.
impl Drop for PluginClient {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

impl PluginClient {
    /// Connects to the plugin's socket and checks that both sides speak the
    /// same protocol.
    pub fn connect(path: &Path) -> Result<PluginClient, Error> {
        let writer = UnixStream::connect(path).map_err(|e| Error::Connect {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut reader = writer.try_clone().map_err(ProtocolError::Io)?;
        let (tx, incoming) = channel();
        std::thread::Builder::new()
            .name("vmprobe-plugin-rx".into())
            .spawn(move || {
                loop {
                    let m = read_message::<FromPlugin>(&mut reader);
                    let end = m.is_err();
                    if tx.send(m).is_err() || end {
                        return;
                    }
                }
            })
            .map_err(ProtocolError::Io)?;
        let mut client = PluginClient {
            writer,
            incoming,
            next_id: 1,
            events: VecDeque::new(),
            vcpus: 0,
            plugin_version: String::new(),
        };
        client.send(&ToPlugin::Hello {
            protocol: PROTOCOL_VERSION,
            vmprobe: env!("CARGO_PKG_VERSION").into(),
        })?;
        match client.receive(Some(Instant::now() + Duration::from_secs(5)))? {
            Some(FromPlugin::Hello {
                protocol,
                plugin,
                vcpus,
            }) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(Error::Version {
                        plugin,
                        plugin_protocol: protocol,
                        ours: env!("CARGO_PKG_VERSION").into(),
                        our_protocol: PROTOCOL_VERSION,
                    });
                }
                client.vcpus = vcpus;
                client.plugin_version = plugin;
            }
            Some(FromPlugin::Error { message, .. }) => return Err(Error::Remote(message)),
            Some(other) => {
                return Err(Error::Unexpected(
                    format!("{other:?}").chars().take(80).collect(),
                ));
            }
            None => return Err(Error::Timeout("the plugin's hello")),
        }
        Ok(client)
    }

    fn send(&mut self, m: &ToPlugin) -> Result<(), Error> {
        write_message(&mut self.writer, m).map_err(Error::from)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The next message, waiting until `deadline` (`None`: no wait).
    fn receive(&mut self, deadline: Option<Instant>) -> Result<Option<FromPlugin>, Error> {
        let got = match deadline {
            None => match self.incoming.try_recv() {
                Ok(m) => Ok(m),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(None),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(Error::Closed),
            },
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                match self.incoming.recv_timeout(wait) {
                    Ok(m) => Ok(m),
                    Err(RecvTimeoutError::Timeout) => return Ok(None),
                    Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
                }
            }
        };
        match got {
            Ok(Ok(m)) => Ok(Some(m)),
            Ok(Err(ProtocolError::Closed)) => Err(Error::Closed),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e),
        }
    }

    /// Sends a request and waits for its answer; messages that are not
    /// answers are kept for [`PluginClient::next_event`].
    fn request(
        &mut self,
        what: &'static str,
        make: impl FnOnce(u64) -> ToPlugin,
    ) -> Result<FromPlugin, Error> {
        self.request_within(what, REQUEST_TIMEOUT, make)
    }

    /// [`request`](Self::request), given up on after `timeout` (a late
    /// answer is dropped when it comes).
    fn request_within(
        &mut self,
        what: &'static str,
        timeout: Duration,
        make: impl FnOnce(u64) -> ToPlugin,
    ) -> Result<FromPlugin, Error> {
        let id = self.id();
        self.send(&make(id))?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(m) = self.receive(Some(deadline))? else {
                return Err(Error::Timeout(what));
            };
            match answer_id(&m) {
                Some(got) if got == id => {
                    return match m {
                        FromPlugin::Error { message, .. } => Err(Error::Remote(message)),
                        m => Ok(m),
                    };
                }
                Some(0) => {
                    if let FromPlugin::Error { message, .. } = m {
                        return Err(Error::Remote(message));
                    }
                }
                // An answer to a request given up on: dropped.
                Some(_) => {}
                None => self.events.push_back(m),
            }
        }
    }

    /// The KASLR slide, found by the plugin in a vCPU thread (the guest
    /// must be running).
    pub fn detect_slide(
        &mut self,
        samples: Vec<kernel_image::TextSample>,
    ) -> Result<Option<u64>, Error> {
        match self.request("the KASLR slide", |id| ToPlugin::DetectSlide {
            id,
            samples,
        })? {
            FromPlugin::Slide { slide, .. } => Ok(slide),
            m => Err(unexpected(&m)),
        }
    }

    /// Guest-virtual memory, read in a vCPU thread; `None` if unmapped.
    pub fn read_memory(&mut self, addr: u64, len: u64) -> Result<Option<Vec<u8>>, Error> {
        match self.request("a guest memory read", |id| ToPlugin::ReadMemory {
            id,
            addr,
            len,
        })? {
            FromPlugin::Memory { bytes, .. } => Ok(bytes),
            m => Err(unexpected(&m)),
        }
    }

    pub fn attach(&mut self, mut a: Attach) -> Result<(), Error> {
        self.request("attaching", |id| {
            a.id = id;
            ToPlugin::Attach(Box::new(a))
        })
        .map(drop)
    }

    /// `threads`: recorded events carry their task.
    pub fn start(&mut self, values: MapStore, start_ns: u64, threads: bool) -> Result<(), Error> {
        self.request("starting the probes", |id| ToPlugin::Start {
            id,
            values,
            start_ns,
            threads,
        })
        .map(drop)
    }

    /// Whether the plugin's socket thread answers within `timeout`.
    pub fn ping_within(&mut self, timeout: Duration) -> Result<(), Error> {
        self.request_within("a ping", timeout, |id| ToPlugin::Ping { id })
            .map(drop)
    }

    /// Every shard and the value maps, merged.
    pub fn maps(&mut self) -> Result<MapStore, Error> {
        self.maps_within(REQUEST_TIMEOUT).map(|(store, _)| store)
    }

    /// Every map, and the plugin's counts so far, if the plugin answers
    /// within `timeout`.
    pub fn maps_within(
        &mut self,
        timeout: Duration,
    ) -> Result<(MapStore, plugin_protocol::PluginStats), Error> {
        match self.request_within("the maps", timeout, |id| ToPlugin::Maps {
            id,
            maps: Vec::new(),
        })? {
            FromPlugin::Maps { store, stats, .. } => Ok((store, stats)),
            m => Err(unexpected(&m)),
        }
    }

    pub fn clear(&mut self, map: u32, zero: bool) -> Result<(), Error> {
        self.request("clearing a map", |id| ToPlugin::Clear { id, map, zero })
            .map(drop)
    }

    pub fn read_value(&mut self, map: u32, key: Key) -> Result<Option<Value>, Error> {
        match self.request("a map value", |id| ToPlugin::ReadValue { id, map, key })? {
            FromPlugin::Value { value, .. } => Ok(value),
            m => Err(unexpected(&m)),
        }
    }

    pub fn write_value(&mut self, map: u32, key: Key, cell: Option<Cell>) -> Result<(), Error> {
        self.request("writing a map value", |id| ToPlugin::WriteValue {
            id,
            map,
            key,
            cell,
        })
        .map(drop)
    }

    pub fn delete(&mut self, map: u32, key: Key) -> Result<(), Error> {
        self.request("deleting a map entry", |id| ToPlugin::Delete {
            id,
            map,
            key,
        })
        .map(drop)
    }

    /// Instrumentation off; everything the plugin held.
    pub fn detach(&mut self) -> Result<Detached, Error> {
        match self.request("detaching", |id| ToPlugin::Detach { id })? {
            FromPlugin::Detached(d) => Ok(*d),
            m => Err(unexpected(&m)),
        }
    }

    /// The plugin's next message that answers no request (output, traced
    /// events, `exit()`), waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<FromPlugin>, Error> {
        if let Some(m) = self.events.pop_front() {
            return Ok(Some(m));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Some(m) = self.receive(Some(deadline))? else {
                return Ok(None);
            };
            match answer_id(&m) {
                None => return Ok(Some(m)),
                Some(0) => {
                    if let FromPlugin::Error { message, .. } = m {
                        return Err(Error::Remote(message));
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// The request a message answers; `None` for the plugin's own messages,
/// `Some(0)` for an error no request caused.
fn answer_id(m: &FromPlugin) -> Option<u64> {
    match m {
        FromPlugin::Error { id, .. }
        | FromPlugin::Slide { id, .. }
        | FromPlugin::Memory { id, .. }
        | FromPlugin::Done { id }
        | FromPlugin::Maps { id, .. }
        | FromPlugin::Value { id, .. } => Some(*id),
        FromPlugin::Detached(d) => Some(d.id),
        FromPlugin::Hello { .. }
        | FromPlugin::Output(_)
        | FromPlugin::Traced(_)
        | FromPlugin::Exit => None,
    }
}

fn unexpected(m: &FromPlugin) -> Error {
    Error::Unexpected(format!("{m:?}").chars().take(80).collect())
}
