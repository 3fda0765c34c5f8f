//! `vmprobe attach --config FILE`, the service mode: a configuration that
//! is wrong is refused in one line before anything is attached, and a VM
//! whose QEMU is killed and started again is attached again, its counts
//! going on from where they were.

mod support;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Runs `attach --config` on `text`; returns (exit code, stderr).
fn attach_config(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("svc.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_bounded(vmprobe().args(["attach", "--config"]).arg(&path), RUN_LIMIT);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn a_bad_config_is_one_line_and_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    let file = file.display();
    // A socket that exists nowhere: had vmprobe tried to attach, the error
    // would be about connecting.
    let vm = "[[vm]]\nname = \"vm0\"\ngdb = \"unix:/nonexistent/vm0.gdb\"\n";
    let cases = [
        // Invalid TOML: where the parser stopped.
        (
            format!("program = \"BEGIN {{ exit(); }}\"\n{vm}qmp = \n"),
            format!("{file}:5:7: invalid string"),
        ),
        (
            format!("program = \"BEGIN {{ exit(); }}\"\nscirpt = \"x.bt\"\n{vm}"),
            format!("{file}:2:1: unknown field `scirpt`, expected one of"),
        ),
        (
            "program = \"BEGIN { exit(); }\"\n[[vm]]\nname = \"vm0\"\nsocket = \"/x\"\n"
                .to_string(),
            format!("{file}:4:1: unknown field `socket`"),
        ),
        (
            vm.to_string(),
            format!("{file}: no program: give `script = \"FILE\"` or `program = \"...\"`"),
        ),
        (
            "program = \"BEGIN { exit(); }\"\n[[vm]]\nname = \"vm0\"\n".to_string(),
            format!("{file}: [[vm]] 1: 'vm0': no connection"),
        ),
        (
            format!("program = \"BEGIN {{ exit(); }}\"\nmetrics = \"x:y\"\n{vm}"),
            format!("{file}:2:11: "),
        ),
    ];
    for (config, expected) in cases {
        let (code, stderr) = attach_config(dir.path(), &config);
        assert_eq!(code, Some(1), "{config}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("vmprobe: {expected}")),
            "{config}\nexpected {expected:?}, got {stderr}"
        );
    }
    // A file that is not there.
    let out = run_bounded(
        vmprobe().args(["attach", "--config", "/nonexistent/svc.toml"]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "vmprobe: /nonexistent/svc.toml: No such file or directory (os error 2)\n"
    );
    // A script file that is not there, named by where it was looked for.
    let (code, stderr) = attach_config(dir.path(), &format!("script = \"missing.bt\"\n{vm}"));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&dir.path().join("missing.bt").display().to_string()),
        "{stderr}"
    );
    // --config takes the place of --vm and the program.
    let out = run_bounded(
        vmprobe().args(["attach", "--config", "x.toml", "--vm", "a=qmp:/q"]),
        RUN_LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// The user's VM as a service would find it: QEMU with a second QMP
/// monitor at a fixed path (`sockets/vm0.qmp`), the one the service is
/// given, booted (the test resumes it through the launcher's own monitor).
fn boot_vm(sockets: &Path, console: &Arc<Mutex<Vec<u8>>>) -> Vm {
    boot_vm_at(&sockets.join("vm0.qmp"), console)
}

fn boot_vm_at(qmp_path: &Path, console: &Arc<Mutex<Vec<u8>>>) -> Vm {
    let mut cfg = LaunchConfig::new(default_guest());
    cfg.accel = Accel::Tcg;
    cfg.gdbstub = false;
    cfg.console = Some(console.clone());
    cfg.extra_args = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ];
    let mut vm = Vm::launch(&cfg).expect("launch");
    let mut qmp =
        qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5)).unwrap();
    qmp.cont().unwrap();
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    vm
}

/// N one-byte writes by dd, counted by the guest kernel's own kprobe event
/// (`GT-WRITES n` on the console) and by dd (`N+0 records out`).
fn writes_workload(n: u32, tag: &str) -> String {
    format!(
        "cd /sys/kernel/tracing && echo 'p:gt ksys_write count=%dx:u64' > kprobe_events && \
         echo 'count == 1' > events/kprobes/gt/filter && echo 1 > events/kprobes/gt/enable && \
         dd if=/dev/zero of=/dev/null bs=1 count={n} 2>/tmp/dd.txt; \
         echo 0 > events/kprobes/gt/enable; \
         echo \"{tag} GT-WRITES $(grep -c 'count=1$' trace) DD $(grep 'records out' /tmp/dd.txt)\""
    )
}

/// The guest's counts of one boot, from its console: (kernel, dd).
fn guest_counts(console: &str, tag: &str) -> (u64, u64) {
    let line = console
        .lines()
        .find_map(|l| l.split_once(&format!("{tag} GT-WRITES ")).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no {tag} counts on the console:\n{console}"));
    let mut words = line.split_whitespace();
    let kernel = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("DD"), "{line}");
    let dd = words
        .next()
        .and_then(|w| w.split('+').next())
        .unwrap()
        .parse()
        .unwrap();
    (kernel, dd)
}

/// `@c` as the service's /metrics shows it (`c_total`).
fn scraped_count(addr: &str) -> u64 {
    scraped(addr, "c_total ")
}

/// The value of the sample `series` (name and labels, then a space).
fn scraped(addr: &str, series: &str) -> u64 {
    let mut c = std::net::TcpStream::connect(addr).expect("metrics listener");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series:?} in:\n{out}"))
        .trim()
        .parse()
        .unwrap()
}

fn console_text(console: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&console.lock().unwrap()).into_owned()
}

fn wait_console(console: &Arc<Mutex<Vec<u8>>>, needle: &str) {
    let start = Instant::now();
    while !console_text(console).contains(needle) {
        assert!(
            start.elapsed() < RUN_LIMIT,
            "no {needle:?} on the console:\n{}",
            console_text(console)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Acceptance: the service survives a VM restart. QEMU is killed with
/// SIGKILL after 200 writes and a new QEMU started on the same socket; the
/// service attaches again on its own and the count goes on: 300 more
/// writes make @c 500, equal to what the guest kernel counted in its two
/// boots, at /metrics as in the printed map.
#[test]
fn a_restarted_vm_is_attached_again_and_the_counts_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let config = dir.path().join("svc.toml");
    std::fs::write(
        &config,
        format!(
            "program = \"kprobe:ksys_write /arg2 == 1/ {{ @c = count(); }}\"\n\
             metrics = \"{metrics}\"\n\
             [[vm]]\nname = \"vm0\"\nqmp = \"sockets/vm0.qmp\"\nkernel = \"{}\"\n",
            default_guest().kernel.display()
        ),
    )
    .unwrap();

    let console1 = Arc::new(Mutex::new(Vec::new()));
    let mut vm1 = boot_vm(&sockets, &console1);
    let (mut service, stdout, stderr) =
        spawn_collected(vmprobe().args(["attach", "--config"]).arg(&config));
    stderr.wait_for("attached to vm0", RUN_LIMIT);
    vm1.start_workload(&writes_workload(200, "BOOT1")).unwrap();
    assert_eq!(vm1.wait_exit(RUN_LIMIT).unwrap(), 0);
    wait_console(&console1, "BOOT1 GT-WRITES");
    let before = scraped_count(&metrics);
    let hits = "vmprobe_hits_total{guest=\"vm0\"} ";
    let hits_before = scraped(&metrics, hits);

    // The VM dies under the service.
    let killed = Instant::now();
    vm1.kill();
    drop(vm1);
    stderr.wait_for("vm0: its connection ended", Duration::from_secs(30));
    let noticed = killed.elapsed();
    assert!(service.try_wait().unwrap().is_none(), "the service ended");
    assert_eq!(scraped_count(&metrics), before, "the maps are kept");

    // A new QEMU on the same socket: attached again once booted.
    let console2 = Arc::new(Mutex::new(Vec::new()));
    let mut vm2 = boot_vm(&sockets, &console2);
    let restarted = Instant::now();
    stderr.wait_for("vm0: attached again", RUN_LIMIT);
    let reattach_secs = restarted.elapsed().as_secs_f64();
    vm2.start_workload(&writes_workload(300, "BOOT2")).unwrap();
    assert_eq!(vm2.wait_exit(RUN_LIMIT).unwrap(), 0);
    wait_console(&console2, "BOOT2 GT-WRITES");
    let after = scraped_count(&metrics);
    let hits_after = scraped(&metrics, hits);

    // SIGTERM ends the service as Ctrl-C does: END, the maps.
    std::process::Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let status = service.wait().unwrap();
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    let (kernel1, dd1) = guest_counts(&console_text(&console1), "BOOT1");
    let (kernel2, dd2) = guest_counts(&console_text(&console2), "BOOT2");
    eprintln!("{stderr}");
    eprintln!(
        "guest: {kernel1}+{kernel2} writes (dd {dd1}+{dd2}); service: {before} before the kill, \
         {after} after; noticed in {noticed:?}, attached again {reattach_secs:.1} s after the new guest was ready"
    );
    assert_eq!(
        (kernel1, kernel2),
        (dd1, dd2),
        "the guest's two counts agree"
    );
    assert_eq!((dd1, dd2), (200, 300));
    assert_eq!(before, kernel1, "{stderr}");
    let total = map_value(&stdout, "c");
    assert_eq!(total, kernel1 + kernel2, "{stdout}\n{stderr}");
    assert_eq!(after, total, "/metrics as printed");
    // vmprobe's own counter of stops served goes on too: every ksys_write
    // stops, the predicate is checked in vmprobe.
    eprintln!("vmprobe_hits_total: {hits_before} before the kill, {hits_after} at the end");
    assert!(hits_before >= kernel1, "{hits_before}");
    assert!(
        hits_after >= hits_before + kernel2,
        "{hits_before} {hits_after}"
    );
    assert!(
        stderr.contains("vm0: attached again 1 time after its VM restarted"),
        "{stderr}"
    );
    assert!(status.success(), "{status:?}\n{stderr}");
    vm2.shutdown(Duration::from_secs(20)).ok();
}

/// `@c[NAME]: N` entries of a map keyed by guest name.
fn by_guest(stdout: &str) -> std::collections::BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@c["))
        .filter_map(|rest| {
            let (k, v) = rest.split_once("]: ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A watched socket directory: a VM whose `vmw.qmp` appears there is
/// attached as `vmw`; its QEMU killed, the configured `vm0` is served on
/// (its writes are counted while vmw is away); a new QEMU at the same
/// socket is attached again and vmw's count goes on.
#[test]
fn a_vm_appearing_in_the_watched_directory_is_attached_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (fixed, watched) = (dir.path().join("fixed"), dir.path().join("watched"));
    std::fs::create_dir(&fixed).unwrap();
    std::fs::create_dir(&watched).unwrap();
    let kernel = default_guest().kernel;
    let config = dir.path().join("svc.toml");
    std::fs::write(
        &config,
        format!(
            "program = \"kprobe:ksys_write /arg2 == 1/ {{ @c[guest] = count(); }}\"\n\
             [[vm]]\nname = \"vm0\"\nqmp = \"fixed/vm0.qmp\"\nkernel = \"{k}\"\n\
             [watch]\ndir = \"watched\"\nkernel = \"{k}\"\n",
            k = kernel.display()
        ),
    )
    .unwrap();
    let console0 = Arc::new(Mutex::new(Vec::new()));
    let mut vm0 = boot_vm_at(&fixed.join("vm0.qmp"), &console0);
    let (mut service, stdout, stderr) =
        spawn_collected(vmprobe().args(["attach", "--config"]).arg(&config));
    stderr.wait_for("attached to vm0", RUN_LIMIT);

    // vmw appears.
    let console1 = Arc::new(Mutex::new(Vec::new()));
    let mut vmw = boot_vm_at(&watched.join("vmw.qmp"), &console1);
    stderr.wait_for("vmw: found in", RUN_LIMIT);
    vmw.start_workload(&writes_workload(100, "VMW1")).unwrap();
    assert_eq!(vmw.wait_exit(RUN_LIMIT).unwrap(), 0);
    wait_console(&console1, "VMW1 GT-WRITES");

    // vmw dies; vm0 is served on.
    vmw.kill();
    drop(vmw);
    stderr.wait_for("vmw: its connection ended", Duration::from_secs(30));
    vm0.start_workload(&writes_workload(200, "VM0")).unwrap();
    assert_eq!(vm0.wait_exit(RUN_LIMIT).unwrap(), 0);
    wait_console(&console0, "VM0 GT-WRITES");

    // vmw comes back at the same socket.
    let console2 = Arc::new(Mutex::new(Vec::new()));
    let mut vmw = boot_vm_at(&watched.join("vmw.qmp"), &console2);
    stderr.wait_for("vmw: attached again", RUN_LIMIT);
    vmw.start_workload(&writes_workload(50, "VMW2")).unwrap();
    assert_eq!(vmw.wait_exit(RUN_LIMIT).unwrap(), 0);
    wait_console(&console2, "VMW2 GT-WRITES");

    std::process::Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let status = service.wait().unwrap();
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    eprintln!("{stderr}");
    let (vm0_kernel, _) = guest_counts(&console_text(&console0), "VM0");
    let (vmw1_kernel, _) = guest_counts(&console_text(&console1), "VMW1");
    let (vmw2_kernel, _) = guest_counts(&console_text(&console2), "VMW2");
    assert_eq!((vm0_kernel, vmw1_kernel, vmw2_kernel), (200, 100, 50));
    let counts = by_guest(&stdout);
    eprintln!("service: {counts:?}");
    assert_eq!(counts.get("vm0"), Some(&vm0_kernel), "{stdout}\n{stderr}");
    assert_eq!(
        counts.get("vmw"),
        Some(&(vmw1_kernel + vmw2_kernel)),
        "{stdout}\n{stderr}"
    );
    assert!(status.success(), "{status:?}\n{stderr}");
    for vm in [&mut vm0, &mut vmw] {
        vm.shutdown(Duration::from_secs(20)).ok();
    }
}

/// Sends `signal` (`-HUP`, `-TERM`) to the service.
fn signal(service: &std::process::Child, signal: &str) {
    std::process::Command::new("kill")
        .args([signal, &service.id().to_string()])
        .status()
        .unwrap();
}

/// Runs `n` counted writes in `vm` and returns the guest kernel's count.
fn counted_writes(vm: &mut Vm, console: &Arc<Mutex<Vec<u8>>>, n: u32, tag: &str) -> u64 {
    vm.start_workload(&writes_workload(n, tag)).unwrap();
    assert_eq!(vm.wait_exit(RUN_LIMIT).unwrap(), 0);
    wait_console(console, &format!("{tag} GT-WRITES"));
    let (kernel, dd) = guest_counts(&console_text(console), tag);
    assert_eq!((kernel, dd), (n as u64, n as u64), "{tag}");
    kernel
}

/// Acceptance: SIGHUP reloads the script without losing the VMs' state.
/// Two VMs count writes per guest; a script with an error is refused in
/// place (the old program goes on counting); the corrected script is
/// loaded: `@c[guest]`, declared alike in both, goes on from where it
/// was, the map only the old program had is printed at the reload, the
/// new program's own map counts from the reload on. Every count equals
/// the guest kernels' own.
#[test]
fn sighup_reloads_the_script_and_the_maps_declared_alike_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let kernel = default_guest().kernel;
    let script = dir.path().join("writes.bt");
    std::fs::write(
        &script,
        "kprobe:ksys_write /arg2 == 1/ { @c[guest] = count(); @old = count(); }\n",
    )
    .unwrap();
    let config = dir.path().join("svc.toml");
    std::fs::write(
        &config,
        format!(
            "script = \"writes.bt\"\n\
             [[vm]]\nname = \"vm0\"\nqmp = \"sockets/vm0.qmp\"\nkernel = \"{k}\"\n\
             [[vm]]\nname = \"vm1\"\nqmp = \"sockets/vm1.qmp\"\nkernel = \"{k}\"\n",
            k = kernel.display()
        ),
    )
    .unwrap();
    let (console0, console1) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut vm0 = boot_vm_at(&sockets.join("vm0.qmp"), &console0);
    let mut vm1 = boot_vm_at(&sockets.join("vm1.qmp"), &console1);
    let (mut service, stdout, stderr) =
        spawn_collected(vmprobe().args(["attach", "--config"]).arg(&config));
    stderr.wait_for("attached to vm1", RUN_LIMIT);
    let a0 = counted_writes(&mut vm0, &console0, 100, "A0");
    let a1 = counted_writes(&mut vm1, &console1, 50, "A1");

    // A script with an error: said in place, the old program goes on.
    std::fs::write(&script, "kprobe:ksys_write { @c[guest] = count(); \n").unwrap();
    signal(&service, "-HUP");
    stderr.wait_for("still serving the previous program", RUN_LIMIT);
    let b0 = counted_writes(&mut vm0, &console0, 20, "B0");

    std::fs::write(
        &script,
        "kprobe:ksys_write /arg2 == 1/ { @c[guest] = count(); @new = count(); }\n",
    )
    .unwrap();
    let asked = Instant::now();
    signal(&service, "-HUP");
    stderr.wait_for("vmprobe: reloaded; maps carried over: @c", RUN_LIMIT);
    let swapped = asked.elapsed();
    stderr.wait_for("vm0: attached again", RUN_LIMIT);
    stderr.wait_for("vm1: attached again", RUN_LIMIT);
    eprintln!(
        "reload: program swapped {swapped:?} after SIGHUP, both VMs armed again {:?} after it",
        asked.elapsed()
    );
    let c0 = counted_writes(&mut vm0, &console0, 30, "C0");
    let c1 = counted_writes(&mut vm1, &console1, 40, "C1");

    signal(&service, "-TERM");
    let status = wait_for_exit(&mut service, RUN_LIMIT);
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    eprintln!("{stderr}\n{stdout}");
    assert!(status.success(), "{status:?}\n{stderr}");
    // The refused script's error names where it is, in one line.
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("vmprobe: reload:"))
        .collect();
    assert_eq!(refused.len(), 1, "{stderr}");
    assert!(refused[0].contains("writes.bt"), "{stderr}");
    assert!(
        stderr.contains("writes.bt:2:1"),
        "the error's line:column\n{stderr}"
    );
    // @old printed once, at the reload, before the new program's banner.
    let (at_reload, after) = stdout
        .split_once("Attaching 1 probe...\n")
        .and_then(|(_, rest)| rest.split_once("Attaching 1 probe...\n"))
        .unwrap_or_else(|| panic!("two banners:\n{stdout}"));
    assert_eq!(map_value(at_reload, "old"), a0 + a1 + b0, "{stdout}");
    assert!(!after.contains("@old"), "{stdout}");
    assert_eq!(map_value(after, "new"), c0 + c1, "{stdout}");
    let counts = by_guest(after);
    assert_eq!(counts.get("vm0"), Some(&(a0 + b0 + c0)), "{stdout}");
    assert_eq!(counts.get("vm1"), Some(&(a1 + c1)), "{stdout}");
    for vm in [&mut vm0, &mut vm1] {
        vm.shutdown(Duration::from_secs(20)).ok();
    }
}

/// A VM served inside QEMU by vmprobe's plugin, as a user starts it (QEMU
/// 10 with `vmprobe qemu-args`' flags), its plugin socket and QMP monitor
/// at fixed paths a service is given.
fn boot_plugin_vm(qemu: &Path, sockets: &Path, console: &Arc<Mutex<Vec<u8>>>) -> Vm {
    let mut cfg = LaunchConfig::new(default_guest());
    cfg.accel = Accel::Tcg;
    cfg.qemu = qemu.to_path_buf();
    cfg.gdbstub = false;
    cfg.console = Some(console.clone());
    cfg.extra_args = vec![
        "-plugin".into(),
        format!(
            "{},sock={}",
            plugin_library().display(),
            sockets.join("vm0.plugin").display()
        ),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            sockets.join("vm0.qmp").display()
        ),
    ];
    let mut vm = Vm::launch(&cfg).expect("launch QEMU 10 with the plugin");
    let mut qmp =
        qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5)).unwrap();
    qmp.cont().unwrap();
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    vm
}

/// The service with the plugin backend: the maps live inside QEMU, so a
/// QEMU killed takes with it what was counted since the plugin's last copy
/// of its maps (every 500 ms). Once `/metrics` shows that copy holding the
/// 200 writes, QEMU is killed; a new one on the same sockets is attached
/// again through its plugin and 300 more writes make @c 500, the guest
/// kernels' count.
#[test]
fn a_restarted_vm_is_attached_again_through_its_plugin() {
    let Some(qemu) = qemu10() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let config = dir.path().join("svc.toml");
    std::fs::write(
        &config,
        format!(
            "program = \"kprobe:ksys_write /arg2 == 1/ {{ @c = count(); }}\"\n\
             metrics = \"{metrics}\"\n\
             [[vm]]\nname = \"vm0\"\nplugin = \"sockets/vm0.plugin\"\nqmp = \"sockets/vm0.qmp\"\n\
             kernel = \"{}\"\n",
            default_guest().kernel.display()
        ),
    )
    .unwrap();
    let console1 = Arc::new(Mutex::new(Vec::new()));
    let mut vm1 = boot_plugin_vm(&qemu, &sockets, &console1);
    let (mut service, stdout, stderr) =
        spawn_collected(vmprobe().args(["attach", "--config"]).arg(&config));
    stderr.wait_for("vm0: probes live in QEMU", RUN_LIMIT);
    let before = counted_writes(&mut vm1, &console1, 200, "P1");
    let copied = Instant::now();
    while scraped_count(&metrics) != before {
        assert!(
            copied.elapsed() < Duration::from_secs(30),
            "the plugin's copy of its maps never reached {before}: {}",
            scraped_count(&metrics)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    vm1.kill();
    drop(vm1);
    stderr.wait_for("vm0: its connection ended", Duration::from_secs(30));
    assert_eq!(scraped_count(&metrics), before, "the maps are kept");

    let console2 = Arc::new(Mutex::new(Vec::new()));
    let mut vm2 = boot_plugin_vm(&qemu, &sockets, &console2);
    stderr.wait_for("vm0: attached again", RUN_LIMIT);
    let after = counted_writes(&mut vm2, &console2, 300, "P2");
    signal(&service, "-TERM");
    let status = wait_for_exit(&mut service, RUN_LIMIT);
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    eprintln!("{stderr}\n{stdout}");
    assert!(
        stderr.contains("attached to vm0 through its plugin"),
        "{stderr}"
    );
    assert_eq!(
        map_value(&stdout, "c"),
        before + after,
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("vm0: attached again 1 time after its VM restarted"),
        "{stderr}"
    );
    // The plugin's last copy stood for what the first QEMU had counted.
    assert!(stderr.contains("its maps are as copied"), "{stderr}");
    assert!(status.success(), "{status:?}\n{stderr}");
    vm2.shutdown(Duration::from_secs(20)).ok();
}

/// `contrib/vmprobe.service` is a unit systemd takes as written (no
/// unknown key, no value it would ignore), pointed at the vmprobe under
/// test, and `systemctl reload` sends the SIGHUP that reloads the program.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/vmprobe.service"
    ))
    .unwrap();
    assert!(
        unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmprobe.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/vmprobe", env!("CARGO_BIN_EXE_vmprobe")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (.ci/install-deps installs systemd)");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert_eq!(said, "", "systemd-analyze verify said something");
    // A unit with a mistake is told: the check can fail.
    std::fs::write(
        &path,
        unit.replace("Restart=on-failure", "Restart=sometimes"),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("restart specifier"),
        "{}",
        text(&out.stderr)
    );
}
