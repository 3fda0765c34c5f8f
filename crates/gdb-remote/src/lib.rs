//! A client for the GDB remote serial protocol (RSP), as spoken by the gdb
//! stubs of QEMU, Firecracker and Cloud Hypervisor.
//!
//! Synchronous, blocking I/O over TCP ([`Client::connect_tcp`]) or a Unix
//! socket ([`Client::connect_unix`]); std only. The client is on the hot path
//! of every probe hit, so it uses `TCP_NODELAY`, no-ack mode (after
//! `QStartNoAckMode` succeeds; acks are exchanged until then), a reusable read
//! buffer with an incremental packet decoder, reusable packet buffers (no
//! per-packet allocation on the `g`/`p`/`m`/`vCont`/stop-reply paths), and one
//! `write` per packet.
//!
//! # Protocol coverage
//!
//! Framing `$data#cs` with checksum verification, `}` escapes, `*` run-length
//! decoding, `%` notifications (skipped), acks/naks; `qSupported` (honouring
//! `PacketSize`), `QStartNoAckMode`, `vCont?`, `qqemu.PhyMemMode`; the register map from
//! `qXfer:features:read:target.xml` including `<xi:include>`d documents;
//! `g`, `p` (falling back to `g`), `P`, `Hg`/`Hc` (cached), `m`/`M` split by
//! packet size, `Z0`-`Z4`/`z0`-`z4`, `vCont` with per-thread actions (falling
//! back to `Hc` + `c`/`s`), `qfThreadInfo`/`qsThreadInfo`, stop replies (`S`,
//! `T`, `W`, `X`; `O` console output is collected, see
//! [`Client::take_console_output`], also where a stub sends it in place of
//! a reply: only `qRcmd` is answered with it), interrupt (raw `0x03`), `?`, `D`, `k`,
//! `qRcmd` (monitor commands); guest-physical reads through QEMU's
//! `Qqemu.PhyMemMode` ([`Client::with_physical`], [`Client::read_physical`]).
//!
//! Every buffer is bounded: packets whose decoded payload exceeds 1 MiB are
//! rejected as [`Error::Malformed`] as soon as they pass it (not at their
//! end), and console output is kept up to 1 MiB. No byte sequence from the
//! stub panics, and a wait with a timeout ends at it however the stub
//! sends (silence, noise, a byte at a time, a flood of unsolicited
//! packets); the error says how many bytes came without making a packet.
//!
//! # QEMU behaviours that matter
//!
//! - **While the target runs, QEMU treats ANY received byte as an interrupt
//!   request** (`vm_stop`), not just `0x03`. Hence nothing may be sent while
//!   running except [`Client::interrupt`]; the client tracks the running state
//!   and refuses requests until a stop reply has been received
//!   ([`Client::wait_stop`]). (In ack mode even a `+` would stop the VM; we
//!   leave ack mode during the handshake.)
//! - **A single-stepping vCPU ignores breakpoints at its current pc** under
//!   TCG, so the engine can step over a breakpoint with `vCont;s:TID`
//!   ([`Client::step_thread`]) without removing it. Under TCG, `Z0` and `Z1`
//!   are implemented identically (no guest memory is patched) and `Z2`-`Z4`
//!   watchpoints are supported.
//! - QEMU speaks the multiprocess extension when asked (we ask): vCPU n is
//!   thread `p01.0n` (hex), and stop replies look like `T05thread:p01.01;`
//!   (watchpoint hits add `watch:`/`rwatch:`/`awatch:ADDR;`). After a stop,
//!   QEMU makes the stopping vCPU the `Hg` thread; see
//!   [`Client::set_trust_stop_thread`].
//! - `qfThreadInfo` lists one vCPU per packet (`mp01.01`, then `qsThreadInfo`
//!   gives `mp01.02`, ..., then `l`).
//! - QEMU 7.2 does not implement `QStartNoAckMode` (empty reply; newer
//!   QEMUs do). The client always tries it and otherwise stays in ack mode,
//!   piggybacking each `+` on the next packet it sends (so a request still
//!   costs one write). QEMU consumes a `+` that acks its last packet as an
//!   ack, even while running, so acks are safe.
//! - `Qqemu.PhyMemMode:1` makes `m`/`M` use guest-physical addresses for
//!   every vCPU until `Qqemu.PhyMemMode:0` (a global switch in QEMU, kept
//!   across connections); `qqemu.PhyMemMode` answers `0` or `1`. Physical
//!   reads outside RAM succeed in QEMU (unassigned memory reads as ones or
//!   zeros), so callers bound physical addresses themselves. The client
//!   switches back after every physical access and before any virtual one,
//!   and asks for the mode in its handshake (a debugger that died in
//!   physical mode leaves it on for the next).
//! - QEMU needs `D;PID` (not bare `D`) once multiprocess is negotiated.
//! - `PacketSize` is `1000` (hex, 4096 bytes); `m` requests longer than half
//!   of that fail with `E22`, hence the splitting.
//! - `D` (detach) removes all breakpoints and resumes the VM; `k` (kill)
//!   terminates QEMU.
//! - QEMU's `target.xml` uses `<xi:include>` without declaring the `xi`
//!   namespace prefix; the client declares it before parsing.
//!
//! # Caveat
//!
//! After an [`Error::Timeout`] on a request, a late reply may still arrive
//! and would be taken as the reply to the next request; treat the connection
//! as unreliable after a request timeout (a `wait_stop` timeout is fine: it
//! returns `Ok(None)` and keeps any partially received packet). Under a
//! stall policy ([`Client::set_stall_policy`]) the client waits for late
//! replies instead, and stays consistent when a request fails late.

#![forbid(unsafe_code)]
mod client;
mod packet;
mod regs;
mod types;

#[cfg(test)]
mod tests;

pub use client::{AbortCheck, Client, PhysicalMemory, Stall, StallPolicy};
pub use regs::{RegisterInfo, RegisterMap, Registers};
pub use types::{
    BreakpointKind, Features, ResumeAction, StopReason, StopReply, ThreadId, VContSupport,
    WatchKind,
};

/// Errors. Each renders as a single line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to gdb stub at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out waiting for {waiting_for}")]
    Timeout { waiting_for: String },
    #[error("gdb stub closed the connection while {during}")]
    Closed { during: String },
    #[error("malformed packet from gdb stub ({reason}): {packet}")]
    Malformed { packet: String, reason: String },
    #[error("unexpected reply from gdb stub: `{packet}` (expected {expected})")]
    Unexpected { packet: String, expected: String },
    #[error("gdb stub does not support {feature}")]
    Unsupported { feature: String },
    #[error("gdb stub replied with error {code} to `{command}`")]
    ErrorReply { command: String, code: String },
    #[error("i/o error talking to gdb stub: {0}")]
    Io(#[from] std::io::Error),
    /// A reply was late past a stall policy's limit
    /// ([`Client::set_stall_policy`]).
    #[error("no reply from the gdb stub for {:.0} s (waiting for {waiting_for})", .waited.as_secs_f64())]
    Stalled {
        waited: std::time::Duration,
        waiting_for: String,
    },
    /// The client's abort check ([`Client::set_abort`]) said to stop waiting.
    #[error("stopped waiting for the gdb stub (interrupted)")]
    Aborted,
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    /// Feeds `bytes` to the packet decoder in pieces of `split` bytes, as
    /// reads from a stub arrive, then parses every packet as each kind of
    /// reply the client decodes. Must never panic.
    pub fn decode_stream(bytes: &[u8], split: usize) {
        let mut d = crate::packet::Decoder::default();
        for chunk in bytes.chunks(split.max(1)) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (used, event) = d.feed(rest);
                if let Some(crate::packet::Event::Packet) = event {
                    let p = d.payload.clone();
                    let _ = crate::StopReply::parse(&p);
                    let _ = crate::types::ThreadId::parse(&p);
                    let _ = crate::types::VContSupport::parse(&p);
                    let _ = crate::Features::parse_qsupported(&p);
                    let _ = crate::packet::parse_hex_u64(&p);
                    let mut out = vec![0u8; p.len() / 2];
                    let _ = crate::packet::decode_hex_into(&p, &mut out);
                }
                if used == 0 {
                    break;
                }
                rest = &rest[used..];
            }
        }
    }
}
