//! The host layer under real KVM (issue 5). This machine's KVM cannot boot
//! Linux, but it runs hand-made code: QEMU with `-accel kvm` starts a
//! 64 KiB firmware of our own that switches to long mode and makes a known
//! number of port writes, then ends QEMU through `isa-debug-exit`. vmprobe
//! attaches with QMP only (no gdbstub, no kernel image: the script has
//! host tracepoints only) and counts `kvm:kvm_pio` on that VM's vCPU
//! thread. The count must equal the number of writes the guest code makes,
//! and bpftrace's count on the host for the same run.
//!
//! Skips, saying why, where /dev/kvm is missing or QEMU cannot create a KVM
//! VM; runs wherever KVM works.

mod support;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

/// Writes to the counted port.
const WRITES: u32 = 20_000;
/// The port counted: no device of QEMU's `pc` machine uses it.
const PORT: u16 = 0x99;
/// Written once per loop besides PORT (QEMU's POST-code port): the
/// script's predicate, pushed into the kernel, must drop these.
const OTHER_PORT: u16 = 0x80;
/// `isa-debug-exit`: QEMU exits with status `(value << 1) | 1`.
const EXIT_PORT: u16 = 0xf4;

/// The firmware: 64 KiB loaded below 1 MiB (and 4 GiB), reset vector at
/// offset 0xfff0. Hand-assembled; `as --64` then `ld -Ttext=0 --oformat
/// binary` of the source in the comments gives the same bytes.
fn firmware(writes: u32) -> Vec<u8> {
    let mut rom = vec![0u8; 0x10000];
    let [n0, n1, n2, n3] = writes.to_le_bytes();
    #[rustfmt::skip]
    let code: &[u8] = &[
        // .code16, at offset 0xf000 (linear 0xff000)
        0xfa,                                     // cli
        0x31, 0xc0,                               // xor %ax,%ax
        0x8e, 0xd8,                               // mov %ax,%ds
        // Identity map of the first 2 MiB: PML4 at 0x1000, PDPT at 0x2000,
        // PD at 0x3000 with one large page (present, writable, accessed, PS).
        0x66, 0xc7, 0x06, 0x00, 0x10, 0x03, 0x20, 0x00, 0x00, // movl $0x2003,0x1000
        0x66, 0xc7, 0x06, 0x00, 0x20, 0x03, 0x30, 0x00, 0x00, // movl $0x3003,0x2000
        0x66, 0xc7, 0x06, 0x00, 0x30, 0xa3, 0x00, 0x00, 0x00, // movl $0xa3,0x3000
        0xb8, 0x00, 0xf0,                         // mov $0xf000,%ax
        0x8e, 0xd8,                               // mov %ax,%ds
        0x66, 0x0f, 0x01, 0x16, 0xb0, 0xf0,       // lgdtl gdtr (ds:0xf0b0)
        0x0f, 0x20, 0xe0,                         // mov %cr4,%eax
        0x66, 0x83, 0xc8, 0x20,                   // or $0x20,%eax (PAE)
        0x0f, 0x22, 0xe0,                         // mov %eax,%cr4
        0x66, 0xb8, 0x00, 0x10, 0x00, 0x00,       // mov $0x1000,%eax
        0x0f, 0x22, 0xd8,                         // mov %eax,%cr3
        0x66, 0xb9, 0x80, 0x00, 0x00, 0xc0,       // mov $0xc0000080,%ecx (EFER)
        0x0f, 0x32,                               // rdmsr
        0x66, 0x0d, 0x00, 0x01, 0x00, 0x00,       // or $0x100,%eax (LME)
        0x0f, 0x30,                               // wrmsr
        0x0f, 0x20, 0xc0,                         // mov %cr0,%eax
        0x66, 0x0d, 0x01, 0x00, 0x00, 0x80,       // or $0x80000001,%eax (PG|PE)
        0x0f, 0x22, 0xc0,                         // mov %eax,%cr0
        0x66, 0xea, 0x62, 0xf0, 0x0f, 0x00, 0x08, 0x00, // ljmpl $0x08,$0xff062
        // .code64, at 0xf062
        0xb9, n0, n1, n2, n3,                     // mov $WRITES,%ecx
        0x31, 0xc0,                               // xor %eax,%eax
        // 1:
        0xe6, PORT as u8,                         // out %al,$PORT
        0xe6, OTHER_PORT as u8,                   // out %al,$OTHER_PORT
        0xff, 0xc0,                               // inc %eax
        0xff, 0xc9,                               // dec %ecx
        0x75, 0xf6,                               // jnz 1b
        // Exit with 0x40 | EFER.LMA: proof that the loop ran in long mode.
        0xb9, 0x80, 0x00, 0x00, 0xc0,             // mov $0xc0000080,%ecx
        0x0f, 0x32,                               // rdmsr
        0xc1, 0xe8, 0x0a,                         // shr $10,%eax
        0x83, 0xe0, 0x01,                         // and $1,%eax
        0x0c, 0x40,                               // or $0x40,%al
        0xe6, EXIT_PORT as u8,                    // out %al,$EXIT_PORT
        // 2:
        0xf4,                                     // hlt
        0xeb, 0xfd,                               // jmp 2b
    ];
    rom[0xf000..0xf000 + code.len()].copy_from_slice(code);
    // GDT at 0xf0a0: null, then a 64-bit code segment (accessed already,
    // so the CPU never writes to this read-only memory).
    rom[0xf0a8..0xf0b0].copy_from_slice(&0x00af_9b00_0000_ffffu64.to_le_bytes());
    // gdtr at 0xf0b0: limit, linear base.
    rom[0xf0b0..0xf0b2].copy_from_slice(&15u16.to_le_bytes());
    rom[0xf0b2..0xf0b6].copy_from_slice(&0xf_f0a0u32.to_le_bytes());
    // Reset vector: ljmp $0xf000,$0xf000.
    rom[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x00, 0xf0, 0x00, 0xf0]);
    rom
}

/// Kills and reaps the process when the test ends, however it ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's output as they come, and all of it at the end.
fn lines_of(
    out: impl Read + Send + 'static,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<String>) {
    let (tx, rx) = mpsc::channel();
    let all = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    (rx, all)
}

/// Waits for a line containing `what`; else panics with the child's stderr.
fn wait_for_line(rx: &mpsc::Receiver<String>, what: &str, who: &mut Reap, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = who.0.kill();
                panic!(
                    "{name} never printed '{what}' ({e}): {}",
                    stderr_of(&mut who.0)
                )
            }
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration, who: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{who} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// What one run of the guest under `vmprobe attach` gave.
struct Run {
    stdout: String,
    stderr: String,
    /// bpftrace's output, where it is installed.
    bpftrace: Option<String>,
    /// From starting the guest to QEMU's exit.
    guest: Duration,
}

/// Starts the guest paused, attaches vmprobe with `program` (and bpftrace,
/// counting the same writes, if `with_bpftrace` and installed), runs the
/// guest to its end and collects both outputs. `None` (after saying why)
/// where KVM is unusable.
fn run_guest(program: &str, with_bpftrace: bool) -> Option<Run> {
    run_guest_with(program, with_bpftrace, false)
}

/// [`run_guest`], and with `vmm_log` QEMU writes its trace events to a log
/// that vmprobe follows (`--vm ...,log:PATH`), for `vmm:` probes.
fn run_guest_with(program: &str, with_bpftrace: bool, vmm_log: bool) -> Option<Run> {
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("note: skipping, /dev/kvm cannot be opened: {e}");
        return None;
    }
    if !Path::new("/sys/kernel/tracing/events/kvm/kvm_pio").exists() {
        eprintln!("note: skipping, no kvm:kvm_pio tracepoint in /sys/kernel/tracing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let rom = dir.path().join("rom.bin");
    std::fs::write(&rom, firmware(WRITES)).unwrap();
    // Two monitors: QEMU serves one client on each. vmprobe takes one; the
    // test, playing the user, starts the guest through the other.
    let (user_qmp, probe_qmp) = (dir.path().join("user.qmp"), dir.path().join("probe.qmp"));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "pc", "-accel", "kvm", "-m", "16", "-S", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-bios"])
        .arg(&rom)
        .args([
            "-device",
            &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1"),
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", user_qmp.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", probe_qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let log = dir.path().join("qemu.log");
    if vmm_log {
        qemu.arg("-D").arg(&log).args(["-msg", "timestamp=on"]);
    }
    let mut qemu = Reap(qemu.spawn().expect("starting qemu-system-x86_64"));
    let qemu_pid = qemu.0.id();
    let mut user = match qemu_vmm::Qmp::connect_unix_wait(&user_qmp, Duration::from_secs(10)) {
        Ok(q) => q,
        Err(e) => {
            // `-accel kvm` fails at start when KVM_CREATE_VM does.
            let _ = wait_exit(&mut qemu.0, Duration::from_secs(10), "QEMU");
            let why = stderr_of(&mut qemu.0);
            assert!(
                why.contains("kvm") || why.contains("KVM"),
                "QEMU did not start for another reason than KVM: {e}: {why}"
            );
            eprintln!("note: skipping, QEMU cannot use KVM here: {}", why.trim());
            return None;
        }
    };

    // Ground truth from a tool nobody here wrote, attached before the guest
    // starts. `pid` is the thread group: every QEMU thread.
    let mut bpftrace = with_bpftrace
        .then(|| {
            Command::new("bpftrace")
                .arg("-e")
                .arg(format!(
                    "BEGIN {{ printf(\"ready\\n\"); }} \
                     tracepoint:kvm:kvm_pio /pid == {qemu_pid} && args->port == {PORT}/ {{ @pio = count(); }}"
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| eprintln!("note: bpftrace not run ({e}): comparing with the guest code only"))
                .ok()
                .map(Reap)
        })
        .flatten();
    let bpftrace_out = bpftrace.as_mut().map(|b| {
        let (rx, all) = lines_of(b.0.stdout.take().unwrap());
        wait_for_line(&rx, "ready", b, "bpftrace");
        all
    });

    let mut probe = Reap(
        vmprobe()
            .args(["attach", "--stats", "--duration", "120", "--vm"])
            .arg(if vmm_log {
                format!("kvm1=qmp:{},log:{}", probe_qmp.display(), log.display())
            } else {
                format!("kvm1=qmp:{}", probe_qmp.display())
            })
            .args(["-e", program])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmprobe"),
    );
    let (probe_lines, probe_out) = lines_of(probe.0.stdout.take().unwrap());
    // Armed: the perf events are enabled before this line is printed.
    wait_for_line(&probe_lines, "Attaching ", &mut probe, "vmprobe");
    let (_, probe_err) = lines_of(probe.0.stderr.take().unwrap());

    let started = Instant::now();
    user.cont().expect("starting the guest");
    let status = wait_exit(&mut qemu.0, Duration::from_secs(120), "QEMU");
    let guest = started.elapsed();
    assert_eq!(
        status.code(),
        Some(((0x40 | 1) << 1) | 1),
        "the guest did not finish its loop in long mode: {}",
        stderr_of(&mut qemu.0)
    );

    // vmprobe ends by itself when the VM's vCPU threads are gone.
    let probe_status = wait_exit(&mut probe.0, Duration::from_secs(60), "vmprobe");
    let (stdout, stderr) = (probe_out.join().unwrap(), probe_err.join().unwrap());
    eprintln!("vmprobe attach ({guest:?} for the guest):\n{stdout}{stderr}");
    assert!(probe_status.success(), "vmprobe attach failed: {stderr}");
    assert!(stderr.contains("kvm1: the VM exited"), "{stderr}");
    // No stub was opened and no kernel was read for host tracepoints.
    assert!(!stderr.contains("KASLR"), "{stderr}");

    let bpftrace = bpftrace.zip(bpftrace_out).map(|(mut b, out)| {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&b.0),
            rustix::process::Signal::INT,
        )
        .expect("interrupting bpftrace");
        let status = wait_exit(&mut b.0, Duration::from_secs(30), "bpftrace");
        let out = out.join().unwrap();
        eprintln!("bpftrace:\n{out}");
        assert!(status.success(), "bpftrace: {}", stderr_of(&mut b.0));
        out
    });
    Some(Run {
        stdout,
        stderr,
        bpftrace,
        guest,
    })
}

#[test]
fn kvm_pio_count_of_a_long_mode_guest_matches_its_code_and_bpftrace() {
    let program = format!(
        "host:tracepoint:kvm:kvm_pio /args.port == {PORT:#x}/ {{ @pio = count(); @bytes = sum(args.val); }}"
    );
    let Some(run) = run_guest(&program, true) else {
        return;
    };
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    assert_eq!(map_value(stdout, "pio"), WRITES as u64, "{stdout}");
    // Each write's value is the loop counter's low byte.
    let bytes: u64 = (0..WRITES as u64).map(|i| i & 0xff).sum();
    assert_eq!(map_value(stdout, "bytes"), bytes, "{stdout}");
    // The predicate ran in the kernel: the writes to OTHER_PORT were never
    // sampled.
    assert!(
        stderr.contains(&format!("kvm:kvm_pio: in-kernel filter `port == {PORT}`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("host: {WRITES} samples, 0 lost")),
        "{stderr}"
    );
    if let Some(out) = &run.bpftrace {
        assert_eq!(map_value(out, "pio"), WRITES as u64, "bpftrace: {out}");
    }
}

/// A predicate the kernel cannot check (a disjunction with a builtin): every
/// `kvm_pio` of the vCPU is sampled, the handler's predicate alone decides,
/// and the count is the same.
#[test]
fn kvm_pio_count_without_an_in_kernel_filter_is_the_same() {
    let program = format!(
        "host:tracepoint:kvm:kvm_pio /args.port == {PORT:#x} || nsecs == 0/ {{ @pio = count(); }}"
    );
    let Some(run) = run_guest(&program, false) else {
        return;
    };
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    assert_eq!(map_value(stdout, "pio"), WRITES as u64, "{stdout}");
    assert!(!stderr.contains("in-kernel filter"), "{stderr}");
    // Both ports in the loop, and the exit port once.
    assert!(
        stderr.contains(&format!("host: {} samples, 0 lost", 2 * WRITES + 1)),
        "{stderr}"
    );
    eprintln!("guest ran {:?}", run.guest);
}

/// Host tracepoints find the vCPU threads through QMP: a VM given by its
/// stub alone is refused up front, naming what is missing; so are `vmm:`
/// probes without QEMU's log file.
#[test]
fn attach_refuses_layers_without_what_they_need() {
    let out = run_bounded(
        vmprobe().args([
            "attach",
            "--vm",
            "vm1=gdb:127.0.0.1:1",
            "-e",
            "host:tracepoint:kvm:kvm_pio { @ = count(); }",
        ]),
        RUN_LIMIT,
    );
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim(),
        "vmprobe: vm1: host:tracepoint: probes need qmp:PATH to find the VM's vCPU threads"
    );
    let out = run_bounded(
        vmprobe().args([
            "attach",
            "--vm",
            "vm1=qmp:/nonexistent/vm1.qmp",
            "-e",
            "vmm:serial_write { @ = count(); }",
        ]),
        RUN_LIMIT,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("vm1: vmm: probes need qmp:PATH and log:PATH"),
        "{}",
        text(&out.stderr)
    );
}

/// Two layers, one truth: every port write of the guest is a `kvm_pio` in
/// the host kernel and a `KVM_EXIT_IO` (reason 2) that QEMU's own
/// `kvm_run_exit` trace event reports. vmprobe counts both from one script
/// (host tracepoint through perf, VMM event through QEMU's log) on a VM it
/// attached to through QMP alone.
#[test]
fn kvm_run_exit_in_qemu_equals_kvm_pio_in_the_host() {
    let program = "host:tracepoint:kvm:kvm_pio { @pio = count(); }\n\
                   vmm:kvm_run_exit /args.reason == 2/ { @io_exits = count(); @vcpu[args.cpu_index] = count(); }";
    let Some(run) = run_guest_with(program, false, true) else {
        return;
    };
    let stdout = &run.stdout;
    // Both ports in the loop, and the exit port once.
    let writes = 2 * WRITES as u64 + 1;
    assert_eq!(map_value(stdout, "pio"), writes, "{stdout}");
    assert_eq!(map_value(stdout, "io_exits"), writes, "{stdout}");
    assert_eq!(keyed_map(stdout, "vcpu"), [(0, writes)].into(), "{stdout}");
}
