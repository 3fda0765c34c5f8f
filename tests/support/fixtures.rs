//! The fixture harness of `tests/scripts.rs` and `tests/oneliners.rs`:
//! each `*.bt` of a directory runs against ONE long-lived default guest
//! (attach, workload, Ctrl-C, detach), judged by its `//-` lines against
//! the guest kernel's own account. The fixture language is documented in
//! tests/scripts.rs; `fails:` and the histogram and line-set comparisons
//! below are documented where they are parsed.

#![allow(dead_code)]

use crate::support::*;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "fixtures/judge.rs"]
mod judge;
#[path = "fixtures/parse.rs"]
mod parse;
#[allow(unused_imports)] // used by tests/oneliners.rs, not tests/scripts.rs
pub use judge::{bucket_of, hist_buckets};
use judge::{check, hist_total};
use parse::parse_fixture;

/// Bounds on each phase (hang detectors, not performance assertions).
const ATTACH_LIMIT: Duration = Duration::from_secs(90);
const WORKLOAD_LIMIT: Duration = Duration::from_secs(120);
const DETACH_LIMIT: Duration = Duration::from_secs(60);
/// Writing a small file in the guest, with nothing attached.
const GUEST_STEP_LIMIT: Duration = Duration::from_secs(30);
/// Marks a failure after which no later script can run on this guest.
const GUEST_UNRESPONSIVE: &str = "the guest stopped responding";

#[derive(Debug)]
pub struct Fixture {
    pub name: String,
    pub path: PathBuf,
    workload: Vec<String>,
    truths: Vec<Truth>,
    expects: Vec<Expect>,
    allow_errors: bool,
    /// `fails: "TEXT"`: vmprobe refuses the script before booting a
    /// guest, with TEXT in its message.
    pub fails: Option<String>,
    flags: Vec<String>,
}

#[derive(Debug)]
struct Truth {
    name: String,
    definition: String,
    filter: Option<String>,
    /// A hist trigger instead of a kprobe event: (GROUP/EVENT, KEY).
    hist: Option<(String, String)>,
}

#[derive(Debug)]
enum Expect {
    Compare(Operand, String, Operand),
    /// `@m == keyed(NAME)`.
    Keyed(String, String),
    /// `hist(@m) == log2(NAME)` / `lhist(@m) == linear(NAME, MIN, MAX,
    /// STEP)`: every bucket of the histogram `@m` (or `@m[KEY]`) holds
    /// exactly the values of the hist truth NAME that fall in it.
    Buckets(String, String, Option<(i64, i64, i64)>),
    /// `printed("PREFIX") == keyed(NAME)`: the stdout lines that start
    /// with PREFIX, PREFIX removed, are exactly (with repeats) the keys of
    /// the hist truth NAME.
    Printed(String, String),
    Contains(String),
    Lacks(String),
    StderrContains(String),
}

#[derive(Debug)]
enum Operand {
    Int(u64),
    Map(String),
    Entry(String, String),
    Len(String),
    Sum(String),
    Hist(String),
    Lines(String),
    Hits(String),
    Events(String),
    Console(String),
    /// `ticks(HZ, N)`: the most samples a `profile:hz:HZ` can take on N
    /// vCPUs while vmprobe was attached (host time from its attach to the
    /// Ctrl-C, rounded up, plus one tick at each end).
    Ticks(u64, u64),
    /// `percent(@m[KEY])`: that entry's share of the sum of `@m`'s entries.
    Percent(String, String),
    /// `counts("TEXT")`: the sum of the integers that follow TEXT at the end
    /// of stdout lines (the values of a map keyed by stacks, `]: N`).
    Counts(String),
    /// `total(NAME)`: the sum of a hist truth's counts.
    Total(String),
    /// `weighted(NAME)`: the sum of key * count over a hist truth.
    Weighted(String),
}

/// What one script produced.
struct Outcome {
    stdout: String,
    stderr: String,
    console: String,
    /// From vmprobe's "attached" to the Ctrl-C.
    window: Duration,
}

/// A table key as compared: integers as signed 64-bit.
fn key_norm(k: &str) -> String {
    let k = k.trim();
    match k.parse::<u64>() {
        Ok(n) => (n as i64).to_string(),
        Err(_) => k.to_string(),
    }
}

impl Outcome {
    /// The entries of keyed map `@name` as printed.
    fn map_lines(&self, name: &str) -> BTreeMap<String, u64> {
        let prefix = format!("@{name}[");
        self.stdout
            .lines()
            .filter_map(move |l| l.strip_prefix(prefix.as_str()).map(str::to_string))
            .filter_map(|rest| {
                let (k, v) = rest.rsplit_once("]: ")?;
                Some((k.to_string(), v.trim().parse::<u64>().ok()?))
            })
            .collect::<BTreeMap<String, u64>>()
    }

    /// The hist truth `name`: `GTH NAME COUNT KEY` lines of the console.
    fn keyed(&self, name: &str) -> Result<BTreeMap<String, u64>, String> {
        let prefix = format!("GTH {name} ");
        let mut m = BTreeMap::new();
        for l in self.console.lines() {
            let Some(rest) = l.trim().strip_prefix(&prefix) else {
                continue;
            };
            let (n, k) = rest.split_once(' ').unwrap_or((rest, ""));
            let n: u64 = n.parse().map_err(|_| format!("bad hist line {l:?}"))?;
            *m.entry(key_norm(k)).or_default() += n;
        }
        if !self.console.contains(&format!("GTH-END {name}")) {
            return Err(format!("the guest reported no table for {name}"));
        }
        Ok(m)
    }

    fn value(&self, o: &Operand) -> Result<u64, String> {
        let map_lines = |name: &str| self.map_lines(name);
        Ok(match o {
            Operand::Int(n) => *n,
            Operand::Map(name) => {
                let prefix = format!("@{name}: ");
                self.stdout
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("no integer @{name} in the output"))?
            }
            Operand::Entry(name, key) => *map_lines(name)
                .get(key)
                .ok_or_else(|| format!("no @{name}[{key}] in the output"))?,
            Operand::Len(name) => map_lines(name).len() as u64,
            Operand::Sum(name) => map_lines(name).values().sum(),
            Operand::Hist(name) => hist_total(&self.stdout, name)?,
            Operand::Lines(t) => self.stdout.lines().filter(|l| l.contains(t)).count() as u64,
            Operand::Hits(n) => self.truth(n, "hits")?,
            Operand::Events(n) => self.truth(n, "events")?,
            Operand::Total(n) => self.keyed(n)?.values().sum(),
            Operand::Ticks(hz, vcpus) => {
                ((self.window.as_secs_f64() * *hz as f64).ceil() as u64 + 2) * vcpus
            }
            Operand::Percent(m, k) => {
                let all = map_lines(m);
                let total: u64 = all.values().sum();
                let one = *all
                    .get(k)
                    .ok_or_else(|| format!("no @{m}[{k}] in the output"))?;
                one * 100 / total.max(1)
            }
            Operand::Counts(t) => self
                .stdout
                .lines()
                .filter_map(|l| l.rsplit_once(t.as_str()))
                .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
                .sum(),
            Operand::Weighted(n) => self
                .keyed(n)?
                .iter()
                .map(|(k, c)| k.parse::<i64>().unwrap_or(0).wrapping_mul(*c as i64) as u64)
                .fold(0u64, u64::wrapping_add),
            Operand::Console(key) => {
                let prefix = format!("{key}=");
                self.console
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&prefix))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("the workload printed no {key}=N"))?
            }
        })
    }

    /// `GT NAME hits=H events=E`, printed by the workload wrapper.
    fn truth(&self, name: &str, what: &str) -> Result<u64, String> {
        let line = self
            .console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("GT {name} ")))
            .ok_or_else(|| format!("the guest reported no count for {name}"))?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{what}=")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {what}= for {name} in {line:?}"))
    }
}

/// The workload with the guest kernel's own kprobe events around it, then
/// their counts as `GT NAME hits=H events=E`, then an end marker.
fn wrapped_workload(f: &Fixture, marker: &str) -> String {
    let t = "/sys/kernel/tracing";
    let mut s = String::new();
    let trigger = |tr: &Truth, key: &str| match &tr.filter {
        Some(filter) => format!("hist:keys={key} if {filter}"),
        None => format!("hist:keys={key}"),
    };
    // Kprobe events first: a hist truth may count one of them.
    for tr in f.truths.iter().filter(|tr| tr.hist.is_none()) {
        let ev = format!("{t}/events/kprobes/{}", tr.name);
        s.push_str(&format!(
            "echo '{}' >> {t}/kprobe_events && ",
            tr.definition
        ));
        if let Some(filter) = &tr.filter {
            s.push_str(&format!("echo '{filter}' > {ev}/filter && "));
        }
        s.push_str(&format!("echo 1 > {ev}/enable && "));
    }
    for tr in &f.truths {
        if let Some((event, key)) = &tr.hist {
            s.push_str(&format!(
                // `>>`: opening `trigger` with O_TRUNC removes its others.
                "echo '{}' >> {t}/events/{event}/trigger && ",
                trigger(tr, key)
            ));
        }
    }
    s.push_str(&format!("( {} ); status=$?; ", f.workload.join("; ")));
    // `{ ret:          4 } hitcount:          3` -> `GTH NAME 3 4`; then
    // the trigger goes, before the kprobe event it may count.
    for tr in &f.truths {
        if let Some((event, key)) = &tr.hist {
            let n = &tr.name;
            s.push_str(&format!(
                // `hist` shows every trigger's table: this one's by its key.
                "grep '^{{ {key}: ' {t}/events/{event}/hist | \
                 sed -E 's/^\\{{ *[a-z_]+: *(.*[^ ]) *\\}} *hitcount: *([0-9]+).*/GTH {n} \\2 \\1/'; \
                 echo GTH-END {n}; echo '!{}' >> {t}/events/{event}/trigger; ",
                trigger(tr, key)
            ));
        }
    }
    for tr in f.truths.iter().filter(|tr| tr.hist.is_none()) {
        let n = &tr.name;
        s.push_str(&format!(
            "echo 0 > {t}/events/kprobes/{n}/enable; \
             echo GT {n} hits=$(awk '$1==\"{n}\"{{print $2}}' {t}/kprobe_profile) \
             events=$(grep -c ' {n}: ' {t}/trace); "
        ));
    }
    if !f.truths.is_empty() {
        s.push_str(&format!("echo > {t}/trace; echo > {t}/kprobe_events; "));
    }
    s.push_str(&format!("echo {marker}; exit $status"));
    s
}

/// Samples a hung guest's vCPUs with vmprobe itself (function and task per
/// vCPU), so that a guest that stops responding in CI says where it spins.
fn where_the_vcpus_are(g: &LongGuest) -> String {
    let out = run_bounded(
        vmprobe().args([
            "attach",
            "--vm",
            &g.attach_spec(),
            "-e",
            "profile:hz:20 { @[vcpu, ksym(reg(\"rip\")), comm] = count(); } interval:s:3 { exit(); }",
        ]),
        Duration::from_secs(60),
    );
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Runs one script: attach, workload, Ctrl-C, detach. Err: what failed.
fn run_one(g: &mut LongGuest, f: &Fixture, index: usize) -> Result<Outcome, String> {
    // The wrapper goes into a file first, unprobed: init reads its
    // command line a byte at a time, and each read would be a probe hit
    // for scripts that probe reads.
    let script = wrapped_workload(f, &format!("SCRIPT-DONE-{index}")).replace('\'', "'\\''");
    g.vm.start_workload(&format!("printf '%s\\n' '{script}' > /tmp/w.sh"))
        .map_err(|e| e.to_string())?;
    match g.vm.wait_exit(GUEST_STEP_LIMIT) {
        Ok(0) => {}
        other => {
            return Err(format!(
                "{GUEST_UNRESPONSIVE}: writing the workload file: {other:?}\n\
                 --- console tail\n{}\n--- where the vCPUs are\n{}",
                g.vm.console_tail(),
                where_the_vcpus_are(g)
            ));
        }
    }
    let from = g.console_len();
    let spec = g.attach_spec();
    let t0 = Instant::now();
    let mut child = vmprobe()
        .args(["attach", "--vm", &spec])
        .args(&f.flags)
        .arg(&f.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning vmprobe: {e}"))?;
    let (stdout, _, out_reader) = collect_lines(child.stdout.take().unwrap());
    let (stderr, lines, err_reader) = collect_lines(child.stderr.take().unwrap());
    let err_text = || stderr.lock().unwrap().clone();
    // Armed: through the stub, the guest is stopped until vmprobe resumes
    // it, so a workload sent now starts under the probes; through the
    // plugin, the probes are live once it says so.
    let deadline = Instant::now() + ATTACH_LIMIT;
    let mut through_plugin = false;
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.contains("probes live") => break,
            Ok(l) if l.contains("through its plugin") => through_plugin = true,
            Ok(l) if l.contains("attached to vm0") => break,
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            // A program whose BEGIN calls exit() ends before its probes go
            // live in QEMU; its output is judged as any other's.
            Err(RecvTimeoutError::Disconnected) if through_plugin => break,
            Err(RecvTimeoutError::Disconnected) => {
                let _ = wait_child(&mut child, DETACH_LIMIT);
                return Err(format!("vmprobe ended before attaching:\n{}", err_text()));
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "no attach within {ATTACH_LIMIT:?}:\n{}",
                err_text()
            ));
        }
    }
    let t1 = Instant::now();
    let marker = format!("SCRIPT-DONE-{index}");
    g.vm.start_workload("sh /tmp/w.sh")
        .map_err(|e| e.to_string())?;
    let status = g.vm.wait_exit(WORKLOAD_LIMIT);
    let t2 = Instant::now();
    // Ctrl-C, as a user ends a bpftrace session (the script may have
    // called exit() already; then this signals a finished process).
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    );
    let exit = wait_child(&mut child, DETACH_LIMIT);
    // vmprobe has exited (or was killed): its pipes are at their end.
    let _ = out_reader.join();
    let _ = err_reader.join();
    eprintln!(
        "  {}: attach {:.1} s, workload {:.1} s, detach {:.1} s",
        f.name,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        t2.elapsed().as_secs_f64()
    );
    match status {
        Ok(0) => {}
        Ok(s) => return Err(format!("the workload exited with {s}")),
        Err(e) => return Err(format!("the workload did not finish: {e}")),
    }
    // The console arrives on its own socket: wait for the end marker.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.console_since(from).contains(&marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let out = Outcome {
        stdout: stdout.lock().unwrap().clone(),
        stderr: err_text(),
        console: g.console_since(from),
        window: t2 - t1,
    };
    match exit {
        Some(s) if s.success() => Ok(out),
        // Counted handler errors make the results partial: status 3.
        Some(s) if f.allow_errors && s.code() == Some(3) => Ok(out),
        Some(s) => Err(format!("vmprobe exited with {s}:\n{}", out.stderr)),
        None => Err(format!("vmprobe did not detach:\n{}", out.stderr)),
    }
}

/// The fixtures of `tests/DIR`, sorted by name.
pub fn fixtures(dir: &str) -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bt"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| parse_fixture(p).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// A `fails:` fixture: `vmprobe run FILE -- true` must stop before it boots
/// a guest, with TEXT in its message.
fn refused_before_boot(f: &Fixture, text: &str) -> Result<(), String> {
    let out = run_bounded(
        vmprobe().arg("run").arg(&f.path).args(["--", "true"]),
        Duration::from_secs(60),
    );
    let stderr = crate::support::text(&out.stderr);
    if out.status.success() {
        return Err(format!("vmprobe ran it:\n{stderr}"));
    }
    if stderr.contains("booting") {
        return Err(format!("vmprobe booted a guest before failing:\n{stderr}"));
    }
    if !stderr.contains(text) {
        return Err(format!("the message lacks {text:?}:\n{stderr}"));
    }
    Ok(())
}

/// How a suite's guest is started and attached to.
#[derive(Default)]
pub struct Suite {
    /// QEMU 10, with vmprobe's plugin loaded.
    pub plugin_qemu: Option<PathBuf>,
    /// A zero-filled disk of this many MiB, the guest's /dev/vda.
    pub disk_mib: Option<u64>,
    /// Attach with the VM's QMP socket too.
    pub qmp: bool,
}

/// Runs every fixture of `tests/DIR` against one guest (on QEMU 10 with
/// vmprobe's plugin when `plugin_qemu` is given) and fails with the report
/// of each that did not pass. `VMPROBE_SCRIPTS=a,b` runs only those.
pub fn run_suite(dir: &str, suite: Suite) {
    let Suite {
        plugin_qemu,
        disk_mib,
        qmp: attach_qmp,
    } = suite;
    let only = std::env::var("VMPROBE_SCRIPTS").ok();
    let all: Vec<Fixture> = fixtures(dir)
        .into_iter()
        .filter(|f| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == f.name))
        })
        .collect();
    let image = default_guest();
    let kernel = image.kernel.clone();
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.vcpus = 2;
    // A zero-filled raw image, the guest's /dev/vda.
    let disk_dir = tempfile::tempdir().unwrap();
    if let Some(mib) = disk_mib {
        let path = disk_dir.path().join("disk.raw");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(mib << 20))
            .expect("disk image");
        cfg.disk = Some(path);
    }
    cfg.console = Some(console.clone());
    let plugin = plugin_qemu.is_some();
    if let Some(qemu) = plugin_qemu {
        cfg.qemu = qemu;
        cfg.plugin = Some(plugin_library());
    }
    let mut vm = Vm::launch(&cfg).expect("launch");
    // QEMU starts paused (-S); let the guest boot, untouched by any stub.
    // The monitor is let go at once: QEMU serves one client per monitor,
    // and an attach given `qmp:` (uprobes) connects to it.
    qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5))
        .and_then(|mut qmp| qmp.cont())
        .unwrap();
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    let mut g = LongGuest {
        vm,
        kernel,
        console,
        plugin,
        qmp: attach_qmp,
    };
    let mut failures = Vec::new();
    let mut in_qemu = Vec::new();
    let start = Instant::now();
    for (i, f) in all.iter().enumerate() {
        let t = Instant::now();
        if let Some(text) = &f.fails {
            let result = refused_before_boot(f, text);
            eprintln!(
                "script {} ... {} before booting ({:.1} s)",
                f.name,
                if result.is_ok() { "refused" } else { "FAILED" },
                t.elapsed().as_secs_f64()
            );
            if let Err(e) = result {
                failures.push(format!("=== {}\n{e}", f.name));
            }
            continue;
        }
        let result = run_one(&mut g, f, i).and_then(|o| {
            if o.stderr.contains("through its plugin") {
                in_qemu.push(f.name.clone());
            }
            let fails = check(f, &o);
            if fails.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{}\n--- stdout\n{}--- stderr\n{}--- console\n{}",
                    fails.join("\n"),
                    o.stdout,
                    o.stderr,
                    o.console
                ))
            }
        });
        eprintln!(
            "script {} ... {} ({:.1} s)",
            f.name,
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = result {
            // A guest that is gone or hung fails every later script the
            // same way: stop here, with this script's report.
            let stop = !g.vm.is_running() || e.contains(GUEST_UNRESPONSIVE);
            failures.push(format!("=== {}\n{e}", f.name));
            if stop {
                break;
            }
        }
    }
    eprintln!(
        "{} scripts in {:.1} s, {} of them inside QEMU",
        all.len(),
        start.elapsed().as_secs_f64(),
        in_qemu.len()
    );
    if plugin {
        let fell_back: Vec<&str> = all
            .iter()
            .map(|f| f.name.as_str())
            .filter(|n| !in_qemu.iter().any(|q| q == n))
            .collect();
        eprintln!("through the stub instead: {}", fell_back.join(", "));
    }
    let _ = g.vm.shutdown(Duration::from_secs(20));
    assert!(
        failures.is_empty(),
        "{} of {} scripts failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    if plugin && only.is_none() {
        // Most of the language runs inside QEMU; what falls back is what
        // the plugin refuses (physical memory, watchpoints, guest state in
        // interval blocks).
        assert!(
            in_qemu.len() * 4 >= all.len() * 3,
            "only {} of {} scripts ran inside QEMU",
            in_qemu.len(),
            all.len()
        );
    }
}
