//! What vmprobe will do with this crate: run a tracepoint's `trace_event_raw_event_*`
//! function, as compiled in the image, with the reserve of a ring-buffer slot faked by a hook
//! (a scratch buffer) and a stop at the commit; the record the kernel would have written is
//! then in the overlay.

use x86_emulate::{Action, Hooks, Machine, RDI, RDX, RSI, Stopped, Transfer};

use crate::{
    CANARY, HEAP, Kernel, PERCPU, RETURN_TO, TestMemory, declare_thunks, entry_regs, kernel,
};

/// The fake ring-buffer slot and the fake `struct trace_event_file`.
const BUF: u64 = 0xffff_8880_7000_0000;
const FILE: u64 = 0xffff_8880_7100_0000;

struct TraceHooks {
    reserve: u64,
    commit: u64,
    /// (fbuffer, trace_file, len) given to trace_event_buffer_reserve.
    reserved: Option<(u64, u64, u64)>,
}

impl Hooks for TraceHooks {
    fn transfer(&mut self, target: u64, kind: Transfer, m: &mut Machine) -> Action {
        let r = &m.regs().gpr;
        if target == self.reserve && kind == Transfer::Call {
            self.reserved = Some((r[RDI], r[RSI], r[RDX]));
            return Action::Return(BUF);
        }
        if target == self.commit {
            return Action::Stop;
        }
        Action::Continue
    }
}

/// Runs `trace_event_raw_event_<event>(FILE, args...)` until it commits; returns the
/// reserved length and the record's bytes.
fn record(k: &'static Kernel, event: &str, args: &[u64]) -> (u64, Vec<u8>) {
    record_with(k, event, args, |_| {})
}

/// As `record`, with `setup` writing fake objects (scratch regions) first.
fn record_with(
    k: &'static Kernel,
    event: &str,
    args: &[u64],
    setup: impl FnOnce(&mut Machine),
) -> (u64, Vec<u8>) {
    let mut mem = TestMemory::new(k);
    let mut m = Machine::new(entry_regs(&[&[FILE], args].concat()));
    m.add_scratch(BUF, 4096);
    m.add_scratch(FILE, 4096);
    setup(&mut m);
    m.call_function(k.addr(&format!("trace_event_raw_event_{event}")), RETURN_TO);
    let mut hooks = TraceHooks {
        reserve: k.addr("trace_event_buffer_reserve"),
        commit: k.addr("trace_event_buffer_commit"),
        reserved: None,
    };
    let stopped = m
        .run(&mut mem, &mut hooks, 10_000)
        .unwrap_or_else(|e| panic!("{event}: {e}"));
    assert_eq!(
        stopped,
        Stopped {
            target: hooks.commit,
            kind: Transfer::Call
        },
        "{event} committed"
    );
    eprintln!("{event}: {} instructions to the commit", m.executed());
    let (fbuffer, file, len) = hooks.reserved.expect("reserved a slot");
    assert_eq!(file, FILE);
    assert_eq!(m.regs().gpr[RDI], fbuffer, "commits the buffer it reserved");
    let mut rec = vec![0; len as usize];
    m.read(&mut mem, BUF, &mut rec).expect("reads the record");
    // The canary the function saved is still where it was.
    assert_eq!(
        m.read_u64(&mut mem, HEAP + PERCPU as u64 + 0x28),
        Ok(CANARY)
    );
    (len, rec)
}

fn int_at(rec: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(rec[off..off + 4].try_into().unwrap())
}

#[test]
fn tracepoint_functions_write_their_records() {
    let Some(k) = kernel() else { return };
    for (irq, ret) in [(0u64, 0u64), (17, 1), (0xffff_ffff, 2)] {
        // irq_handler_exit(int irq, struct irqaction *action, int ret): { ent; irq; ret }
        let (len, rec) = record(k, "irq_handler_exit", &[irq, 0, ret]);
        assert_eq!(len, 16);
        assert_eq!(
            (int_at(&rec, 8), int_at(&rec, 12)),
            (irq as u32, ret as u32)
        );
    }
    for vec in [0u64, 3, 9] {
        // softirq(unsigned int vec_nr): { ent; vec }
        let (len, rec) = record(k, "softirq", &[vec]);
        assert_eq!(len, 12);
        assert_eq!(int_at(&rec, 8), vec as u32);
    }
}

/// Byte offset of `member` in `struct name`, from the image's BTF.
fn offset(k: &Kernel, name: &str, member: &str) -> usize {
    let id = k
        .btf
        .struct_by_name(name)
        .unwrap_or_else(|| panic!("BTF has struct {name}"));
    let m = k
        .btf
        .member(id, member)
        .expect("a struct")
        .unwrap_or_else(|| panic!("{name}.{member}"));
    m.offset as usize
}

/// Fake tasks: their comm, pid, prio and exit_state at BTF offsets in scratch memory.
const PREV: u64 = 0xffff_8880_7200_0000;
const NEXT: u64 = 0xffff_8880_7300_0000;

#[test]
fn sched_switch_records_both_tasks() {
    let Some(k) = kernel() else { return };
    let task = |f: &str| offset(k, "task_struct", f) as u64;
    let rec = |f: &str| offset(k, "trace_event_raw_sched_switch", f);
    // (preempt, prev_state, the prev_state the record shows), as __trace_sched_switch_state
    // computes it: TASK_REPORT_MAX when preempted, else 1 << (fls(state & TASK_REPORT) - 1),
    // with TASK_IDLE shown as TASK_REPORT_IDLE.
    for (preempt, state, shown) in [
        (0u64, 0u64, 0u64),
        (0, 1, 1),
        (0, 2, 2),
        (0, 0x402, 0x80),
        (1, 1, 0x100),
        (0, 0x8, 0x8),
    ] {
        // BUG_ON(prev != current) (CONFIG_SCHED_DEBUG): `current` is the per-CPU
        // current_task, read through %gs.
        let current = HEAP + PERCPU as u64 + k.addr("current_task");
        let setup = |m: &mut Machine| {
            m.write(current, &PREV.to_le_bytes());
            for (t, comm, pid, prio) in [
                (PREV, b"prev-task\0", 1234u32, 120u32),
                (NEXT, b"next-task\0", 77, 98),
            ] {
                m.add_scratch(t, 16384);
                m.write(t + task("comm"), comm);
                m.write(t + task("pid"), &pid.to_le_bytes());
                m.write(t + task("prio"), &prio.to_le_bytes());
            }
        };
        let (len, r) = record_with(k, "sched_switch", &[preempt, PREV, NEXT, state], setup);
        assert_eq!(
            len,
            k.btf
                .size_of(
                    k.btf
                        .struct_by_name("trace_event_raw_sched_switch")
                        .unwrap()
                )
                .unwrap()
        );
        let comm = |o: usize| {
            String::from_utf8_lossy(&r[o..o + 16])
                .trim_end_matches('\0')
                .to_string()
        };
        assert_eq!(comm(rec("prev_comm")), "prev-task");
        assert_eq!(comm(rec("next_comm")), "next-task");
        assert_eq!(int_at(&r, rec("prev_pid")), 1234);
        assert_eq!(int_at(&r, rec("prev_prio")), 120);
        assert_eq!(int_at(&r, rec("next_pid")), 77);
        assert_eq!(int_at(&r, rec("next_prio")), 98);
        let o = rec("prev_state");
        let got = u64::from_le_bytes(r[o..o + 8].try_into().unwrap());
        assert_eq!(
            got, shown,
            "prev_state for preempt={preempt} state={state:#x}"
        );
    }
}

/// The enabled path end to end: the static call trampoline (`jmp __traceiter_*` in the
/// image) and the iterator over `__tracepoint_*.funcs` (given in the overlay, as the kernel
/// would have it with the event enabled) reach the event function by an indirect call.
#[test]
fn the_tracepoint_iterator_reaches_the_event_function() {
    let Some(k) = kernel() else { return };
    const FUNCS: u64 = 0xffff_8880_7400_0000;
    let tp = k.addr("__tracepoint_irq_handler_exit");
    let funcs_at = tp + offset(k, "tracepoint", "funcs") as u64;
    let event = k.addr("trace_event_raw_event_irq_handler_exit");
    let iter = k.addr("__traceiter_irq_handler_exit");
    let tramp = k.addr("__SCT__tp_func_irq_handler_exit");

    let mut mem = TestMemory::new(k);
    // (__data, irq, action, ret), as the call site passes them.
    let mut m = Machine::new(entry_regs(&[0, 42, 0, 7]));
    m.add_scratch(BUF, 4096);
    m.add_scratch(FILE, 4096);
    m.add_scratch(FUNCS, 4096);
    // One probe: { func = the event function, data = its trace_event_file }, then NULL.
    m.write(FUNCS, &event.to_le_bytes());
    m.write(FUNCS + 8, &FILE.to_le_bytes());
    m.write(funcs_at, &FUNCS.to_le_bytes());
    declare_thunks(k, &mut m);
    m.call_function(tramp, RETURN_TO);

    struct Seen {
        reserve: u64,
        commit: u64,
        targets: Vec<u64>,
    }
    impl Hooks for Seen {
        fn transfer(&mut self, target: u64, _: Transfer, _: &mut Machine) -> Action {
            self.targets.push(target);
            match target {
                t if t == self.reserve => Action::Return(BUF),
                // The commit returns (nothing): the iterator goes on to its end.
                t if t == self.commit => Action::Return(0),
                _ => Action::Continue,
            }
        }
    }
    let mut hooks = Seen {
        reserve: k.addr("trace_event_buffer_reserve"),
        commit: k.addr("trace_event_buffer_commit"),
        targets: Vec::new(),
    };
    let stopped = m
        .run(&mut mem, &mut hooks, 10_000)
        .expect("runs to the return");
    assert_eq!(stopped.kind, Transfer::Return);
    for (what, t) in [
        ("the iterator", iter),
        ("the event function", event),
        ("the commit", hooks.commit),
    ] {
        assert!(
            hooks.targets.contains(&t),
            "{what} was reached: {:x?}",
            hooks.targets
        );
    }
    let mut rec = [0u8; 16];
    m.read(&mut mem, BUF, &mut rec).unwrap();
    assert_eq!((int_at(&rec, 8), int_at(&rec, 12)), (42, 7));
    eprintln!("trampoline to return: {} instructions", m.executed());
}
