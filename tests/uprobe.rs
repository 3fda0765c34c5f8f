//! uprobe/uretprobe in guest processes (default guest, TCG, gdb backend):
//! `vmprobe-ucount` prints its own count of `ucount_step` calls and each
//! call's return value, and vmprobe's counts, arguments and return values
//! must equal them. A copy of the same binary under another path (same
//! code at the same virtual addresses, on another mount) runs alongside,
//! on a second vCPU, and must count nothing; a probe on a file no process
//! runs never fires. `vmprobe-upie` (a PIE, dynamically linked against the
//! default guest's glibc) and libc itself are served at each process's own
//! load address, on both backends, for processes started before and after
//! attaching.

mod support;
use std::collections::BTreeMap;

fn default_guest_cache() -> std::path::PathBuf {
    default_guest();
    qemu_guest::cache_dir()
}
use support::*;

const PROGRAM: &str = r#"
uprobe:/bin/vmprobe-ucount:ucount_step { @calls = count(); @args[arg0] = count(); }
uretprobe:/bin/vmprobe-ucount:ucount_step { @ret[retval] = count(); @rets = count(); }
uprobe:/bin/vmprobe-ucount:ucount_step /arg0 == 3/ { @stack[ustack(2)] = count(); }
uretprobe:/bin/vmprobe-ucount:ucount_step { @usym[usym(reg("ip"))] = count(); }
uprobe:/bin/vmprobe-fpstack:f1 { @never = count(); }
"#;

/// The real binary's output goes to a file, printed with a prefix after
/// both ran; the copy's (in /tmp, a tmpfs, under the same file name) is
/// dropped. They run at once on two vCPUs, twice.
const WORKLOAD: &str = "mkdir -p /tmp/bin && cp /bin/vmprobe-ucount /tmp/bin/vmprobe-ucount && \
    (/tmp/bin/vmprobe-ucount 9 > /dev/null & /bin/vmprobe-ucount 25 > /tmp/real.txt; wait) && \
    (/bin/vmprobe-ucount 6 >> /tmp/real.txt & /tmp/bin/vmprobe-ucount 11 > /dev/null; wait) && \
    sed 's/^/REAL /' /tmp/real.txt";

#[test]
fn uprobe_counts_exactly_the_calls_of_its_file_and_uretprobe_sees_their_return_values() {
    let (stdout, stderr) = counts_and_returns("gdb");
    // ustack is symbolised from the ELF. At a function's entry the frame
    // pointer is still the caller's, so the walk goes from the pc to the
    // caller's return address (main's caller), as Linux's perf callchain
    // (and so bpftrace) does.
    assert!(
        stdout.contains("@stack[\n    ucount_step+0\n    __libc_start_call_main+")
            && stdout.contains("]: 2\n"),
        "{stdout}"
    );
    // usym of the pc at each return: the caller, main, from the ELF.
    assert_eq!(
        keyed_map_str(&stdout, "usym"),
        [("main".to_string(), 31)],
        "{stdout}"
    );
    // The copy's 20 calls stopped the guest and were told apart.
    let other: u64 = stderr
        .split(" uprobe stops in other files")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no uprobe stops in the stats: {stderr}"));
    assert!(other >= 20, "{other} stops in other files: {stderr}");
}

/// The same inside QEMU: the plugin instruments the address at
/// translation and filters by the mapped file the same way (`ustack`
/// frames are addresses there: the plugin is not sent the ELF's symbols).
#[test]
fn the_plugin_backend_serves_uprobes_the_same() {
    if qemu10().is_none() {
        return;
    }
    let (stdout, stderr) = counts_and_returns("plugin");
    assert!(stderr.contains("plugin backend"), "{stderr}");
    assert!(stdout.contains("@stack[\n    0x"), "{stdout}");
    let usyms = keyed_map_str(&stdout, "usym");
    assert!(
        usyms.len() == 1 && usyms[0].0.starts_with("0x") && usyms[0].1 == 31,
        "{stdout}"
    );
}

/// Runs the workload with the probes on `backend`, checks every count,
/// argument and return value against the program's own, and gives
/// vmprobe's stdout and stderr.
fn counts_and_returns(backend: &str) -> (String, String) {
    // The address form too: the second instruction of ucount_step, from
    // the ELF the guest runs.
    let ucount = qemu_guest::default_guest_files(&default_guest_cache())
        .into_iter()
        .find(|(g, _)| g == "/bin/vmprobe-ucount")
        .expect("the default guest's ucount")
        .1;
    let elf = kernel_image::UserElf::load(&ucount).unwrap();
    let step = elf.lookup("ucount_step").unwrap().addr;
    let code = elf.code(step, 15).unwrap();
    let first = iced_x86::Decoder::with_ip(64, code, step, 0).decode().len() as u64;
    let program = format!(
        "{PROGRAM}uprobe:/bin/vmprobe-ucount:{:#x} {{ @inside = count(); }}\n\
         uprobe:/bin/vmprobe-ucount:ucount_step+{first} {{ @plus[func] = count(); }}\n",
        step + first
    );
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--console",
            "--stats",
            "-v",
            "--backend",
            backend,
            "--vcpus",
            "2",
            "-e",
            &program,
            "--",
            WORKLOAD,
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    // What the program itself saw.
    let real: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split("REAL ").nth(1))
        .collect();
    let their_calls: u64 = real
        .iter()
        .filter_map(|l| l.strip_prefix("ucount calls "))
        .map(|n| n.trim().parse::<u64>().expect("count"))
        .sum();
    assert_eq!(
        their_calls, 31,
        "the program's own counts: {real:?}\n{stderr}"
    );
    let mut their_rets: BTreeMap<u64, u64> = BTreeMap::new();
    for r in real.iter().filter_map(|l| l.strip_prefix("ucount ret ")) {
        *their_rets
            .entry(r.trim().parse().expect("ret"))
            .or_default() += 1;
    }
    assert_eq!(map_value(&stdout, "calls"), their_calls, "{stdout}");
    assert_eq!(map_value(&stdout, "inside"), their_calls, "{stdout}");
    // FUNC+OFFSET is that same instruction, named as bpftrace names it.
    let plus = keyed_map_str(&stdout, "plus");
    assert_eq!(plus.len(), 1, "{stdout}");
    assert!(plus[0].0.starts_with("ucount_step+"), "{stdout}");
    assert_eq!(plus[0].1, their_calls, "{stdout}");
    assert_eq!(map_value(&stdout, "rets"), their_calls, "{stdout}");
    assert_eq!(keyed_map(&stdout, "ret"), their_rets, "{stdout}");
    // arg0 is i: 0..25 from the first run and 0..6 from the second.
    let args = keyed_map(&stdout, "args");
    let expected: BTreeMap<u64, u64> = (0..25).map(|i| (i, if i < 6 { 2 } else { 1 })).collect();
    assert_eq!(args, expected, "{stdout}");
    // A file no process maps never fires (a map its block writes prints
    // as zero).
    assert!(
        !stdout.contains("@never") || map_value(&stdout, "never") == 0,
        "{stdout}"
    );
    (stdout, stderr)
}

/// `vmprobe list 'uprobe:PATH:*'` lists the ELF's functions.
#[test]
fn list_names_the_functions_of_a_guest_file() {
    default_guest();
    let out = run_bounded(
        vmprobe().args(["list", "uprobe:/bin/vmprobe-ucount:ucount_*"]),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "uprobe:/bin/vmprobe-ucount:ucount_step\n"
    );
    let out = run_bounded(
        vmprobe().args(["list", "uprobe:/bin/vmprobe-ucount:*"]),
        RUN_LIMIT,
    );
    let all = text(&out.stdout);
    assert!(
        all.lines().any(|l| l == "uprobe:/bin/vmprobe-ucount:main"),
        "{all}"
    );
    assert!(all.lines().count() > 100, "{all}");
    // bpftrace's library names, from the default guest's ld cache.
    let out = run_bounded(
        vmprobe().args(["list", "uprobe:libc:getaddrinfo"]),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "uprobe:/lib/x86_64-linux-gnu/libc.so.6:getaddrinfo\n"
    );
}

/// A library name the guest's ld cache does not have is a one-line error
/// naming it and the cache, before anything boots.
#[test]
fn an_unknown_library_name_fails_before_booting() {
    let guest = default_guest();
    let cache = qemu_guest::default_guest_root(&qemu_guest::cache_dir())
        .expect("the default guest's root")
        .join("etc/ld.so.cache");
    assert!(guest.initrd.is_file());
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            "uprobe:libnothere:f { @ = count(); }",
            "--",
            "true",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let first = stderr.lines().next().unwrap_or("");
    assert_eq!(
        first,
        format!(
            "error: libnothere: no library libnothere.so* in the guest's ld cache {}",
            cache.display()
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("booting"), "{stderr}");
}

/// `vmprobe attach` to a VM started elsewhere: without `qmp:` uprobes
/// are refused (only QMP says the VM runs under TCG); with it, the calls
/// of every run of `vmprobe-ucount` whose main vmprobe saw enter are
/// counted, 4 per run, and the guest goes on after detach.
#[test]
fn attach_serves_uprobes_on_a_tcg_vm_given_its_qmp() {
    use qemu_guest::{Accel, LaunchConfig, Vm};
    use std::time::Duration;
    let image = default_guest();
    let kernel = image.kernel.clone();
    let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.console = Some(console.clone());
    let mut vm = Vm::launch(&cfg).expect("launch");
    boot_through_stub(&mut vm);
    vm.start_workload(
        "i=0; while [ $i -lt 60 ]; do /bin/vmprobe-ucount 4 > /dev/null; sleep 0.3; \
         i=$((i+1)); done; echo WORKLOAD-DONE",
    )
    .unwrap();
    let gdb_only = format!(
        "vm0=gdb:unix:{},kernel:{}",
        vm.gdb_socket().display(),
        kernel.display()
    );
    let program = "uprobe:/bin/vmprobe-ucount:main { @mains = count(); }
        uprobe:/bin/vmprobe-ucount:ucount_step /@mains > 0/ { @steps = count(); }
        uretprobe:/bin/vmprobe-ucount:main { @done = count(); if (@done == 3) { exit(); } }";
    let out = run_bounded(
        vmprobe().args(["attach", "--vm", &gdb_only, "-e", program]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("uprobes need the VM's qmp:PATH, to check that it runs under TCG"),
        "{stderr}"
    );
    let spec = format!("{gdb_only},qmp:{}", vm.qmp_socket().display());
    let out = run_bounded(
        vmprobe().args(["attach", "--duration", "120", "--vm", &spec, "-e", program]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe attach failed: {stderr}");
    // A uretprobe pairs only with an entry it saw, and the steps of a run
    // count only once its main was seen: 3 whole runs.
    assert_eq!(map_value(&stdout, "done"), 3, "{stdout}");
    assert_eq!(map_value(&stdout, "steps"), 12, "{stdout}");
    assert!(map_value(&stdout, "mains") >= 3, "{stdout}");
    assert_eq!(vm.wait_exit(RUN_LIMIT).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(300));
    let console = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    assert!(console.contains("WORKLOAD-DONE"), "{console}");
    vm.shutdown(Duration::from_secs(20))
        .expect("guest powers off");
}

/// `vmprobe record` of a uprobe and its uretprobe: one event per call and
/// per return, with the argument and the return value the program computes
/// (i * i + 7).
#[test]
fn record_traces_uprobe_arguments_and_return_values() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let out = run_bounded(
        vmprobe().args(["record", "-o"]).arg(&trace).args([
            "-e",
            "uprobe:/bin/vmprobe-ucount:ucount_step { trace(i = arg0); }
                 uretprobe:/bin/vmprobe-ucount:ucount_step { trace(r = retval); }",
            "--",
            "/bin/vmprobe-ucount 3",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recorded 6 events"), "{stderr}");
    let fields: Vec<String> = babeltrace(&trace)
        .iter()
        .filter_map(|l| {
            l.rsplit(", { ")
                .next()
                .map(|f| f.trim_end_matches(" }").to_string())
        })
        .collect();
    assert_eq!(
        fields,
        ["i = 0", "r = 7", "i = 1", "r = 8", "i = 2", "r = 11"]
    );
}

/// A PIE executable and the guest's libc (bpftrace's library name `libc`,
/// from the default guest's ld cache), each loaded at its own address in
/// each process (ASLR on): `vmprobe-upie` (`cc -fPIE -pie`, dynamically
/// linked) prints its pid, where its `upie_step` runs and its own count of
/// the calls to `upie_step` and to libc's `getppid`. On both backends the
/// counts per pid equal the program's, in two processes at different
/// addresses; a copy of the program under another path (the same code at
/// its own addresses) never fires the PIE's probe, and fires libc's, whose
/// file it maps too.
#[test]
fn uprobes_in_a_pie_and_in_libc_count_each_processs_calls_at_its_own_addresses() {
    default_guest();
    pie_and_libc("gdb");
    if qemu10().is_some() {
        pie_and_libc("plugin");
    }
}

fn pie_and_libc(backend: &str) {
    let program =
        "uprobe:/bin/vmprobe-upie:upie_step { @steps[pid] = count(); @top[ustack(1)] = count(); }
        uretprobe:/bin/vmprobe-upie:upie_step { @rets[pid] = sum(retval); }
        uprobe:libc:getppid { @ppid[pid] = count(); @ltop[ustack(1)] = count(); }";
    let workload = "cp /bin/vmprobe-upie /tmp/upie-copy && \
        (/tmp/upie-copy 9 > /tmp/other.txt & /bin/vmprobe-upie 5 > /tmp/real.txt; wait) && \
        /bin/vmprobe-upie 7 >> /tmp/real.txt && \
        sed 's/^/REAL /' /tmp/real.txt && sed 's/^/OTHER /' /tmp/other.txt";
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--console",
            "--stats",
            "--backend",
            backend,
            "--vcpus",
            "2",
            "-e",
            program,
            "--",
            workload,
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{backend}: vmprobe failed: {stderr}");
    // "upie pid P at ADDR calls N sum S"
    let runs = |prefix: &str| -> Vec<(u64, String, u64)> {
        stderr
            .lines()
            .filter_map(|l| l.split(prefix).nth(1))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(w.len(), 9, "{l}");
                (
                    w[2].parse().unwrap(),
                    w[4].to_string(),
                    w[6].parse().unwrap(),
                )
            })
            .collect()
    };
    let real = runs("REAL ");
    let other = runs("OTHER ");
    assert_eq!(real.len(), 2, "{stderr}");
    assert_eq!(other.len(), 1, "{stderr}");
    assert_ne!(
        real[0].1, real[1].1,
        "ASLR placed both at one address: {real:?}"
    );
    let steps = keyed_map(&stdout, "steps");
    let rets = keyed_map(&stdout, "rets");
    let ppid = keyed_map(&stdout, "ppid");
    let expected = |f: &dyn Fn(u64) -> u64| -> BTreeMap<u64, u64> {
        real.iter().map(|(pid, _, n)| (*pid, f(*n))).collect()
    };
    assert_eq!(steps, expected(&|n| n), "{backend}: {stdout}\n{real:?}");
    // upie_step(i) returns i + 1.
    assert_eq!(rets, expected(&|n| n * (n + 1) / 2), "{backend}: {stdout}");
    let mut all = expected(&|n| n);
    all.insert(other[0].0, other[0].2);
    assert_eq!(ppid, all, "{backend}: {stdout}\n{other:?}");
    // Through the stub, frames are placed by their offset in the file each
    // process loaded at its own address.
    if backend == "gdb" {
        let steps_total: u64 = steps.values().sum();
        let ppid_total: u64 = all.values().sum();
        for frame in [
            format!("@top[\n    upie_step+0\n]: {steps_total}\n"),
            format!("@ltop[\n    getppid+0\n]: {ppid_total}\n"),
        ] {
            assert!(stdout.contains(&frame), "{frame}: {stdout}");
        }
    }
    eprintln!("{backend}: steps {steps:?}, getppid {ppid:?}, at {real:?}");
}

/// A process that mapped its PIE before vmprobe attached is found by the
/// walk of the guest's processes at attach (it maps nothing after): a bash
/// loop of builtins, started and running before `vmprobe attach`, fires
/// `uprobe:/bin/bash:execute_command` in that bash only; the probe exits
/// the run after 40 calls. Through the stub (QEMU 7.2 or 10) and, with
/// QEMU 10, inside QEMU.
#[test]
fn a_pie_mapped_before_attaching_is_armed_at_attach() {
    running_before_attach(false);
    if qemu10().is_some() {
        running_before_attach(true);
    }
}

fn running_before_attach(plugin: bool) {
    use qemu_guest::{Accel, LaunchConfig, Vm};
    use std::time::{Duration, Instant};
    let image = default_guest();
    let kernel = image.kernel.clone();
    let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.console = Some(console.clone());
    if plugin {
        cfg.qemu = qemu10().expect("QEMU 10");
        cfg.plugin = Some(plugin_library());
    }
    let mut vm = Vm::launch(&cfg).expect("launch");
    boot_through_stub(&mut vm);
    vm.start_workload(
        "bash --norc -c 'echo BPID=$$; i=0; while [ $i -lt 100000000 ]; do i=$((i+1)); done'",
    )
    .unwrap();
    let deadline = Instant::now() + RUN_LIMIT;
    let bpid = loop {
        let text = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("BPID="))
            .and_then(|p| p.trim().parse::<u64>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no BPID=N:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut spec = format!(
        "vm0=gdb:unix:{},qmp:{},kernel:{}",
        vm.gdb_socket().display(),
        vm.qmp_socket().display(),
        kernel.display()
    );
    if plugin {
        spec.push_str(&format!(",plugin:{}", vm.plugin_socket().display()));
    }
    let program = "uprobe:/bin/bash:execute_command { @calls[pid] = count(); @n = count();
        if (@n == 40) { exit(); } }";
    let out = run_bounded(
        vmprobe().args(["attach", "--duration", "120", "--vm", &spec, "-e", program]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe attach failed: {stderr}");
    let calls = keyed_map(&stdout, "calls");
    assert_eq!(
        calls.keys().copied().collect::<Vec<_>>(),
        [bpid],
        "plugin {plugin}: {stdout}"
    );
    assert!(calls[&bpid] >= 40, "plugin {plugin}: {stdout}");
    eprintln!("plugin {plugin}: bash {bpid} running before attach: {calls:?}");
    drop(vm);
}
