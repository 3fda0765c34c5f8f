//! Tests against a real QEMU gdb stub (skipped when qemu-system-x86_64 is not
//! installed). Ground truth for memory reads is real gdb on the same stub.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gdb_remote::{BreakpointKind, Client, Error, ResumeAction, StopReply, ThreadId};

/// Kills QEMU when dropped (also on panic).
struct Qemu {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_qemu(smp: u32) -> Option<Qemu> {
    start_qemu_with(smp, None)
}

fn start_qemu_with(smp: u32, unix: Option<&std::path::Path>) -> Option<Qemu> {
    if !have("qemu-system-x86_64") {
        eprintln!("qemu-system-x86_64 not installed: skipping");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-m",
            "64",
            "-smp",
            &smp.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-gdb",
            &match unix {
                Some(path) => format!("unix:{},server=on,wait=off", path.display()),
                None => format!("tcp:127.0.0.1:{port}"),
            },
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu");
    Some(Qemu { child, addr })
}

fn connect(q: &Qemu) -> Client {
    let start = Instant::now();
    loop {
        match Client::connect_tcp(q.addr, Duration::from_secs(5)) {
            Ok(c) => return c,
            Err(Error::Connect { .. }) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect to QEMU: {e}"),
        }
    }
}

/// Reads 16 bytes at `addr` with real gdb (`x/16xb`).
fn gdb_read16(addr: SocketAddr, at: u64) -> Vec<u8> {
    let out = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            &format!("target remote {addr}"),
            "-ex",
            &format!("x/16xb {at:#x}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run gdb");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = vec![];
    for line in text.lines() {
        let Some((head, rest)) = line.split_once(':') else {
            continue;
        };
        if !head.trim_start().starts_with("0x") {
            continue;
        }
        for tok in rest.split_whitespace() {
            if let Some(h) = tok.strip_prefix("0x") {
                bytes.push(u8::from_str_radix(h, 16).expect("gdb byte"));
            }
        }
    }
    assert_eq!(
        bytes.len(),
        16,
        "gdb output:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bytes
}

#[test]
fn qemu_single_vcpu() {
    let Some(mut q) = start_qemu(1) else { return };
    let mut c = connect(&q);

    // Handshake.
    let f = c.features().clone();
    // QEMU 7.2 does not implement QStartNoAckMode (later versions do).
    assert_eq!(f.no_ack, f.supports("QStartNoAckMode"), "{f:?}");
    assert!(f.multiprocess && f.xfer_features, "{f:?}");
    assert!(f.packet_size >= 1024, "{f:?}");
    let v = f.vcont.expect("QEMU supports vCont");
    assert!(v.cont && v.step);

    // Register map from target.xml + i386-64bit.xml.
    let map = c.register_map_arc();
    for (name, bits) in [
        ("rip", 64),
        ("rsp", 64),
        ("rax", 64),
        ("eflags", 32),
        ("cs", 32),
        ("fs_base", 64),
        ("cr3", 64),
    ] {
        let r = map.lookup(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(r.bitsize, bits, "{name}");
    }
    assert_eq!(map.lookup("rax").unwrap().offset, 0);
    assert_eq!(map.lookup("rip").unwrap().offset, 16 * 8);

    // Threads and halt reason.
    let threads = c.threads().unwrap();
    assert_eq!(threads, [ThreadId::with_pid(1, 1)]);
    let t = threads[0];
    match c.halt_reason().unwrap() {
        StopReply::Signal { thread, .. } => assert_eq!(thread, Some(t)),
        s => panic!("{s:?}"),
    }

    // `g` agrees with `p`; reset state.
    let regs = c.read_registers(t).unwrap();
    assert!(regs.bytes().len() >= map.lookup("cr3").unwrap().offset + 8);
    for name in [
        "rip", "rsp", "rax", "rdx", "eflags", "cs", "fs_base", "cr0", "cr3",
    ] {
        let via_p = c.read_register(t, name).unwrap();
        assert_eq!(regs.get(name), Some(via_p), "{name}");
    }
    assert_eq!(regs.get("rip"), Some(0xfff0));
    assert_eq!(regs.get("cs"), Some(0xf000));
    assert_eq!(regs.get("eflags"), Some(0x2));

    // Memory at the reset vector (compared with gdb below).
    let mut reset = [0u8; 16];
    c.read_memory(0xffff_fff0, &mut reset).unwrap();
    // A read larger than one packet (split into several `m`).
    let mut big = vec![0u8; 3 * c.features().packet_size];
    let start = 0x1_0000_0000 - big.len() as u64;
    c.read_memory(start, &mut big).unwrap();
    assert_eq!(&big[big.len() - 16..], &reset[..]);

    // Breakpoints.
    c.insert_breakpoint(BreakpointKind::Hardware, 0xf_e05b, 1)
        .unwrap();
    c.remove_breakpoint(BreakpointKind::Hardware, 0xf_e05b, 1)
        .unwrap();
    // A software breakpoint at the current pc: a single step still moves
    // (QEMU ignores breakpoints at the pc of a stepping vCPU).
    c.insert_breakpoint(BreakpointKind::Software, 0xffff_fff0, 1)
        .unwrap();
    let rt = c.round_trips();
    let stop = c.step_thread(t).unwrap();
    assert_eq!(c.round_trips(), rt + 1);
    assert_eq!(stop.thread(), Some(t), "{stop:?}");
    let rip = c.read_register(t, "rip").unwrap();
    assert_ne!(rip, 0xfff0, "step did not move rip");
    c.remove_breakpoint(BreakpointKind::Software, 0xffff_fff0, 1)
        .unwrap();

    // Run, interrupt, stop reply.
    c.resume(&[(None, ResumeAction::Continue)]).unwrap();
    assert!(
        c.wait_stop(Some(Duration::from_millis(200)))
            .unwrap()
            .is_none()
    );
    c.interrupt().unwrap();
    let stop = c
        .wait_stop(Some(Duration::from_secs(10)))
        .unwrap()
        .expect("stop after interrupt");
    assert!(matches!(stop, StopReply::Signal { .. }), "{stop:?}");
    c.read_registers(t).unwrap();

    // Detach leaves QEMU running.
    c.detach().unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        q.child.try_wait().unwrap().is_none(),
        "QEMU exited after detach"
    );

    if have("gdb") {
        let truth = gdb_read16(q.addr, 0xffff_fff0);
        assert_eq!(
            &reset[..],
            &truth[..],
            "our read vs gdb's read of the reset vector"
        );
    } else {
        eprintln!("gdb not installed: skipping the ground-truth comparison");
    }
}

#[test]
fn qemu_two_vcpus() {
    let Some(q) = start_qemu(2) else { return };
    let mut c = connect(&q);
    let threads = c.threads().unwrap();
    assert_eq!(
        threads,
        [ThreadId::with_pid(1, 1), ThreadId::with_pid(1, 2)]
    );
    c.set_trust_stop_thread(true);
    for &t in &threads {
        let regs = c.read_registers(t).unwrap();
        assert_eq!(regs.get("rip"), Some(c.read_register(t, "rip").unwrap()));
    }
    // Step only vCPU 1; per-thread vCont with a default action.
    let stop = c.step_thread(threads[0]).unwrap();
    assert_eq!(stop.thread(), Some(threads[0]));
    c.resume(&[
        (Some(threads[0]), ResumeAction::Step),
        (None, ResumeAction::Continue),
    ])
    .unwrap();
    let stop = c.wait_stop(Some(Duration::from_secs(10))).unwrap();
    assert!(stop.is_some());
    // Trusting the stop thread: no Hg before `g` for it.
    if let Some(t) = stop.and_then(|s| s.thread()) {
        let rt = c.round_trips();
        c.read_registers(t).unwrap();
        assert_eq!(c.round_trips(), rt + 1);
    }
}

#[cfg(unix)]
#[test]
fn qemu_unix_socket() {
    let path = std::env::temp_dir().join(format!("gdb-remote-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let Some(_q) = start_qemu_with(1, Some(&path)) else {
        return;
    };
    let start = Instant::now();
    let mut c = loop {
        match Client::connect_unix(&path, Duration::from_secs(5)) {
            Ok(c) => break c,
            Err(Error::Connect { .. }) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect to QEMU over {}: {e}", path.display()),
        }
    };
    assert!(c.register_map().lookup("rip").is_some());
    let t = c.threads().unwrap()[0];
    assert_eq!(c.read_register(t, "rip").unwrap(), 0xfff0);
    drop(c);
    let _ = std::fs::remove_file(&path);
}

/// The engine's per-hit loop end to end: a guest loop in RAM, a breakpoint
/// in it, then repeatedly: stop reply, read rip, step over the breakpoint
/// (without removing it), continue.
#[test]
fn qemu_breakpoint_hit_loop() {
    let Some(q) = start_qemu(1) else { return };
    let mut c = connect(&q);
    let t = c.threads().unwrap()[0];
    // 0x1000: nop; nop; jmp 0x1000  (real mode, cs=0)
    c.write_memory(0x1000, &[0x90, 0x90, 0xeb, 0xfc]).unwrap();
    let mut back = [0u8; 4];
    c.read_memory(0x1000, &mut back).unwrap();
    assert_eq!(back, [0x90, 0x90, 0xeb, 0xfc]);
    c.write_register(t, "cs", 0).unwrap();
    c.write_register(t, "rip", 0x1000).unwrap();
    assert_eq!(c.read_register(t, "rip").unwrap(), 0x1000);
    c.insert_breakpoint(BreakpointKind::Software, 0x1001, 1)
        .unwrap();
    c.resume(&[]).unwrap();
    for _ in 0..3 {
        let stop = c
            .wait_stop(Some(Duration::from_secs(10)))
            .unwrap()
            .expect("breakpoint hit");
        assert_eq!(stop.thread(), Some(t), "{stop:?}");
        assert_eq!(c.read_register(t, "rip").unwrap(), 0x1001);
        let stop = c.step_thread(t).unwrap();
        assert_eq!(stop.thread(), Some(t));
        assert_eq!(c.read_register(t, "rip").unwrap(), 0x1002);
        c.resume(&[(None, ResumeAction::Continue)]).unwrap();
    }
    c.interrupt().unwrap();
    c.wait_stop(Some(Duration::from_secs(10))).unwrap().unwrap();
    c.remove_breakpoint(BreakpointKind::Software, 0x1001, 1)
        .unwrap();
}

/// Physical reads through QEMU 7.2's `Qqemu.PhyMemMode` equal what QEMU's
/// own monitor (`xp`) shows at that physical address, and the stub is back
/// in virtual mode afterwards. (Translation itself, where virtual and
/// physical differ, is checked on a booted guest in probe-engine's tests.)
#[test]
fn qemu_physical_memory_matches_the_monitor() {
    let Some(q) = start_qemu(1) else { return };
    let mut c = connect(&q);
    c.halt_reason().unwrap();
    assert!(c.has_physical_mode().unwrap());
    let pattern: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    // Paging is off at reset, so this virtual write lands at 0x200000.
    c.write_memory(0x20_0000, &pattern).unwrap();
    let mut phys = vec![0u8; 64];
    c.read_physical(0x20_0000, &mut phys).unwrap();
    assert_eq!(phys, pattern);
    let xp = c.monitor("xp /64xb 0x200000").unwrap();
    let truth: Vec<u8> = xp
        .lines()
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(_, rest)| rest.split_whitespace())
        .filter_map(|t| u8::from_str_radix(t.trim_start_matches("0x"), 16).ok())
        .collect();
    assert_eq!(truth, pattern, "monitor output:\n{xp}");
    assert_eq!(c.request(b"qqemu.PhyMemMode").unwrap(), b"0");
    // Past the end of RAM (64 MiB) QEMU still answers; callers bound
    // physical addresses themselves.
    let mut far = [0u8; 8];
    c.read_physical(0x1_0000_0000, &mut far).unwrap();
    assert_eq!(c.request(b"qqemu.PhyMemMode").unwrap(), b"0");
    // A client that dies in physical mode leaves QEMU's global switch on;
    // the next client notices in its handshake and switches back before
    // its first virtual read.
    assert_eq!(c.request(b"Qqemu.PhyMemMode:1").unwrap(), b"OK");
    drop(c);
    let mut c = connect(&q);
    assert_eq!(c.request(b"qqemu.PhyMemMode").unwrap(), b"1");
    c.read_memory(0x20_0000, &mut phys[..8]).unwrap();
    assert_eq!(c.request(b"qqemu.PhyMemMode").unwrap(), b"0");
}
