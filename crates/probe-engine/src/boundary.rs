//! `kprobe:F+OFFSET` must name the start of an instruction: a breakpoint
//! inside one never fires under TCG and, where a stub writes `int3` (KVM),
//! corrupts the guest's code; a plugin callback there never fires either.
//! F is decoded from its start, as it is in guest memory, up to the site.

use probe_plan::ProbeSite;

/// The largest `F+OFFSET` checked for an instruction boundary (and so
/// allowed).
pub const MAX_CHECKED_OFFSET: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BoundaryError {
    #[error("{probe}: offset {offset} is past the end of the function")]
    OffsetOutside { probe: String, offset: u64 },
    #[error(
        "{probe}: offset {offset} is inside an instruction (the one at +{insn} is {len} bytes long); \
         a probe must start an instruction"
    )]
    NotOnInstruction {
        probe: String,
        offset: u64,
        insn: u64,
        len: usize,
    },
    #[error("{probe}: reading the function's code at {addr:#x}: {reason}")]
    Unreadable {
        probe: String,
        addr: u64,
        reason: String,
    },
}

/// Checks `site` with guest memory read through `read(addr, len)`.
pub fn check_instruction_boundary(
    site: &ProbeSite,
    read: impl FnOnce(u64, usize) -> Result<Vec<u8>, String>,
) -> Result<(), BoundaryError> {
    if site.offset == 0 {
        return Ok(());
    }
    let probe = || {
        site.handlers
            .iter()
            .chain(&site.ret_handlers)
            .next()
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    };
    let start = site.addr.wrapping_sub(site.offset);
    let len = usize::try_from(site.offset)
        .ok()
        .filter(|&n| n <= MAX_CHECKED_OFFSET)
        .ok_or_else(|| BoundaryError::OffsetOutside {
            probe: probe(),
            offset: site.offset,
        })?;
    // The longest x86 instruction is 15 bytes.
    let code = read(start, len + 15).map_err(|reason| BoundaryError::Unreadable {
        probe: probe(),
        addr: start,
        reason,
    })?;
    let mut decoder = iced_x86::Decoder::with_ip(64, &code, start, iced_x86::DecoderOptions::NONE);
    let mut insn = iced_x86::Instruction::default();
    while decoder.can_decode() && decoder.ip() < site.addr {
        decoder.decode_out(&mut insn);
    }
    if decoder.ip() != site.addr {
        return Err(BoundaryError::NotOnInstruction {
            probe: probe(),
            offset: site.offset,
            insn: insn.ip().wrapping_sub(start),
            len: insn.len(),
        });
    }
    Ok(())
}
