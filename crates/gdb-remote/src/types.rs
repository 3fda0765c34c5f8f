//! Protocol value types: thread ids, stop replies, breakpoint kinds, features.

use std::fmt;

use crate::packet::parse_hex_u64;

/// A thread (for VMMs: a vCPU). `pid` is set when the stub speaks the
/// multiprocess extension (`pP.T`); QEMU reports vCPU n as `p01.0n`.
/// The value `u64::MAX` stands for `-1` (all threads / all processes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThreadId {
    pub pid: Option<u64>,
    pub tid: u64,
}

impl ThreadId {
    /// `-1`: all threads.
    pub const ALL: ThreadId = ThreadId {
        pid: None,
        tid: u64::MAX,
    };
    /// `0`: any thread.
    pub const ANY: ThreadId = ThreadId { pid: None, tid: 0 };

    pub const fn new(tid: u64) -> Self {
        ThreadId { pid: None, tid }
    }

    pub const fn with_pid(pid: u64, tid: u64) -> Self {
        ThreadId {
            pid: Some(pid),
            tid,
        }
    }

    /// Parses `p1.2`, `p01.01`, `2`, `-1`, `p1.-1` (hex, as on the wire).
    pub fn parse(s: &[u8]) -> Option<ThreadId> {
        fn num(s: &[u8]) -> Option<u64> {
            if s == b"-1" {
                Some(u64::MAX)
            } else {
                parse_hex_u64(s)
            }
        }
        if let Some(rest) = s.strip_prefix(b"p") {
            match rest.iter().position(|&b| b == b'.') {
                Some(dot) => Some(ThreadId {
                    pid: Some(num(&rest[..dot])?),
                    tid: num(&rest[dot + 1..])?,
                }),
                // `pP` alone means all threads of process P.
                None => Some(ThreadId {
                    pid: Some(num(rest)?),
                    tid: u64::MAX,
                }),
            }
        } else {
            Some(ThreadId {
                pid: None,
                tid: num(s)?,
            })
        }
    }
}

struct HexOrAll(u64);
impl fmt::Display for HexOrAll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u64::MAX {
            f.write_str("-1")
        } else {
            write!(f, "{:x}", self.0)
        }
    }
}

impl fmt::Display for ThreadId {
    /// Wire format: `p1.2` or `2` (hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(p) => write!(f, "p{}.{}", HexOrAll(p), HexOrAll(self.tid)),
            None => write!(f, "{}", HexOrAll(self.tid)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// `watch`: write watchpoint.
    Write,
    /// `rwatch`: read watchpoint.
    Read,
    /// `awatch`: access watchpoint.
    Access,
}

/// Why the target stopped (from the key:value pairs of a `T` stop reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Watch {
        kind: WatchKind,
        addr: u64,
    },
    SwBreak,
    HwBreak,
    /// Any other non-register key, as `key` or `key:value`.
    Other(String),
}

/// A stop reply packet (`S`, `T`, `W`, `X`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReply {
    Signal {
        signal: u8,
        thread: Option<ThreadId>,
        reason: Option<StopReason>,
    },
    Exited {
        status: u8,
    },
    Terminated {
        signal: u8,
    },
}

impl StopReply {
    /// The thread that stopped, when the stub said.
    pub fn thread(&self) -> Option<ThreadId> {
        match self {
            StopReply::Signal { thread, .. } => *thread,
            _ => None,
        }
    }

    /// Parses a stop reply payload; `Err` carries the reason.
    pub fn parse(p: &[u8]) -> Result<StopReply, &'static str> {
        let (&kind, rest) = p.split_first().ok_or("empty stop reply")?;
        let code = |rest: &[u8]| -> Result<u8, &'static str> {
            let two = rest.get(..2).ok_or("stop reply too short")?;
            parse_hex_u64(two)
                .map(|v| v as u8)
                .ok_or("bad signal/status number")
        };
        match kind {
            b'S' => Ok(StopReply::Signal {
                signal: code(rest)?,
                thread: None,
                reason: None,
            }),
            b'W' => Ok(StopReply::Exited {
                status: code(rest)?,
            }),
            b'X' => Ok(StopReply::Terminated {
                signal: code(rest)?,
            }),
            b'T' => {
                let signal = code(rest)?;
                let mut thread = None;
                let mut reason = None;
                for pair in rest[2..].split(|&b| b == b';') {
                    if pair.is_empty() {
                        continue;
                    }
                    let (key, val) = match pair.iter().position(|&b| b == b':') {
                        Some(c) => (&pair[..c], &pair[c + 1..]),
                        None => (pair, &b""[..]),
                    };
                    let watch = |k| -> Result<Option<StopReason>, &'static str> {
                        Ok(Some(StopReason::Watch {
                            kind: k,
                            addr: parse_hex_u64(val).ok_or("bad watchpoint address")?,
                        }))
                    };
                    let r = match key {
                        b"thread" => {
                            thread = Some(ThreadId::parse(val).ok_or("bad thread id")?);
                            None
                        }
                        b"watch" => watch(WatchKind::Write)?,
                        b"rwatch" => watch(WatchKind::Read)?,
                        b"awatch" => watch(WatchKind::Access)?,
                        b"swbreak" => Some(StopReason::SwBreak),
                        b"hwbreak" => Some(StopReason::HwBreak),
                        b"core" => None,
                        // Expedited register values `n:r`.
                        k if parse_hex_u64(k).is_some() => None,
                        _ => Some(StopReason::Other(
                            String::from_utf8_lossy(pair).into_owned(),
                        )),
                    };
                    if reason.is_none() {
                        reason = r;
                    }
                }
                Ok(StopReply::Signal {
                    signal,
                    thread,
                    reason,
                })
            }
            _ => Err("not a stop reply"),
        }
    }
}

/// Breakpoint / watchpoint type, i.e. the `Z`/`z` packet type digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakpointKind {
    /// `Z0`: software breakpoint (QEMU: same as hardware under TCG).
    Software,
    /// `Z1`: hardware breakpoint.
    Hardware,
    /// `Z2`: write watchpoint.
    WriteWatch,
    /// `Z3`: read watchpoint.
    ReadWatch,
    /// `Z4`: access watchpoint.
    AccessWatch,
}

impl BreakpointKind {
    pub fn z_type(self) -> u8 {
        match self {
            BreakpointKind::Software => 0,
            BreakpointKind::Hardware => 1,
            BreakpointKind::WriteWatch => 2,
            BreakpointKind::ReadWatch => 3,
            BreakpointKind::AccessWatch => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResumeAction {
    Continue,
    Step,
}

/// Actions listed in the reply to `vCont?`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VContSupport {
    pub cont: bool,
    pub cont_signal: bool,
    pub step: bool,
    pub step_signal: bool,
    pub stop: bool,
    pub range_step: bool,
}

impl VContSupport {
    /// Parses a `vCont;c;C;s;S` reply; `None` if it is not one.
    pub fn parse(reply: &[u8]) -> Option<VContSupport> {
        let rest = reply.strip_prefix(b"vCont")?;
        let mut v = VContSupport::default();
        for a in rest.split(|&b| b == b';').filter(|a| !a.is_empty()) {
            match a {
                b"c" => v.cont = true,
                b"C" => v.cont_signal = true,
                b"s" => v.step = true,
                b"S" => v.step_signal = true,
                b"t" => v.stop = true,
                b"r" => v.range_step = true,
                _ => {}
            }
        }
        Some(v)
    }
}

/// What the stub said in its `qSupported` reply (plus `vCont?`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Largest packet the stub accepts (`PacketSize`, default 400).
    pub packet_size: usize,
    /// `QStartNoAckMode` succeeded.
    pub no_ack: bool,
    pub multiprocess: bool,
    pub swbreak: bool,
    pub hwbreak: bool,
    /// `qXfer:features:read+`.
    pub xfer_features: bool,
    /// `None` when `vCont?` is unsupported (we fall back to `c`/`s`).
    pub vcont: Option<VContSupport>,
    /// Every entry of the `qSupported` reply, e.g. `PacketSize=1000`, `swbreak+`.
    pub raw: Vec<String>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            packet_size: 400,
            no_ack: false,
            multiprocess: false,
            swbreak: false,
            hwbreak: false,
            xfer_features: false,
            vcont: None,
            raw: Vec::new(),
        }
    }
}

impl Features {
    /// Parses a `qSupported` reply.
    pub fn parse_qsupported(reply: &[u8]) -> Features {
        let mut f = Features {
            raw: reply
                .split(|&b| b == b';')
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            ..Features::default()
        };
        if let Some(ps) = f
            .value("PacketSize")
            .and_then(|v| parse_hex_u64(v.as_bytes()))
        {
            // Clamp: tiny values would make progress impossible, huge ones
            // exceed what we accept.
            f.packet_size = (ps as usize).clamp(32, crate::packet::MAX_PACKET);
        }
        f.multiprocess = f.supports("multiprocess");
        f.swbreak = f.supports("swbreak");
        f.hwbreak = f.supports("hwbreak");
        f.xfer_features = f.supports("qXfer:features:read");
        f
    }

    /// True if the stub listed `name+` (or `name=value`).
    pub fn supports(&self, name: &str) -> bool {
        self.raw.iter().any(|e| {
            e.strip_prefix(name)
                .is_some_and(|r| r == "+" || r.starts_with('='))
        })
    }

    /// The value of a `name=value` entry.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.raw
            .iter()
            .find_map(|e| e.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids() {
        assert_eq!(ThreadId::parse(b"p01.02"), Some(ThreadId::with_pid(1, 2)));
        assert_eq!(ThreadId::parse(b"1f"), Some(ThreadId::new(0x1f)));
        assert_eq!(ThreadId::parse(b"-1"), Some(ThreadId::ALL));
        assert_eq!(ThreadId::parse(b"p1.-1").unwrap().to_string(), "p1.-1");
        assert_eq!(ThreadId::parse(b"px.1"), None);
        assert_eq!(ThreadId::parse(b""), None);
        assert_eq!(ThreadId::with_pid(1, 2).to_string(), "p1.2");
        assert_eq!(ThreadId::new(2).to_string(), "2");
        assert_eq!(ThreadId::new(0x1a).to_string(), "1a");
    }

    #[test]
    fn stop_replies() {
        assert_eq!(
            StopReply::parse(b"T05thread:p01.01;").unwrap(),
            StopReply::Signal {
                signal: 5,
                thread: Some(ThreadId::with_pid(1, 1)),
                reason: None
            }
        );
        assert_eq!(
            StopReply::parse(b"T05thread:p01.02;awatch:ffff8000;core:1;").unwrap(),
            StopReply::Signal {
                signal: 5,
                thread: Some(ThreadId::with_pid(1, 2)),
                reason: Some(StopReason::Watch {
                    kind: WatchKind::Access,
                    addr: 0xffff8000
                })
            }
        );
        assert_eq!(
            StopReply::parse(b"T0510:1234;06:abcd;thread:3;hwbreak:;").unwrap(),
            StopReply::Signal {
                signal: 5,
                thread: Some(ThreadId::new(3)),
                reason: Some(StopReason::HwBreak)
            }
        );
        assert_eq!(
            StopReply::parse(b"T05swbreak:;").unwrap(),
            StopReply::Signal {
                signal: 5,
                thread: None,
                reason: Some(StopReason::SwBreak)
            }
        );
        assert_eq!(
            StopReply::parse(b"T05library:;").unwrap(),
            StopReply::Signal {
                signal: 5,
                thread: None,
                reason: Some(StopReason::Other("library:".into()))
            }
        );
        assert_eq!(
            StopReply::parse(b"S02").unwrap(),
            StopReply::Signal {
                signal: 2,
                thread: None,
                reason: None
            }
        );
        assert_eq!(
            StopReply::parse(b"W00;process:1").unwrap(),
            StopReply::Exited { status: 0 }
        );
        assert_eq!(
            StopReply::parse(b"X09").unwrap(),
            StopReply::Terminated { signal: 9 }
        );
        for bad in [
            &b""[..],
            b"T",
            b"T0",
            b"Tzz",
            b"OK",
            b"T05thread:zz;",
            b"T05watch:;",
        ] {
            assert!(StopReply::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn features() {
        let f = Features::parse_qsupported(
            b"PacketSize=1000;qXfer:features:read+;ReverseStep+;QStartNoAckMode+;multiprocess+;vContSupported+",
        );
        assert_eq!(f.packet_size, 0x1000);
        assert!(f.xfer_features && f.multiprocess && !f.swbreak);
        assert!(f.supports("QStartNoAckMode"));
        assert!(!f.supports("QStartNoAck"));
        assert_eq!(
            VContSupport::parse(b"vCont;c;C;s;S"),
            Some(VContSupport {
                cont: true,
                cont_signal: true,
                step: true,
                step_signal: true,
                ..Default::default()
            })
        );
        assert_eq!(VContSupport::parse(b""), None);
    }
}
