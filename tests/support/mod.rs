//! Shared helpers for end-to-end tests: run the real vmprobe binary against
//! the real default guest under QEMU, with bounded waits.

#![allow(dead_code)]

pub mod small_disk;
pub mod stub;
pub mod trace_read;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn vmprobe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmprobe"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion, killing it after `limit` (a hang detector, not a
/// performance assertion).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmprobe");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "vmprobe did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A TCG boot plus workload takes 10-60 s on a loaded 2-core machine.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One-write markers around the measured window, sizes nothing else writes.
pub const WINDOW_START: u64 = 4242;
pub const WINDOW_END: u64 = 4343;

/// Shell that makes the guest kernel record every `ksys_write` of 1 byte and
/// the two marker writes with its own kprobe event, runs WORKLOAD between the
/// markers, and prints the kernel's trace to the console as "GT <line>".
/// The trace goes through a file so that printing it takes a few large
/// writes rather than one probed write per line.
pub fn ground_truth_workload(workload: &str) -> String {
    format!(
        "cd /sys/kernel/tracing && echo 'p:gt ksys_write count=%dx:u64' > kprobe_events && \
         echo 'count == 1 || count == {WINDOW_START} || count == {WINDOW_END}' > events/kprobes/gt/filter && \
         echo 1 > events/kprobes/gt/enable && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_START} count=1 2>/dev/null && {workload} && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_END} count=1 2>/dev/null; \
         echo 0 > events/kprobes/gt/enable; \
         grep -v '^#' trace | sed 's/^/GT /' > /tmp/gt.txt; cat /tmp/gt.txt; echo {GT_END}"
    )
}

/// The last line the ground-truth workloads print: the console holds the
/// whole trace once it shows this (the workload's exit status comes on
/// another channel, which can be ahead of the console).
pub const GT_END: &str = "GT-END";

/// The console text from byte `from` on, once it contains `needle`.
pub fn console_until(
    console: &std::sync::Mutex<Vec<u8>>,
    from: usize,
    needle: &str,
    limit: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&console.lock().unwrap()[from..]).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "no {needle:?} on the console within {limit:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest kernel's count of 1-byte writes between the markers, from the
/// trace printed by `ground_truth_workload`.
pub fn ground_truth_hits(console: &str) -> u64 {
    let mut inside = None;
    for line in console.lines().filter(|l| l.starts_with("GT ")) {
        let count = line
            .rsplit("count=")
            .next()
            .and_then(|c| c.trim().parse::<u64>().ok());
        match (count, inside) {
            (Some(WINDOW_START), None) => inside = Some(0),
            (Some(WINDOW_END), Some(n)) => return n,
            (Some(1), Some(n)) => inside = Some(n + 1),
            _ => {}
        }
    }
    panic!("no complete window in the guest's trace:\n{console}")
}

/// The probe program that counts the same thing as the guest: 1-byte
/// `ksys_write`s between the marker writes.
pub fn windowed_count_program() -> String {
    format!(
        "kprobe:ksys_write /arg2 == {WINDOW_START}/ {{ @on = sum(1); }}\n\
         kprobe:ksys_write /arg2 == {WINDOW_END}/ {{ @on = sum(-1); }}\n\
         kprobe:ksys_write /arg2 == 1 && @on == 1/ {{ @writes = count(); }}\n\
         END {{ clear(@on); }}"
    )
}

/// Value of a bpftrace-style scalar map line `@name: N` (last occurrence).
pub fn map_value(stdout: &str, name: &str) -> u64 {
    let prefix = format!("@{name}: ");
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no @{name} in output:\n{stdout}"))
        .trim()
        .parse()
        .expect("integer map value")
}

/// `@name[KEY]: N` lines of a map, keys as text, in output order.
pub fn keyed_map_str(stdout: &str, name: &str) -> Vec<(String, u64)> {
    let prefix = format!("@{name}[");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split_once("]: "))
        .map(|(k, v)| (k.to_string(), v.trim().parse().expect("count")))
        .collect()
}

/// The default guest, built on first use (serialised by a lock in the cache).
pub fn default_guest() -> qemu_guest::GuestImage {
    qemu_guest::ensure_default_guest(&qemu_guest::cache_dir(), &mut |s| eprintln!("guest: {s}"))
        .expect("building the default guest")
}

/// Like [`ground_truth_workload`], for returns: the guest kernel records the
/// return value of every `ksys_write` with its own kretprobe event.
pub fn ground_truth_return_workload(workload: &str) -> String {
    format!(
        "cd /sys/kernel/tracing && echo 'r:gtr ksys_write ret=$retval:u64' > kprobe_events && \
         echo 1 > events/kprobes/gtr/enable && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_START} count=1 2>/dev/null && {workload} && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_END} count=1 2>/dev/null; \
         echo 0 > events/kprobes/gtr/enable; \
         grep -v '^#' trace | sed 's/^/GT /' > /tmp/gt.txt; cat /tmp/gt.txt; echo {GT_END}"
    )
}

/// Return values (value -> count) the guest recorded between the markers.
pub fn ground_truth_returns(console: &str) -> std::collections::BTreeMap<u64, u64> {
    let mut inside = None::<std::collections::BTreeMap<u64, u64>>;
    for line in console.lines().filter(|l| l.starts_with("GT ")) {
        let Some(ret) = line
            .rsplit("ret=")
            .next()
            .and_then(|c| c.trim().parse::<u64>().ok())
        else {
            continue;
        };
        match (ret, inside.as_mut()) {
            (WINDOW_START, None) => inside = Some(Default::default()),
            (WINDOW_END, Some(_)) => return inside.unwrap(),
            (r, Some(m)) => *m.entry(r).or_default() += 1,
            _ => {}
        }
    }
    panic!("no complete window in the guest's trace:\n{console}")
}

/// Entries `@name[KEY]: VALUE` of a bpftrace-style keyed map with integer keys.
pub fn keyed_map(stdout: &str, name: &str) -> std::collections::BTreeMap<u64, u64> {
    let prefix = format!("@{name}[");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (k, v) = rest.split_once("]: ")?;
            Some((k.trim().parse().ok()?, v.trim().parse().ok()?))
        })
        .collect()
}

/// Spawns `cmd` with stdout and stderr piped, each collected by a thread.
pub fn spawn_collected(cmd: &mut Command) -> (std::process::Child, Collected, Collected) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    (child, stdout, stderr)
}

/// A child's output stream, read into memory by a thread so that the test
/// can wait for a line with a deadline instead of blocking on a read.
pub struct Collected {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

pub fn collect(mut stream: impl std::io::Read + Send + 'static) -> Collected {
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bytes.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Collected { bytes, reader }
}

impl Collected {
    pub fn text(&self) -> String {
        text(&self.bytes.lock().unwrap())
    }

    /// Waits until the output contains `needle`; panics after `limit` or
    /// when the stream ends without it.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            // Whether it had ended is read before the text: no line is missed.
            let ended = self.reader.is_finished();
            if self.text().contains(needle) {
                return;
            }
            assert!(!ended, "output ended before {needle:?}:\n{}", self.text());
            assert!(
                start.elapsed() < limit,
                "no {needle:?} within {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything, once the stream has ended.
    pub fn finish(self) -> String {
        self.reader.join().unwrap();
        text(&self.bytes.lock().unwrap())
    }
}

/// babeltrace2's text output of a trace; fails on any warning or error.
pub fn babeltrace(dir: &std::path::Path) -> Vec<String> {
    let out = Command::new("babeltrace2")
        .arg(dir)
        .output()
        .expect("babeltrace2 is installed by .ci/install-deps");
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "babeltrace2 failed on {}: {stderr}",
        dir.display()
    );
    assert!(stderr.trim().is_empty(), "babeltrace2 warned: {stderr}");
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// Runs `run` (a `vmprobe run` command, with any QEMU options) on two vCPUs
/// with a workload that makes the guest patch its own code: a kprobe event
/// on the hot `vfs_read` is created, switched on and off, and removed 40
/// times while two tasks call it. The guest must finish without a kernel
/// failure, and vmprobe's probe must see each registration.
pub fn guest_switches_its_own_kprobes_while_probed(run: &mut Command) {
    let workload = "cd /sys/kernel/tracing || exit 1; \
        (while :; do dd if=/dev/zero of=/dev/null bs=1 count=500 2>/dev/null; done) & \
        (while :; do cat /proc/self/stat >/dev/null; done) & \
        i=0; while [ $i -lt 40 ]; do echo \"p:k$i vfs_read\" >> kprobe_events && \
        echo 1 > events/kprobes/k$i/enable && echo 0 > events/kprobes/k$i/enable && \
        echo \"-:k$i\" >> kprobe_events || break; i=$((i+1)); done; \
        kill %1 %2; echo SWITCHED $i";
    let out = run_bounded(
        run.args([
            "--console",
            "--vcpus",
            "2",
            "-e",
            "kprobe:register_kprobe { @registered = count(); }",
            "--",
            workload,
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    assert!(
        stderr.contains("SWITCHED 40"),
        "the guest did not finish its 40 switches:\n{stderr}"
    );
    for sign in ["Oops", "BUG:", "soft lockup"] {
        assert!(!stderr.contains(sign), "the guest kernel failed:\n{stderr}");
    }
    assert_eq!(map_value(&stdout, "registered"), 40, "{stdout}");
}

/// QEMU 10 (plugin API v4), as `.ci/install-deps` unpacks it; `None` (skip)
/// where this machine has none, unless `VMPROBE_REQUIRE_QEMU10=1` (CI).
pub fn qemu10() -> Option<std::path::PathBuf> {
    let found = qemu_guest::installed_qemu10();
    if found.is_none() {
        assert!(
            std::env::var_os("VMPROBE_REQUIRE_QEMU10").is_none_or(|v| v != "1"),
            "VMPROBE_REQUIRE_QEMU10=1 but no QEMU 10 at {} (run .ci/install-deps) nor in ${}",
            qemu_guest::qemu10_in(&qemu_guest::cache_dir()).display(),
            qemu_guest::QEMU10_ENV
        );
        eprintln!("no QEMU 10 on this machine: skipping (.ci/install-deps installs it)");
    }
    found
}

/// vmprobe's plugin library, built next to the vmprobe binary the tests
/// run (`cargo build -p vmprobe-qemu-plugin`).
/// The backends a test runs on, with their `vmprobe run` flags: through
/// the stub always, inside QEMU where QEMU 10 is installed (always in CI).
pub fn backends() -> Vec<(&'static str, Vec<String>)> {
    let mut all = vec![("gdb", vec!["--backend".to_string(), "gdb".to_string()])];
    if let Some(qemu) = qemu10() {
        plugin_library();
        let qemu = qemu.to_string_lossy().into_owned();
        all.push((
            "plugin",
            vec!["--backend".into(), "plugin".into(), "--qemu".into(), qemu],
        ));
    }
    all
}

pub fn plugin_library() -> std::path::PathBuf {
    let lib = std::path::Path::new(env!("CARGO_BIN_EXE_vmprobe"))
        .with_file_name("libvmprobe_qemu_plugin.so");
    assert!(
        lib.is_file(),
        "{} missing: build it with cargo build -p vmprobe-qemu-plugin",
        lib.display()
    );
    lib
}

/// A run whose handlers met counted errors: its output is there, and its
/// exit status says the results are partial.
pub fn assert_partial(out: &std::process::Output) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("vmprobe: partial results (exit status 3): "),
        "{stderr}"
    );
}

/// QEMU processes started by `parent` (found once it is up: vmprobe first
/// runs `qemu -version`).
pub fn qemu_children(parent: u32) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &parent.to_string(), "qemu-system"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits for `child` to end, at most `limit`.
pub fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < limit, "vmprobe did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boots a VM launched paused (`-S`) by resuming it through its stub, waits
/// for its init, then stops it and lets the stub go: QEMU's stub takes one
/// client at a time, and the next is vmprobe's.
pub fn boot_through_stub(vm: &mut qemu_guest::Vm) {
    let mut user =
        gdb_remote::Client::connect_unix_wait(&vm.gdb_socket(), Duration::from_secs(5)).unwrap();
    user.resume(&[]).unwrap();
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    user.interrupt().unwrap();
    user.wait_stop(Some(Duration::from_secs(5))).unwrap();
    user.detach().unwrap();
}

/// Lines of a child's pipe, collected in a thread (which ends at the
/// pipe's end: join it before reading everything), and sent as they come.
pub fn collect_lines(
    pipe: impl std::io::Read + Send + 'static,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let b = buf.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut s = b.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
            let _ = tx.send(line);
        }
    });
    (buf, rx, reader)
}

/// The child's exit status, or `None` (and the child killed) after `limit`.
pub fn wait_child(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A guest booted once for many attaches (a fixture suite, the bpftrace
/// tools), with its console collected.
pub struct LongGuest {
    pub vm: qemu_guest::Vm,
    pub kernel: std::path::PathBuf,
    pub console: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Loaded with vmprobe's plugin: the attach names its socket too.
    pub plugin: bool,
    /// The attach also names the VM's QMP socket (uprobes need it).
    pub qmp: bool,
}

impl LongGuest {
    /// The `--vm` argument that attaches vmprobe to this guest.
    pub fn attach_spec(&self) -> String {
        let plugin = if self.plugin {
            format!(",plugin:{}", self.vm.plugin_socket().display())
        } else {
            String::new()
        };
        let qmp = if self.qmp {
            format!(",qmp:{}", self.vm.qmp_socket().display())
        } else {
            String::new()
        };
        format!(
            "vm0=gdb:unix:{}{plugin}{qmp},kernel:{}",
            self.vm.gdb_socket().display(),
            self.kernel.display()
        )
    }

    pub fn console_len(&self) -> usize {
        self.console.lock().unwrap().len()
    }

    pub fn console_since(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()[from..]).into_owned()
    }
}

/// A loopback port free a moment ago (bound, then closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
