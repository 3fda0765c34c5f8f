//! Every `trace_event_raw_event_*` function of the image, run with fake objects for all its
//! arguments: the instruction subset covers what they execute. The fake objects are memory
//! where every word points 0x100 bytes further, so pointer chains stay inside them.

use x86_emulate::{Action, EmuError, Hooks, Machine, Memory, MemoryFault, RDX, Transfer};

use crate::{HEAP, PERCPU, RETURN_TO, TestMemory, entry_regs, kernel};

const OBJ: u64 = 0xffff_8880_7100_0000;
const OBJ_LEN: u64 = 64 << 20;
const BUF: u64 = 0xffff_8880_7000_0000;

struct Pattern<'a>(&'a mut TestMemory);

impl Memory for Pattern<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
        if addr >= OBJ && addr.saturating_add(buf.len() as u64) < OBJ + OBJ_LEN {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr + i as u64;
                *b = ((a & !7) + 0x100).to_le_bytes()[(a & 7) as usize];
            }
            return Ok(());
        }
        self.0.read(addr, buf)
    }
}

struct Reserve {
    reserve: u64,
    commit: u64,
}

impl Hooks for Reserve {
    fn transfer(&mut self, target: u64, _: Transfer, _: &mut Machine) -> Action {
        match target {
            t if t == self.reserve => Action::Return(BUF),
            t if t == self.commit => Action::Stop,
            _ => Action::Continue,
        }
    }
}

#[test]
fn every_tracepoint_function_runs_within_the_subset() {
    let Some(k) = kernel() else { return };
    let text = k.addr("_stext")..k.addr("_etext");
    let events = k.syms.matching("trace_event_raw_event_*");
    let (mut committed, mut refused) = (0, Vec::new());
    let current = HEAP + PERCPU as u64 + k.addr("current_task");
    for sym in &events {
        let mut mem = TestMemory::new(k);
        let args: Vec<u64> = (0..6).map(|i| OBJ + i * (OBJ_LEN / 8)).collect();
        let mut m = Machine::new(entry_regs(&args));
        m.add_scratch(BUF, 1 << 16);
        // `current` is a fake task too: the third argument's (sched_switch's prev).
        let prev = m.regs().gpr[RDX];
        m.write(current, &prev.to_le_bytes());
        m.call_function(sym.addr, RETURN_TO);
        let mut hooks = Reserve {
            reserve: k.addr("trace_event_buffer_reserve"),
            commit: k.addr("trace_event_buffer_commit"),
        };
        match m.run(&mut Pattern(&mut mem), &mut hooks, 20_000) {
            Ok(s) if s.target == hooks.commit => committed += 1,
            // In the image's code, only BUG()s; elsewhere it is fake data run as code
            // (a call through a fake function pointer).
            Err(EmuError::Unsupported { rip, what })
                if text.contains(&rip) && !what.starts_with("ud2") =>
            {
                refused.push(format!("{}: {what} at {rip:#x}", sym.name));
            }
            // Faults (data outside the image's sections and the fake objects), budget.
            _ => {}
        }
    }
    eprintln!(
        "{} tracepoint functions, {committed} reached their commit",
        events.len()
    );
    assert!(refused.is_empty(), "{refused:#?}");
    assert!(events.len() > 400, "{} functions", events.len());
    // Measured: 370 of 446 with Debian's 6.1 image; the rest read .bss, run into printk's
    // .cold paths or BUG()s with the fake objects.
    assert!(
        committed * 5 > events.len() * 4,
        "{committed} of {}",
        events.len()
    );
}
