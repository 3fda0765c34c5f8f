//! The in-VMM backend end to end, on QEMU 10 with vmprobe's plugin: a
//! VM someone else started is attached through the plugin's socket,
//! survives a vmprobe killed mid-run, and is attached again with counts
//! equal to the guest kernel's own; `vmprobe run` serves two vCPUs inside
//! QEMU with the guest's count. Skipped without QEMU 10, unless
//! `VMPROBE_REQUIRE_QEMU10=1` (CI).

mod support;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const LIVE: &str = "probes live in QEMU";

/// A VM started as a user would, with `vmprobe qemu-args`' flags: the
/// plugin loaded, no gdbstub, booted through QMP.
fn user_vm(qemu: std::path::PathBuf, console: Arc<Mutex<Vec<u8>>>) -> (Vm, std::path::PathBuf) {
    let image = default_guest();
    let kernel = image.kernel.clone();
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.qemu = qemu;
    cfg.gdbstub = false;
    cfg.plugin = Some(plugin_library());
    cfg.console = Some(console);
    let mut vm = Vm::launch(&cfg).expect("launch QEMU 10 with the plugin");
    qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5))
        .and_then(|mut q| q.cont())
        .expect("starting the guest through QMP");
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    (vm, kernel)
}

fn vm_running(vm: &Vm) -> bool {
    let mut qmp = qemu_vmm::Qmp::connect_unix(&vm.qmp_socket(), Duration::from_secs(5))
        .expect("QMP after vmprobe");
    qmp.query_status().expect("query-status").running
}

/// Acceptance: SIGKILL mid-run leaves the guest running with nothing
/// instrumented, and a second attach works, with exact counts.
#[test]
fn a_killed_vmprobe_leaves_the_vm_running_and_it_can_be_attached_again() {
    let Some(qemu) = qemu10() else { return };
    let console = Arc::new(Mutex::new(Vec::new()));
    let (mut vm, kernel) = user_vm(qemu, console.clone());
    let spec = format!(
        "vm0=plugin:{},kernel:{}",
        vm.plugin_socket().display(),
        kernel.display()
    );

    // Paced writes for about 20 s, so that vmprobe is killed while hits
    // run handlers inside QEMU.
    vm.start_workload(
        "i=0; while [ $i -lt 80 ]; do dd if=/dev/zero of=/dev/null bs=1 count=50 2>/dev/null; \
         sleep 0.25; i=$((i+1)); done",
    )
    .unwrap();
    let (mut first, stdout, stderr) = spawn_collected(vmprobe().args([
        "attach",
        "--vm",
        &spec,
        "-e",
        "kprobe:ksys_write /arg2 == 1/ { @w = count(); } interval:ms:200 { print(@w); }",
    ]));
    stderr.wait_for(LIVE, RUN_LIMIT);
    // Handlers ran inside QEMU: their counts came back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stdout.text().lines().any(|l| l.starts_with("@w: ")) {
        assert!(
            Instant::now() < deadline,
            "no count from the plugin:\n{}\n{}",
            stdout.text(),
            stderr.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().expect("SIGKILL vmprobe");
    first.wait().unwrap();

    // The guest finishes its workload, and its QEMU runs on.
    assert_eq!(
        vm.wait_exit(Duration::from_secs(180))
            .expect("the workload ends after vmprobe died"),
        0,
        "{}",
        vm.console_tail()
    );
    assert!(vm_running(&vm), "the VM stopped after vmprobe died");

    // Attached again: the plugin freed itself when the socket closed, and
    // counts exactly what the guest kernel counts over the same window.
    let program = format!(
        "{}\nkprobe:ksys_write /arg2 == {WINDOW_END}/ {{ exit(); }}",
        windowed_count_program()
    );
    let (mut second, stdout, stderr) =
        spawn_collected(vmprobe().args(["attach", "--stats", "--vm", &spec, "-e", &program]));
    stderr.wait_for(LIVE, RUN_LIMIT);
    let from = console.lock().unwrap().len();
    let n = 300;
    vm.start_workload(&ground_truth_workload(&format!(
        "dd if=/dev/zero of=/dev/null bs=1 count={n}"
    )))
    .unwrap();
    assert_eq!(vm.wait_exit(Duration::from_secs(180)).unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "exit() did not end the attach");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert!(status.success(), "second attach: {stderr}");
    let guest = console_until(&console, from, GT_END, Duration::from_secs(30));
    assert_eq!(map_value(&stdout, "writes"), ground_truth_hits(&guest));
    assert_eq!(map_value(&stdout, "writes"), n, "{stdout}\n{guest}");
    assert!(stderr.contains("plugin backend"), "{stderr}");
    // Detached, the plugin left QEMU no translation callback: the guest
    // runs the code it would run without the plugin.
    assert!(
        stderr.contains("detached: QEMU translates without the plugin"),
        "{stderr}"
    );

    // And after that detach, the guest still runs its workloads.
    vm.start_workload("true").unwrap();
    assert_eq!(vm.wait_exit(Duration::from_secs(60)).unwrap(), 0);
    assert!(vm_running(&vm));
    let _ = vm.shutdown(Duration::from_secs(10));
}

/// `vmprobe run` on two vCPUs, handlers inside QEMU: two writers in
/// parallel, one pinned to each vCPU, every hit counted once as the guest
/// counts, and each on the vCPU that made it.
#[test]
fn run_counts_two_vcpus_inside_qemu_as_the_guest_does() {
    let Some(qemu) = qemu10() else { return };
    let workload = ground_truth_workload(
        "{ taskset 1 dd if=/dev/zero of=/dev/null bs=1 count=150 & \
         taskset 2 dd if=/dev/zero of=/dev/null bs=1 count=150 & wait; }",
    );
    let program = format!(
        "{}\nkprobe:ksys_write /arg2 == 1/ {{ @per_vcpu[vcpu] = count(); }}",
        windowed_count_program()
    );
    let out = run_bounded(
        vmprobe()
            // No --stats: its line, printed while the console streams on the
            // same stderr, can split a ground-truth line (it did once).
            .args(["run", "--console", "--backend", "plugin"])
            .args(["--vcpus", "2", "--qemu"])
            .arg(&qemu)
            .args(["-e", &program, "--", &workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("plugin backend"),
        "not served inside QEMU:\n{stderr}"
    );
    let ours = map_value(&stdout, "writes");
    assert_eq!(ours, ground_truth_hits(&stderr), "{stderr}");
    assert_eq!(ours, 300, "{stderr}");
    // Each dd's writes on its own vCPU (other one-byte writes outside the
    // window may add to either).
    let per_vcpu = keyed_map(&stdout, "per_vcpu");
    assert_eq!(per_vcpu.len(), 2, "{stdout}");
    assert!(per_vcpu.values().all(|&n| n >= 150), "{stdout}");
}

/// Issue 14: a QEMU stopped under `vmprobe attach` (SIGSTOP), which vmprobe
/// did not start and so cannot watch as a process, is noticed from its
/// plugin's silence. Resumed within `--stall-timeout`, the run goes on with
/// exact counts; stopped past it, the attach ends with what was collected
/// and exit status 3, and the guest runs on once resumed.
#[test]
fn a_stopped_qemu_under_attach_is_noticed_and_ends_at_the_stall_timeout() {
    let Some(qemu) = qemu10() else { return };
    let console = Arc::new(Mutex::new(Vec::new()));
    let (mut vm, kernel) = user_vm(qemu, console);
    let spec = format!(
        "vm0=plugin:{},kernel:{}",
        vm.plugin_socket().display(),
        kernel.display()
    );
    let qemu_pid = rustix::process::Pid::from_raw(vm.pid() as i32).unwrap();
    let signal = |s| rustix::process::kill_process(qemu_pid, s).unwrap();
    let program = "kprobe:ksys_write /comm == \"dd\" && arg2 == 1/ { @w = count(); }";
    let dd = |vm: &mut Vm, n: u32| {
        vm.start_workload(&format!(
            "dd if=/dev/zero of=/dev/null bs=1 count={n} 2>/dev/null"
        ))
        .unwrap();
        assert_eq!(vm.wait_exit(Duration::from_secs(120)).unwrap(), 0);
    };

    // Stopped for a while, then resumed: the run goes on.
    let (mut child, stdout, stderr) = spawn_collected(vmprobe().args([
        "attach",
        "--stall-timeout",
        "60",
        "--vm",
        &spec,
        "-e",
        program,
    ]));
    stderr.wait_for(LIVE, RUN_LIMIT);
    dd(&mut vm, 20);
    signal(rustix::process::Signal::STOP);
    let stopped = Instant::now();
    stderr.wait_for("no reply from the plugin for", Duration::from_secs(60));
    eprintln!("stop noticed after {:?}", stopped.elapsed());
    signal(rustix::process::Signal::CONT);
    stderr.wait_for("the plugin answers again after", Duration::from_secs(30));
    dd(&mut vm, 30);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(map_value(&stdout, "w"), 50, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no reply from the plugin for 10 s; is QEMU stopped?"),
        "{stderr}"
    );

    // Stopped past the stall timeout: the attach ends with what it has.
    let (mut child, stdout, stderr) = spawn_collected(vmprobe().args([
        "attach",
        "--stall-timeout",
        "4",
        "--vm",
        &spec,
        "-e",
        program,
    ]));
    stderr.wait_for(LIVE, RUN_LIMIT);
    dd(&mut vm, 7);
    // The count reaches vmprobe before QEMU stops (a copy every 500 ms).
    std::thread::sleep(Duration::from_secs(2));
    signal(rustix::process::Signal::STOP);
    let stopped = Instant::now();
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    let took = stopped.elapsed();
    signal(rustix::process::Signal::CONT);
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    eprintln!("--stall-timeout 4 ended the attach {took:?} after SIGSTOP");
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("no reply from the plugin for 4 s (--stall-timeout)"),
        "{stderr}"
    );
    assert!(took >= Duration::from_secs(4), "{took:?}: {stderr}");
    assert_eq!(map_value(&stdout, "w"), 7, "{stdout}\n{stderr}");
    // The guest runs on, resumed.
    dd(&mut vm, 1);
    assert!(vm_running(&vm));
    let _ = vm.shutdown(Duration::from_secs(10));
}
