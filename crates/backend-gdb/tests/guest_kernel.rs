//! Guest introspection against the real default guest: the current task's
//! name and pid at `ksys_write` equal what the workload says of itself, and
//! the kernel stack unwound with ORC matches the guest kernel's own
//! `stacktrace` trigger for the same call.

mod support;

use backend_gdb::{StopView, StubMemory};
use gdb_remote::{BreakpointKind, ResumeAction, StopReply};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn current_task_and_kstack_at_ksys_write() {
    let console = Arc::new(Mutex::new(Vec::new()));
    let Some(support::Booted {
        mut vm,
        mut client,
        symbols,
        kernel,
        slide,
    }) = support::boot(|cfg| cfg.console = Some(console.clone()))
    else {
        return;
    };
    let ksys_write = symbols.lookup("ksys_write").unwrap().addr + slide;

    // The guest records its own stack for the same call (a kprobe event with
    // a stacktrace trigger), and the workload prints its pid before
    // becoming dd with exec.
    let workload = "cd /sys/kernel/tracing && echo 'p:gt ksys_write count=%dx:u64' > kprobe_events && \
        echo 'count == 3' > events/kprobes/gt/filter && echo stacktrace > events/kprobes/gt/trigger && \
        echo 1 > events/kprobes/gt/enable && \
        sh -c 'echo WORKLOAD-PID $$ > /dev/ttyS0; exec dd if=/dev/zero of=/dev/null bs=3 count=1 2>/dev/null'; \
        echo 0 > events/kprobes/gt/enable; grep -v '^#' trace > /tmp/t; sed 's/^/GT /' /tmp/t";
    // Armed only after the shell has set the guest's probe up: stop at the
    // first 3-byte write, which only dd makes.
    client.resume(&[]).unwrap();
    vm.start_workload(workload).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    client.interrupt().unwrap();
    client
        .wait_stop(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    client
        .insert_breakpoint(BreakpointKind::Software, ksys_write, 1)
        .unwrap();
    let (thread, regs) = loop {
        assert!(Instant::now() < deadline, "dd's 3-byte write never came");
        client.resume(&[]).unwrap();
        let stop = client
            .wait_stop(Some(Duration::from_secs(60)))
            .unwrap()
            .unwrap();
        let StopReply::Signal {
            thread: Some(t), ..
        } = stop
        else {
            panic!("{stop:?}")
        };
        let regs = client.read_registers(t).unwrap();
        if regs.get("rdx") == Some(3) && regs.get("rip") == Some(ksys_write) {
            break (t, regs);
        }
        // Step off the breakpoint (the guest's ftrace call may sit there).
        client.resume(&[(Some(t), ResumeAction::Step)]).unwrap();
        client
            .wait_stop(Some(Duration::from_secs(10)))
            .unwrap()
            .unwrap();
    };
    let task = kernel
        .current_task(&mut StopView::new(&mut client, &regs))
        .unwrap();
    let comm = kernel.comm(&mut StubMemory(&mut client), task).unwrap();
    let pid = kernel.tgid(&mut StubMemory(&mut client), task).unwrap();
    let tid = kernel.pid(&mut StubMemory(&mut client), task).unwrap();
    let stack: Vec<String> = kernel
        .kstack(&mut StopView::new(&mut client, &regs), 32)
        .unwrap()
        .iter()
        .map(|&a| kernel.symbolize(a))
        .collect();
    client
        .remove_breakpoint(BreakpointKind::Software, ksys_write, 1)
        .unwrap();
    client
        .resume(&[(Some(thread), ResumeAction::Continue)])
        .unwrap();
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert_eq!(status, 0);
    std::thread::sleep(Duration::from_millis(500));
    let console = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();

    let said: u32 = console
        .lines()
        .find_map(|l| l.split("WORKLOAD-PID ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid line: {console}"));
    assert_eq!(comm, "dd");
    assert_eq!(
        pid, said,
        "tgid of the current task is the pid the workload printed"
    );
    assert_eq!(tid, said, "single-threaded: tid == pid");

    // Guest: " => __x64_sys_write+0x19/0x20" lines after the event line.
    let guest: Vec<String> = console
        .lines()
        .filter_map(|l| l.strip_prefix("GT "))
        .skip_while(|l| !l.contains("<stack trace>"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("=>"))
        .map(|l| {
            let f = l.trim_start().trim_start_matches("=>").trim();
            f.split(['+', ' ']).next().unwrap_or(f).to_string()
        })
        .collect();
    let ours: Vec<String> = stack
        .iter()
        .map(|f| f.split('+').next().unwrap().to_string())
        .collect();
    assert_eq!(
        ours.first().map(String::as_str),
        Some("ksys_write"),
        "{stack:?}"
    );
    assert!(!guest.is_empty(), "no stack from the guest: {console}");
    // The guest's trace starts inside its own kprobe machinery
    // (kprobe_trace_func, kprobe_ftrace_handler, the ftrace trampoline);
    // from the probed function on, both walks name the same functions in
    // the same order, to the system call entry.
    let from = guest
        .iter()
        .position(|f| f == "ksys_write")
        .unwrap_or_else(|| panic!("ksys_write not in the guest's stack: {guest:?}"));
    assert_eq!(&ours[..], &guest[from..], "ours {stack:?}\nguest {guest:?}");
    assert!(ours.len() >= 3, "{stack:?}");
    vm.kill();
}
