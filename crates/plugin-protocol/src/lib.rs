//! plugin-protocol: what vmprobe and its QEMU plugin say to each other over
//! the plugin's Unix socket, as types, and how the messages are framed.
//!
//! A frame is a 4-byte little-endian length and that many bytes of a
//! postcard-encoded message. Lengths are bounded ([`MAX_FRAME`]) and every
//! message is decoded into these types or rejected with a
//! [`ProtocolError`]: a hostile or corrupt peer gets an error, never a
//! panic or an unbounded allocation.
//!
//! A session, from vmprobe's side:
//! 1. [`ToPlugin::Hello`] / [`FromPlugin::Hello`]: versions (a mismatch is
//!    an error naming both);
//! 2. [`ToPlugin::DetectSlide`] / [`FromPlugin::Slide`]: the KASLR slide,
//!    found in a vCPU thread by matching the image's text samples;
//!    [`ToPlugin::ReadMemory`] reads guest memory the same way (for
//!    checking that `F+OFFSET` starts an instruction);
//! 3. [`ToPlugin::Attach`]: the program, the guest kernel's description
//!    and the probe sites; the plugin instruments nothing yet;
//! 4. [`ToPlugin::Start`]: BEGIN's values; from here hits run handlers and
//!    their output streams back as [`FromPlugin::Output`];
//! 5. map requests while running ([`ToPlugin::Maps`], [`ToPlugin::Clear`],
//!    value-map reads and writes for handlers vmprobe runs itself);
//! 6. [`ToPlugin::Detach`] / [`FromPlugin::Detached`]: instrumentation off,
//!    and everything the plugin held (maps, errors, calls in flight,
//!    counters). The VM runs on, with no callback left, and the session
//!    is over: the plugin is free for the next vmprobe before `Detached`
//!    is sent, and reads nothing more on this connection.

#![forbid(unsafe_code)]
use kernel_image::TextSample;
use linux_guest::KernelDescription;
use probe_lang::Executable;
use probe_lang::value::{Key, Value};
use probe_plan::{GuestThread, ProbeSite, TimerProbe};
use probe_runtime::{Cell, MapStore, OutputEvent, TracedValue};
use std::io::{Read, Write};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 6;

/// The largest frame either side accepts: an attach carries the kernel's
/// symbol table and unwind tables (a few MiB for Debian's 6.1).
pub const MAX_FRAME: usize = 64 << 20;

/// The largest guest read a [`ToPlugin::ReadMemory`] may ask for.
pub const MAX_READ: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("plugin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("plugin socket closed")]
    Closed,
    #[error("frame of {len} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge { len: usize },
    #[error("malformed message ({len} bytes): {reason}")]
    Malformed { len: usize, reason: String },
}

/// vmprobe to the plugin. Requests carry an id the answer repeats.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ToPlugin {
    Hello {
        protocol: u32,
        vmprobe: String,
    },
    /// Find the KASLR slide: `samples` of the image's text at link-time
    /// addresses.
    DetectSlide {
        id: u64,
        samples: Vec<TextSample>,
    },
    /// Read guest-virtual memory (kernel addresses) from a vCPU thread.
    ReadMemory {
        id: u64,
        addr: u64,
        len: u64,
    },
    Attach(Box<Attach>),
    /// Serve hits from now on; `values` holds the value maps as BEGIN left
    /// them (the plugin owns them from here).
    Start {
        id: u64,
        values: MapStore,
        start_ns: u64,
        /// Recorded events carry their task ([`TracedEvent::thread`]):
        /// what a recording with guest-thread tracks (Perfetto) needs.
        threads: bool,
    },
    /// Every shard of these maps merged (for printing).
    Maps {
        id: u64,
        maps: Vec<u32>,
    },
    /// `clear(@m)` (or `zero(@m)`) in every shard.
    Clear {
        id: u64,
        map: u32,
        zero: bool,
    },
    /// A value map's entry, for a handler vmprobe runs (`interval`).
    ReadValue {
        id: u64,
        map: u32,
        key: Key,
    },
    /// `@m[k] = v` (`None`: delete) from a handler vmprobe runs.
    WriteValue {
        id: u64,
        map: u32,
        key: Key,
        cell: Option<Cell>,
    },
    /// `delete(@m[k])` of an aggregation, in every shard.
    Delete {
        id: u64,
        map: u32,
        key: Key,
    },
    Detach {
        id: u64,
    },
    /// Answered with `Done` by the plugin's socket thread: a QEMU that does
    /// not answer is stopped (or wedged), not merely idle.
    Ping {
        id: u64,
    },
}

/// What the plugin is given to run a program.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Attach {
    pub id: u64,
    /// The VM's name in the run (`guest` in scripts).
    pub guest: String,
    pub exec: Executable,
    pub kernel: KernelDescription,
    pub slide: u64,
    pub sites: Vec<ProbeSite>,
    /// `profile` probes (sampled on every vCPU at their rate).
    pub samplers: Vec<TimerProbe>,
    pub step_budget: u64,
    pub map_limit: usize,
    /// Events handed to `vmprobe record`: none, what `trace()` traces, or
    /// every hit as well.
    pub record: RecordMode,
    /// Events each vCPU's output ring holds before it drops (and counts)
    /// new ones.
    pub ring_events: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecordMode {
    Off,
    Traced,
    EveryHit,
}

/// The plugin to vmprobe.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum FromPlugin {
    Hello {
        protocol: u32,
        /// The plugin's version (vmprobe's version when it was built).
        plugin: String,
        vcpus: u32,
    },
    /// A request failed; `id` 0 for an error no request caused.
    Error {
        id: u64,
        message: String,
    },
    Slide {
        id: u64,
        slide: Option<u64>,
    },
    Memory {
        id: u64,
        bytes: Option<Vec<u8>>,
    },
    /// Attach, Start, Clear or WriteValue took effect.
    Done {
        id: u64,
    },
    Maps {
        id: u64,
        store: MapStore,
        /// The counts so far, for `--metrics` while the run goes on.
        stats: PluginStats,
    },
    Value {
        id: u64,
        value: Option<Value>,
    },
    /// What handlers printed, in time order within a batch.
    Output(Vec<Printed>),
    /// What handlers traced for `vmprobe record`.
    Traced(Vec<TracedEvent>),
    /// A handler called `exit()`.
    Exit,
    Detached(Box<Detached>),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Printed {
    pub ts_ns: u64,
    pub vcpu: u32,
    pub event: OutputEvent,
}

/// One recorded event (a hit, a return, or a `trace()` call).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TracedEvent {
    pub ts_ns: u64,
    pub vcpu: u32,
    /// Index of the probe site, for its function's name.
    pub site: u32,
    pub probe: String,
    /// When the matching call entered (a return).
    pub entry_ns: Option<u64>,
    /// The `trace(name = ...)` call site, or `None` for the probe's own
    /// fields.
    pub trace_site: Option<u32>,
    pub fields: Vec<(String, TracedValue)>,
    /// `snapshot()` rather than an event.
    pub snapshot: bool,
    /// The task it ran in, when `Start` asked for tasks (and it could be
    /// read).
    pub thread: Option<GuestThread>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PluginStats {
    pub hits: u64,
    pub returns: u64,
    pub missed_returns: u64,
    pub samples: u64,
    /// Output events dropped because a vCPU's ring was full.
    pub lost_events: u64,
    /// Panics caught at the FFI boundary (each a counted handler failure).
    pub caught_panics: u64,
    /// Times translated code was flushed to change what is instrumented.
    pub reinstrumentations: u64,
    /// Service time per hit, inside the vCPU thread: the sum and count of
    /// nanoseconds, and the largest.
    pub service_ns_sum: u64,
    pub service_ns_max: u64,
    /// Hits by service time, in the buckets of [`service_bucket`].
    pub service_ns_hist: Vec<u64>,
    /// After the detach took effect, QEMU calls no translation callback of
    /// the plugin's: the guest runs its code as without the plugin.
    pub idle_untranslated: bool,
}

/// Buckets of the service-time histogram: four per power of two (each
/// within 25% of its lower bound), which is what tells a median of 0.8 us
/// from one of 1.0 us; plain powers of two put both under 1.02 us. Exact
/// below 8 ns; from 1.75 * 2^40 ns (32 minutes) on, all share the last one.
pub const SERVICE_BUCKETS: usize = 4 * 40;

/// The histogram bucket of a service time of `ns` nanoseconds.
pub fn service_bucket(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros() as usize; // >= 2
    let quarter = ((ns >> (octave - 2)) & 3) as usize;
    (4 * (octave - 1) + quarter).min(SERVICE_BUCKETS - 1)
}

/// The smallest time above bucket `i`'s (its exclusive upper bound, ns).
pub fn service_bucket_end(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let octave = (i / 4 + 1) as u32;
    let quarter = (i % 4) as u64;
    (5 + quarter) << (octave - 2)
}

impl PluginStats {
    /// The median service time, as the upper bound of its bucket (ns).
    pub fn service_ns_median(&self) -> Option<u64> {
        let total: u64 = self.service_ns_hist.iter().sum();
        let mut seen = 0;
        for (i, n) in self.service_ns_hist.iter().enumerate() {
            seen += n;
            if total > 0 && seen * 2 >= total {
                return Some(service_bucket_end(i));
            }
        }
        None
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Detached {
    pub id: u64,
    /// Every shard and the value maps, merged.
    pub store: MapStore,
    pub errors: Vec<(String, String, u64)>,
    /// Calls still awaiting their return: (vCPU, site, entry time, task
    /// as the entry read it).
    pub unfinished: Vec<(u32, u32, u64, Option<GuestThread>)>,
    pub stats: PluginStats,
}

/// Writes one message as a frame.
pub fn write_message<M: serde::Serialize>(
    w: &mut impl Write,
    msg: &M,
) -> Result<(), ProtocolError> {
    let body = postcard::to_allocvec(msg).map_err(|e| ProtocolError::Malformed {
        len: 0,
        reason: e.to_string(),
    })?;
    if body.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. A clean end of stream before a frame
/// starts is [`ProtocolError::Closed`].
pub fn read_message<M: serde::de::DeserializeOwned>(r: &mut impl Read) -> Result<M, ProtocolError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| ProtocolError::Malformed {
        len,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_bucket_holding_the_middle_hit() {
        let mut stats = PluginStats::default();
        assert_eq!(stats.service_ns_median(), None);
        // 3 hits of 800 ns, 2 of 5000 ns: the 3rd of 5 is one of the first.
        stats.service_ns_hist = vec![0; SERVICE_BUCKETS];
        stats.service_ns_hist[service_bucket(800)] = 3;
        stats.service_ns_hist[service_bucket(5000)] = 2;
        assert_eq!(stats.service_ns_median(), Some(896));
        stats.service_ns_hist[service_bucket(5000)] = 4;
        assert_eq!(stats.service_ns_median(), Some(5120));
    }

    #[test]
    fn service_buckets_tile_the_line_within_a_quarter() {
        let mut start = 0;
        for i in 0..SERVICE_BUCKETS - 1 {
            let end = service_bucket_end(i);
            assert!(end > start, "bucket {i}: [{start}, {end})");
            assert_eq!(service_bucket(start), i, "{start}");
            assert_eq!(service_bucket(end - 1), i, "{}", end - 1);
            // Every bucket is within a quarter of its lower bound.
            assert!(
                (end - start) * 4 <= start.max(4),
                "bucket {i}: [{start}, {end})"
            );
            start = end;
        }
        assert_eq!(service_bucket(1 << 41), SERVICE_BUCKETS - 1);
        assert_eq!(service_bucket(u64::MAX), SERVICE_BUCKETS - 1);
        // 0.80 us and 1.00 us land in different buckets, both under 1.02 us.
        assert!(service_bucket_end(service_bucket(800)) <= 1000);
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &ToPlugin::Hello {
                protocol: PROTOCOL_VERSION,
                vmprobe: "0.1.0".into(),
            },
        )
        .unwrap();
        write_message(
            &mut buf,
            &ToPlugin::ReadMemory {
                id: 7,
                addr: 0xffff_ffff_8100_0000,
                len: 16,
            },
        )
        .unwrap();
        let mut r = buf.as_slice();
        assert!(matches!(
            read_message::<ToPlugin>(&mut r).unwrap(),
            ToPlugin::Hello {
                protocol: PROTOCOL_VERSION,
                ..
            }
        ));
        assert!(matches!(
            read_message::<ToPlugin>(&mut r).unwrap(),
            ToPlugin::ReadMemory { id: 7, len: 16, .. }
        ));
        assert!(matches!(
            read_message::<ToPlugin>(&mut r),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn hostile_frames_are_errors() {
        // A length past the limit is refused before anything is allocated.
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_message::<ToPlugin>(&mut huge.as_slice()),
            Err(ProtocolError::TooLarge { .. })
        ));
        // Garbage of every length decodes to an error, never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..512usize {
            let mut frame = (len as u32).to_le_bytes().to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                frame.push(seed as u8);
            }
            let _ = read_message::<ToPlugin>(&mut frame.as_slice());
            let _ = read_message::<FromPlugin>(&mut frame.as_slice());
        }
        // A frame cut short is an I/O error.
        let mut cut = 16u32.to_le_bytes().to_vec();
        cut.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read_message::<ToPlugin>(&mut cut.as_slice()),
            Err(ProtocolError::Io(_))
        ));
    }
}
