//! Instruction fetch and decoding (iced-x86), with a small direct-mapped cache of decoded
//! instructions so loops decode each instruction once.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, FastFormatter, Instruction};

use crate::{EmuError, Memory};

const MAX_LEN: usize = 15;
const PAGE: u64 = 4096;
const SLOTS: usize = 512;

#[derive(Clone, Default)]
pub(crate) struct DecodeCache {
    /// Allocated at the first fetch; a slot is valid when its instruction's ip is the rip.
    slots: Vec<Instruction>,
}

impl std::fmt::Debug for DecodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeCache").finish_non_exhaustive()
    }
}

fn slot(rip: u64) -> usize {
    ((rip ^ (rip >> 9)) as usize) % SLOTS
}

impl DecodeCache {
    pub(crate) fn fetch(
        &mut self,
        mem: &mut dyn Memory,
        rip: u64,
    ) -> Result<Instruction, EmuError> {
        if self.slots.is_empty() {
            self.slots = vec![Instruction::default(); SLOTS];
        }
        let s = &self.slots[slot(rip)];
        if s.code() != Code::INVALID && s.ip() == rip {
            return Ok(*s);
        }
        let instr = decode_at(mem, rip)?;
        self.slots[slot(rip)] = instr;
        Ok(instr)
    }
}

/// Reads up to 15 bytes at `rip` (fewer at the end of a readable page) and decodes them.
fn decode_at(mem: &mut dyn Memory, rip: u64) -> Result<Instruction, EmuError> {
    let mut buf = [0u8; MAX_LEN];
    let mut n = MAX_LEN;
    if mem.read(rip, &mut buf).is_err() {
        // The end of a mapped page, or of a memory that maps less than pages: the bytes up
        // to the page end, else as many single bytes as can be read.
        n = (PAGE - rip % PAGE) as usize;
        if n >= MAX_LEN || mem.read(rip, &mut buf[..n]).is_err() {
            n = 0;
            while n < MAX_LEN {
                let a = rip.wrapping_add(n as u64);
                if mem.read(a, &mut buf[n..n + 1]).is_err() {
                    break;
                }
                n += 1;
            }
            if n == 0 {
                return Err(EmuError::Fault { rip, addr: rip });
            }
        }
    }
    let mut decoder = Decoder::with_ip(64, &buf[..n], rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        if decoder.last_error() == DecoderError::NoMoreBytes && n < MAX_LEN {
            return Err(EmuError::Fault {
                rip,
                addr: rip.wrapping_add(n as u64),
            });
        }
        let bytes: Vec<String> = buf[..n.min(8)].iter().map(|b| format!("{b:02x}")).collect();
        return Err(EmuError::Unsupported {
            rip,
            what: format!("undecodable bytes {}", bytes.join(" ")),
        });
    }
    Ok(instr)
}

/// The instruction as text, for error messages.
pub(crate) fn describe(instr: &Instruction) -> String {
    let mut out = String::new();
    FastFormatter::new().format(instr, &mut out);
    out
}

/// An Unsupported error for `instr`, with a reason.
pub(crate) fn unsupported(instr: &Instruction, why: &str) -> EmuError {
    let text = describe(instr);
    EmuError::Unsupported {
        rip: instr.ip(),
        what: if why.is_empty() {
            text
        } else {
            format!("{text} ({why})")
        },
    }
}
