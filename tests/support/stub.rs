//! Fake GDB stubs on a Unix socket: one that answers just the handshake
//! and then stalls ([`Stall`], for what vmprobe does when a stub stalls),
//! and hostile ones ([`Hostile`]: garbage, bad checksums, huge packets,
//! floods, ...) around a stub that behaves as a stopped QEMU whose guest
//! kernel is the image's, at slide 0 (and, with [`Hostile::Hits`], whose
//! guest hits the probe while it runs, or then goes silent:
//! [`Hostile::StallsAfter`]).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a running guest of [`Hostile::Hits`] stops at a breakpoint.
const HIT_EVERY: Duration = Duration::from_millis(10);

/// What the stub does once connected.
#[derive(Clone, Copy, Debug)]
pub enum Stall {
    /// Reads everything, answers nothing (the handshake included).
    AtOnce,
    /// Answers the handshake, then nothing from the first memory read on.
    AfterHandshake,
    /// Answers every memory read "unmapped", one byte per `interval`.
    Drip(Duration),
}

/// How a hostile stub misbehaves. Each one answers as [`Hostile::Behaves`]
/// does unless it says otherwise.
#[derive(Clone, Copy, Debug)]
pub enum Hostile {
    /// A stopped QEMU whose memory holds the image's `.text` samples at
    /// slide 0 (zeros elsewhere): vmprobe finds the slide, arms, serves
    /// and detaches.
    Behaves,
    /// Random bytes (every value, `$` and `#` among them), endlessly,
    /// instead of any reply.
    RandomBytes,
    /// Text without a `$`, endlessly: no packet ever starts.
    Noise,
    /// Every reply, and its retransmission after each `-`, with a wrong
    /// checksum.
    BadChecksums,
    /// Answers `qSupported` with `$` and this many bytes, and no `#` ever.
    Unterminated(usize),
    /// Answers the first memory read with a well-formed packet of this many
    /// bytes.
    Huge(usize),
    /// Answers `qSupported`, then closes the connection.
    CloseAfterQSupported,
    /// Sends its replies one byte per interval, from the handshake on.
    Trickle(Duration),
    /// Behaves, and from the connection on sends this packet, unasked,
    /// as fast as the socket takes it.
    Flood(&'static str),
    /// Behaves, and while the guest runs it stops every 10 ms with a
    /// breakpoint's stop reply (vmprobe with one probe site takes it as a
    /// hit there without reading the pc).
    Hits,
    /// As [`Hostile::Hits`]; once `hits` hits were sent, the next packet
    /// that has an answer goes unanswered for `silent_for` (a QEMU stopped
    /// with SIGSTOP), and is then answered as if nothing happened; with
    /// `None` nothing is ever answered again.
    StallsAfter {
        hits: usize,
        silent_for: Option<Duration>,
    },
    /// As [`Hostile::Hits`]; once `hits` hits were sent, the next memory
    /// read closes the connection instead of being answered (QEMU killed
    /// while a handler reads).
    ClosesOnReadAfter { hits: usize },
}

pub struct FakeStub {
    pub path: PathBuf,
    /// Packets received so far, and memory reads among them.
    pub packets: Arc<AtomicUsize>,
    pub reads: Arc<AtomicUsize>,
    /// Bytes the stub has sent, floods and noise included.
    pub sent: Arc<AtomicUsize>,
    /// Breakpoint stops sent while the guest ran ([`Hostile::Hits`]).
    pub hits: Arc<AtomicUsize>,
    /// The packet a [`Hostile::StallsAfter`] stub went silent on, once it
    /// has.
    pub stalled_on: Arc<Mutex<Option<String>>>,
    _dir: tempfile::TempDir,
}

/// What a stub counts: packets, memory reads, bytes sent, hits, and the
/// packet it stalled on.
#[derive(Clone, Default)]
struct Counts {
    packets: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    stalled_on: Arc<Mutex<Option<String>>>,
}

impl FakeStub {
    pub fn start(stall: Stall) -> FakeStub {
        Self::spawn(move |conn, counts| serve(conn, stall, counts))
    }

    /// A stub that misbehaves as `how`, with `memory` as its guest memory.
    pub fn hostile(how: Hostile, memory: Memory) -> FakeStub {
        Self::spawn(move |conn, counts| serve_hostile(conn, how, &memory, counts))
    }

    /// Listens, and serves the first connection with `serve` in a thread.
    fn spawn(serve: impl FnOnce(UnixStream, Counts) + Send + 'static) -> FakeStub {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stub.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let counts = Counts::default();
        let stub = FakeStub {
            path,
            packets: counts.packets.clone(),
            reads: counts.reads.clone(),
            sent: counts.sent.clone(),
            hits: counts.hits.clone(),
            stalled_on: counts.stalled_on.clone(),
            _dir: dir,
        };
        std::thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                serve(conn, counts);
            }
        });
        stub
    }

    /// `--vm` for `vmprobe attach`, typed with `kernel`.
    pub fn vm_spec(&self, kernel: &std::path::Path) -> String {
        self.vm_spec_named("vm0", kernel)
    }

    /// `--vm` naming the VM `name`.
    pub fn vm_spec_named(&self, name: &str, kernel: &std::path::Path) -> String {
        format!(
            "{name}=gdb:unix:{},kernel:{}",
            self.path.display(),
            kernel.display()
        )
    }
}

fn serve(mut conn: UnixStream, stall: Stall, counts: Counts) {
    let Counts {
        packets,
        reads,
        sent,
        ..
    } = counts;
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    let mut silent = false;
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        input.extend_from_slice(&buf[..n]);
        // Acks and interrupts are skipped; whole `$...#xx` packets taken.
        while let Some(start) = input.iter().position(|&b| b == b'$') {
            let Some(hash) = input[start..].iter().position(|&b| b == b'#') else {
                break;
            };
            let end = start + hash + 3;
            if input.len() < end {
                break;
            }
            let packet = String::from_utf8_lossy(&input[start + 1..start + hash]).into_owned();
            input.drain(..end);
            packets.fetch_add(1, Ordering::SeqCst);
            if packet.starts_with('m') {
                reads.fetch_add(1, Ordering::SeqCst);
            }
            silent |= match stall {
                Stall::AtOnce => true,
                Stall::AfterHandshake => packet.starts_with('m'),
                Stall::Drip(_) => false,
            };
            if silent {
                continue;
            }
            let reply = reply_to(&packet);
            let framed = frame(reply);
            let written = match stall {
                Stall::Drip(every) if packet.starts_with('m') => framed.iter().all(|b| {
                    std::thread::sleep(every);
                    conn.write_all(std::slice::from_ref(b)).is_ok()
                }),
                _ => conn.write_all(&framed).is_ok(),
            };
            if !written {
                return;
            }
            sent.fetch_add(framed.len(), Ordering::SeqCst);
        }
    }
}

/// What QEMU would say, as far as vmprobe asks before memory reads; every
/// memory read is unmapped.
fn reply_to(packet: &str) -> &'static str {
    match packet {
        p if p.starts_with("qSupported") => "PacketSize=1000;QStartNoAckMode+;multiprocess+",
        "QStartNoAckMode" | "D;1" => "OK",
        "vCont?" => "vCont;c;C;s;S",
        "qqemu.PhyMemMode" => "0",
        "?" => "T05thread:p01.01;",
        "qfThreadInfo" => "mp01.01",
        "qsThreadInfo" => "l",
        p if p.starts_with('m') => "E14",
        _ => "",
    }
}

fn frame(payload: &str) -> Vec<u8> {
    frame_bytes(payload.as_bytes(), 0)
}

/// `$payload#cs`, with the checksum off by `wrong` (0: right).
fn frame_bytes(payload: &[u8], wrong: u8) -> Vec<u8> {
    let sum = payload.iter().fold(0u8, |s, &b| s.wrapping_add(b)) ^ wrong;
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.push(b'$');
    v.extend_from_slice(payload);
    v.extend_from_slice(format!("#{sum:02x}").as_bytes());
    v
}

/// Guest memory as a hostile stub shows it: the kernel image's `.text`
/// samples at slide 0, zeros everywhere else.
#[derive(Clone)]
pub struct Memory(Arc<Vec<(u64, Vec<u8>)>>);

impl Memory {
    /// The samples vmprobe looks for the slide with, from `kernel` (through
    /// vmprobe's own symbol cache).
    pub fn kernel_text(kernel: &Path) -> Memory {
        let cache = qemu_guest::cache_dir().join("symbols");
        let symbols = kernel_image::KernelSymbols::load(kernel, Some(&cache)).unwrap();
        let samples = symbols.text_samples().iter();
        Memory(Arc::new(
            samples.map(|s| (s.addr, s.bytes.clone())).collect(),
        ))
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (start, bytes) in self.0.iter() {
            for (i, o) in out.iter_mut().enumerate() {
                let at = addr.wrapping_add(i as u64).wrapping_sub(*start);
                if let Some(&b) = usize::try_from(at).ok().and_then(|at| bytes.get(at)) {
                    *o = b;
                }
            }
        }
        out
    }
}

/// What arrives from vmprobe.
enum Incoming {
    Packet(String),
    Interrupt,
    Nak,
}

/// Takes the next packet, interrupt or nak from `input` (acks skipped).
fn take_incoming(input: &mut Vec<u8>) -> Option<Incoming> {
    loop {
        match *input.first()? {
            0x03 => {
                input.remove(0);
                return Some(Incoming::Interrupt);
            }
            b'-' => {
                input.remove(0);
                return Some(Incoming::Nak);
            }
            b'$' => {
                let hash = input.iter().position(|&b| b == b'#')?;
                if input.len() < hash + 3 {
                    return None;
                }
                let packet = String::from_utf8_lossy(&input[1..hash]).into_owned();
                input.drain(..hash + 3);
                return Some(Incoming::Packet(packet));
            }
            _ => {
                input.remove(0);
            }
        }
    }
}

/// The stop reply of a stopped vCPU 1.
const STOP: &str = "T05thread:p01.01;";
/// QEMU's stop reply to an interrupt: SIGINT, not a breakpoint's SIGTRAP.
const INTERRUPTED: &str = "T02thread:p01.01;";
/// Just enough of QEMU's x86-64 description for vmprobe to find `rip`.
const TARGET_XML: &str = "<?xml version=\"1.0\"?><target><architecture>i386:x86-64</architecture>\
    <feature name=\"org.gnu.gdb.i386.core\"><reg name=\"rip\" bitsize=\"64\" type=\"code_ptr\" regnum=\"16\"/>\
    </feature></target>";

/// A stopped QEMU's answer to `packet` (`None`: none, the guest runs).
fn answer(packet: &str, memory: &Memory, running: &AtomicBool) -> Option<String> {
    let reply = match packet {
        p if p.starts_with("qSupported") => {
            "PacketSize=1000;QStartNoAckMode+;multiprocess+;qXfer:features:read+".into()
        }
        p if p.starts_with("qXfer:features:read:target.xml:0,") => format!("l{TARGET_XML}"),
        p if p.starts_with("qXfer:features:read:") => "l".into(),
        "vCont?" => "vCont;c;C;s;S".into(),
        "qqemu.PhyMemMode" => "0".into(),
        "?" => STOP.into(),
        "qfThreadInfo" => "mp01.01".into(),
        "qsThreadInfo" => "l".into(),
        p if p.starts_with("vCont;c") || p == "c" => {
            running.store(true, Ordering::SeqCst);
            return None;
        }
        p if p.starts_with("vCont;s") => STOP.into(),
        p if p.starts_with('m') => {
            let parsed = p[1..].split_once(',').and_then(|(a, l)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(l, 16).ok()?,
                ))
            });
            match parsed {
                Some((addr, len)) => memory
                    .read(addr, len)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                None => "E01".into(),
            }
        }
        p if p.starts_with('p') => "0000000000000000".into(),
        "QStartNoAckMode" | "D;1" => "OK".into(),
        p if ["Z", "z", "H", "P", "M"].iter().any(|c| p.starts_with(c)) => "OK".into(),
        _ => String::new(),
    };
    Some(reply)
}

fn serve_hostile(mut conn: UnixStream, how: Hostile, memory: &Memory, counts: Counts) {
    if let Hostile::RandomBytes | Hostile::Noise = how {
        return endless(conn, how, &counts.sent);
    }
    let Counts {
        packets,
        reads,
        hits,
        stalled_on,
        ..
    } = counts.clone();
    // One writer sends the replies, and the flood (or the hits) between
    // them.
    let Ok(out) = conn.try_clone() else { return };
    let (replies, queue) = mpsc::channel();
    let running = Arc::new(AtomicBool::new(false));
    let guest = Arc::clone(&running);
    std::thread::spawn(move || write_out(out, queue, how, &guest, &counts));
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    let mut last = Vec::new();
    let mut huge_sent = false;
    let mut mute = false;
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        input.extend_from_slice(&buf[..n]);
        while let Some(incoming) = take_incoming(&mut input) {
            let mut close = false;
            let reply = match incoming {
                Incoming::Interrupt => running
                    .swap(false, Ordering::SeqCst)
                    .then(|| frame(INTERRUPTED)),
                Incoming::Nak => Some(last.clone()),
                Incoming::Packet(p) => {
                    packets.fetch_add(1, Ordering::SeqCst);
                    if p.starts_with('m') {
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                    let qsupported = p.starts_with("qSupported");
                    close = qsupported && matches!(how, Hostile::CloseAfterQSupported);
                    if let Hostile::ClosesOnReadAfter { hits: after } = how
                        && p.starts_with('m')
                        && hits.load(Ordering::SeqCst) >= after
                    {
                        *stalled_on.lock().unwrap() = Some(p.clone());
                        return;
                    }
                    let reply = match how {
                        Hostile::Unterminated(n) if qsupported => {
                            let mut v = vec![b'a'; n + 1];
                            v[0] = b'$';
                            Some(v)
                        }
                        Hostile::Huge(n) if p.starts_with('m') && !huge_sent => {
                            huge_sent = true;
                            Some(frame_bytes(&vec![b'0'; n], 0))
                        }
                        Hostile::BadChecksums => {
                            answer(&p, memory, &running).map(|r| frame_bytes(r.as_bytes(), 0x5a))
                        }
                        _ => answer(&p, memory, &running).map(|r| frame(&r)),
                    };
                    if let Hostile::StallsAfter {
                        hits: after,
                        silent_for,
                    } = how
                    {
                        let mut stalled = stalled_on.lock().unwrap();
                        if reply.is_some()
                            && stalled.is_none()
                            && hits.load(Ordering::SeqCst) >= after
                        {
                            *stalled = Some(p.clone());
                            drop(stalled);
                            match silent_for {
                                // Stopped, then continued: the reply it owed
                                // goes out as it would have.
                                Some(d) => std::thread::sleep(d),
                                None => mute = true,
                            }
                        }
                    }
                    reply
                }
            };
            if let Some(reply) = reply.filter(|_| !mute) {
                last.clone_from(&reply);
                if replies.send(reply).is_err() {
                    return;
                }
            }
            if close {
                // The writer sends what is queued, then the socket closes.
                return;
            }
        }
    }
}

/// Sends the replies as `how` does: at once, one byte per interval, with
/// the flood in every gap between them, or with a hit while the guest
/// runs.
fn write_out(
    mut out: UnixStream,
    replies: Receiver<Vec<u8>>,
    how: Hostile,
    running: &AtomicBool,
    counts: &Counts,
) {
    let sent = &counts.sent;
    let flood = match how {
        Hostile::Flood(packet) => frame(packet).repeat(64 * 1024 / (packet.len() + 4) + 1),
        _ => Vec::new(),
    };
    let hitting = matches!(
        how,
        Hostile::Hits | Hostile::StallsAfter { .. } | Hostile::ClosesOnReadAfter { .. }
    );
    loop {
        let next = match replies.try_recv() {
            Ok(reply) => reply,
            Err(TryRecvError::Empty) if !flood.is_empty() => {
                if out.write_all(&flood).is_err() {
                    return;
                }
                sent.fetch_add(flood.len(), Ordering::SeqCst);
                continue;
            }
            Err(TryRecvError::Empty) if hitting => match replies.recv_timeout(HIT_EVERY) {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => {
                    // The guest hits the breakpoint: it stops.
                    if !running.swap(false, Ordering::SeqCst) {
                        continue;
                    }
                    counts.hits.fetch_add(1, Ordering::SeqCst);
                    frame(STOP)
                }
                Err(RecvTimeoutError::Disconnected) => return,
            },
            Err(TryRecvError::Empty) => match replies.recv() {
                Ok(reply) => reply,
                Err(_) => return,
            },
            Err(TryRecvError::Disconnected) => return,
        };
        let written = match how {
            Hostile::Trickle(every) => next.iter().all(|b| {
                std::thread::sleep(every);
                let ok = out.write_all(std::slice::from_ref(b)).is_ok();
                sent.fetch_add(usize::from(ok), Ordering::SeqCst);
                ok
            }),
            // In pieces, to count what a reader given up on took.
            _ => next.chunks(64 * 1024).all(|part| {
                let ok = out.write_all(part).is_ok();
                sent.fetch_add(if ok { part.len() } else { 0 }, Ordering::SeqCst);
                ok
            }),
        };
        if !written {
            return;
        }
    }
}

/// Random bytes or text noise, as fast as the socket takes them, until the
/// connection closes.
fn endless(mut conn: UnixStream, how: Hostile, sent: &AtomicUsize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = b"noise, not a packet\r\n".repeat(3000);
    loop {
        if let Hostile::RandomBytes = how {
            chunk.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            });
        }
        if conn.write_all(&chunk).is_err() {
            return;
        }
        sent.fetch_add(chunk.len(), Ordering::SeqCst);
    }
}
