//! Serving a hit: the record the guest kernel's own tracepoint code would
//! write, by emulating that code outside the guest (see the crate docs).

use crate::{EventRecipe, Record};
use std::collections::HashMap;
use x86_emulate::{
    Action, EmuError, Hooks, Machine, Memory, MemoryFault, Registers, Stopped, Transfer,
};

/// Fake objects live at non-canonical addresses, which no kernel pointer
/// can be: the emulated code reads them from the overlay only.
const FAKE: u64 = 0x8000_dead_0000_0000;
/// `struct tracepoint_func` the block finds in the probe list.
const FAKE_FUNC: u64 = FAKE;
/// The `trace_event_file` handed to the event's code: all zero, so not
/// soft-disabled, triggered or filtered.
const FAKE_FILE: u64 = FAKE + 0x1000;
const FILE_LEN: u64 = 0x1000;
/// The buffer `trace_event_buffer_reserve` answers.
const FAKE_ENTRY: u64 = FAKE + 0x10000;
/// Larger than any record tracefs accepts (a page, less its headers).
const MAX_RECORD: u64 = 0x2000;
/// Where the emulated `trace_event_raw_event_CLASS` returns to.
const RETURN_SENTINEL: u64 = FAKE + 0x20000;
/// The block: a few dozen instructions. The event's code: a few hundred,
/// more with string copies (`rep` iterations count one each).
const BLOCK_BUDGET: u32 = 2_000;
const EVENT_BUDGET: u32 = 20_000;

/// Why a hit's record could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    #[error("{event}: {source}")]
    Emulation {
        event: String,
        #[source]
        source: EmuError,
    },
    #[error("{event}: the kernel's code reserved {len} bytes, more than a record can be")]
    TooLong { event: String, len: u64 },
    #[error("{event}: no site of this tracepoint at {addr:#x}")]
    NoSite { event: String, addr: u64 },
    #[error("{event}: the stop's registers lack {name}")]
    Register { event: String, name: &'static str },
}

/// The record of a hit at site address `addr` (slid, as `recipe` is).
/// `Ok(None)`: the tracepoint's own code decided not to fire (its
/// condition, an offline CPU), so the hit is no event.
pub fn serve(
    recipe: &EventRecipe,
    addr: u64,
    regs: Registers,
    mem: &mut dyn Memory,
) -> Result<Option<Record>, ServeError> {
    let site = recipe
        .sites
        .iter()
        .find(|s| s.code == addr)
        .ok_or_else(|| ServeError::NoSite {
            event: recipe.name(),
            addr,
        })?;
    let emu = |source| ServeError::Emulation {
        event: recipe.name(),
        source,
    };
    let mut m = Machine::new(Registers {
        rip: site.block,
        ..regs
    });
    m.add_scratch(FAKE_FUNC, 0x100);
    m.add_scratch(FAKE_FILE, FILE_LEN);
    m.add_scratch(FAKE_ENTRY, MAX_RECORD);
    // The probe list the block loads: one probe, whose data is the file.
    m.write(recipe.funcs, &FAKE_FUNC.to_le_bytes());
    m.write(
        FAKE_FUNC + recipe.func_data_offset,
        &FAKE_FILE.to_le_bytes(),
    );
    // The block's way back (the no-op's next instruction) means it chose
    // not to call.
    m.set_return_stop(Some(site.code + u64::from(site.len)));
    let mut block = BlockHooks {
        call_at: site.call_at,
        body: (site.code, site.block),
        went_back: false,
    };
    match m.run(mem, &mut block, BLOCK_BUDGET).map_err(emu)? {
        Stopped {
            kind: Transfer::Return,
            ..
        } => return Ok(None),
        Stopped { .. } if block.went_back => return Ok(None),
        Stopped { .. } => {}
    }
    // The static call's arguments are set: call the event's code instead.
    m.call_function(recipe.raw_event, RETURN_SENTINEL);
    let mut event = EventHooks {
        reserve: recipe.reserve,
        commit: recipe.commit,
        len: None,
    };
    let stopped = m.run(mem, &mut event, EVENT_BUDGET).map_err(emu)?;
    let len = match (stopped.kind, event.len) {
        (Transfer::Return, _) | (_, None) => return Ok(None),
        (_, Some(len)) => len,
    };
    if len > MAX_RECORD {
        return Err(ServeError::TooLong {
            event: recipe.name(),
            len,
        });
    }
    let mut record = vec![0u8; len as usize];
    m.read(mem, FAKE_ENTRY, &mut record).map_err(emu)?;
    Ok(Some(Record(record)))
}

/// Stops the block at its static call, or where it jumps back into the
/// function's body (between the no-op and the block, which compilers place
/// after the body): then it chose not to call.
struct BlockHooks {
    /// The block's call instruction.
    call_at: u64,
    body: (u64, u64),
    went_back: bool,
}

impl Hooks for BlockHooks {
    fn transfer(&mut self, target: u64, kind: Transfer, m: &mut Machine) -> Action {
        if kind == Transfer::Call && m.regs().rip == self.call_at {
            Action::Stop
        } else if kind == Transfer::Jump && target >= self.body.0 && target < self.body.1 {
            self.went_back = true;
            Action::Stop
        } else {
            Action::Continue
        }
    }
}

/// Answers the reservation with the fake buffer, and stops at the commit.
struct EventHooks {
    reserve: u64,
    commit: u64,
    len: Option<u64>,
}

impl Hooks for EventHooks {
    fn transfer(&mut self, target: u64, _: Transfer, m: &mut Machine) -> Action {
        if target == self.reserve {
            // trace_event_buffer_reserve(fbuffer, file, len)
            let len = m.regs().gpr[x86_emulate::RDX];
            self.len = Some(len);
            if len > MAX_RECORD {
                return Action::Stop;
            }
            Action::Return(FAKE_ENTRY)
        } else if target == self.commit && self.len.is_some() {
            Action::Stop
        } else {
            Action::Continue
        }
    }
}

/// The registers [`serve`] starts from, by their GDB names (`rax`,
/// `eflags`, `gs_base`): a stop's, or a vCPU's inside QEMU. At a kernel
/// stop the per-CPU base is `gs_base`; `k_gs_base` is taken when
/// `gs_base` holds a user value (a stub that reports them swapped).
pub fn registers(
    event: &str,
    mut get: impl FnMut(&str) -> Option<u64>,
) -> Result<Registers, ServeError> {
    const GPR: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let mut need = |name: &'static str| {
        get(name).ok_or(ServeError::Register {
            event: event.to_string(),
            name,
        })
    };
    let mut r = Registers::default();
    for (slot, name) in r.gpr.iter_mut().zip(GPR) {
        *slot = need(name)?;
    }
    r.rip = need("rip")?;
    r.rflags = need("eflags")?;
    r.fs_base = get("fs_base").unwrap_or(0);
    let gs = get("gs_base").unwrap_or(0);
    r.gs_base = if gs >> 63 == 1 {
        gs
    } else {
        get("k_gs_base").filter(|k| k >> 63 == 1).unwrap_or(gs)
    };
    Ok(r)
}

/// Guest memory in 64-byte lines, so that the dozens of small reads of one
/// hit cost a round trip per line through a stub. Lines of kernel text
/// (`text`: its slid range) are kept across hits; others are dropped by
/// [`LineCache::new_hit`], since data changes between stops.
pub struct LineCache {
    text: (u64, u64),
    lines: HashMap<u64, Option<[u8; LINE]>>,
}

const LINE: usize = 64;
/// Bounds the cache (text kept across hits): 4 MiB of lines.
const MAX_LINES: usize = 1 << 16;

impl LineCache {
    pub fn new(text: (u64, u64)) -> LineCache {
        LineCache {
            text,
            lines: HashMap::new(),
        }
    }

    /// Forgets what is not text.
    pub fn new_hit(&mut self) {
        let (lo, hi) = self.text;
        self.lines.retain(|&a, _| a >= lo && a < hi);
        if self.lines.len() > MAX_LINES {
            self.lines.clear();
        }
    }

    /// A [`Memory`] that reads through the cache, each missing line with
    /// `read` (false: the line cannot be read).
    pub fn memory<'a>(
        &'a mut self,
        read: &'a mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> impl Memory + 'a {
        Cached { cache: self, read }
    }
}

struct Cached<'a> {
    cache: &'a mut LineCache,
    read: &'a mut dyn FnMut(u64, &mut [u8]) -> bool,
}

impl Memory for Cached<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let mut done = 0;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let base = a & !(LINE as u64 - 1);
            let read = &mut *self.read;
            let line = *self.cache.lines.entry(base).or_insert_with(|| {
                let mut l = [0u8; LINE];
                read(base, &mut l).then_some(l)
            });
            let line = line.ok_or(MemoryFault)?;
            let from = (a - base) as usize;
            let n = (LINE - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&line[from..from + n]);
            done += n;
        }
        Ok(())
    }
}
