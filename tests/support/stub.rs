//! A fake GDB stub on a Unix socket that answers just the handshake and
//! then misbehaves, for what vmprobe does when a stub stalls.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

pub struct FakeStub {
    pub path: PathBuf,
    /// Packets received so far, and memory reads among them.
    pub packets: Arc<AtomicUsize>,
    pub reads: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl FakeStub {
    pub fn start(stall: Stall) -> FakeStub {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stub.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (packets, reads) = (Arc::default(), Arc::default());
        let counts = (Arc::clone(&packets), Arc::clone(&reads));
        std::thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                serve(conn, stall, counts);
            }
        });
        FakeStub {
            path,
            packets,
            reads,
            _dir: dir,
        }
    }

    /// `--vm` for `vmprobe attach`, typed with `kernel`.
    pub fn vm_spec(&self, kernel: &std::path::Path) -> String {
        format!(
            "vm0=gdb:unix:{},kernel:{}",
            self.path.display(),
            kernel.display()
        )
    }
}

fn serve(
    mut conn: UnixStream,
    stall: Stall,
    (packets, reads): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
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
            let sent = match stall {
                Stall::Drip(every) if packet.starts_with('m') => framed.iter().all(|b| {
                    std::thread::sleep(every);
                    conn.write_all(std::slice::from_ref(b)).is_ok()
                }),
                _ => conn.write_all(&framed).is_ok(),
            };
            if !sent {
                return;
            }
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
    let sum = payload.bytes().fold(0u8, |s, b| s.wrapping_add(b));
    format!("${payload}#{sum:02x}").into_bytes()
}
