//! Shared by the end-to-end tests: QEMU 10, the example plugin built in
//! release mode, and the default guest booted with it.

#![allow(dead_code)]

use qemu_guest::{Accel, LaunchConfig, Vm};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `VMPROBE_QEMU10` names a QEMU 10 binary to use instead of the cache's.
/// (The finding logic of the `qemu10` branch's `qemu_guest::installed_qemu10`,
/// copied until that branch is merged.)
const QEMU10_ENV: &str = "VMPROBE_QEMU10";

fn installed_qemu10() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(QEMU10_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cached = qemu_guest::cache_dir().join("qemu-10.0/bin/qemu-system-x86_64");
    if cached.is_file() {
        return Some(cached);
    }
    let out = Command::new("qemu-system-x86_64")
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .contains("QEMU emulator version 10.")
        .then(|| PathBuf::from("qemu-system-x86_64"))
}

/// QEMU 10, or `None` with the reason printed; a missing QEMU 10 fails
/// the test under `VMPROBE_REQUIRE_QEMU10=1` (CI).
pub fn qemu10() -> Option<PathBuf> {
    let found = installed_qemu10();
    if found.is_none() {
        assert!(
            std::env::var_os("VMPROBE_REQUIRE_QEMU10").is_none_or(|v| v != "1"),
            "VMPROBE_REQUIRE_QEMU10=1 but no QEMU 10 in the cache \
             (qemu-10.0/bin/qemu-system-x86_64; run .ci/install-deps) nor in ${QEMU10_ENV}"
        );
        eprintln!(
            "skipped: no QEMU 10 on this machine (.ci/install-deps installs it); \
             QEMU 7.2 has no plugin API v4"
        );
    }
    found
}

/// The example plugin `name`, built in release mode (its per-hit cost is
/// measured) into a target directory of its own, so that this build never
/// waits for the lock of the `cargo test` that runs us.
pub fn example_plugin(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // target/debug/deps/<this test>: three levels up is the target directory.
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory")
        .join("plugin-examples");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--no-default-features",
            "--example",
            name,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .stdin(Stdio::null())
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build --example {name}: {status}");
    let so = target.join(format!("release/examples/lib{name}.so"));
    assert!(so.is_file(), "{} missing after the build", so.display());
    so
}

pub fn default_guest() -> qemu_guest::GuestImage {
    qemu_guest::ensure_default_guest(&qemu_guest::cache_dir(), &mut |s| eprintln!("guest: {s}"))
        .expect("building the default guest")
}

/// A link-time symbol address of the default guest's kernel (booted with
/// `nokaslr`, so it is the run-time address too).
pub fn kernel_symbol(image: &qemu_guest::GuestImage, name: &str) -> u64 {
    let cache = qemu_guest::cache_dir().join("symbols");
    let symbols =
        kernel_image::KernelSymbols::load(&image.kernel, Some(&cache)).expect("kernel symbols");
    symbols
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} not in the kernel's symbols"))
        .addr
}

/// A booted default guest under QEMU 10, with the console kept in memory.
pub struct Guest {
    pub vm: Vm,
    console: Arc<Mutex<Vec<u8>>>,
    qmp: qemu_vmm::Qmp,
}

const T: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Guest {
    /// Boots the default guest with `plugin` (`Some((path, "a=b,c=d"))`) or
    /// none, under TCG as vmprobe runs it (one vCPU, single-threaded TCG).
    pub fn boot(qemu: &Path, plugin: Option<(&Path, &str)>) -> Guest {
        Self::boot_vcpus(qemu, plugin, 1)
    }

    pub fn boot_vcpus(qemu: &Path, plugin: Option<(&Path, &str)>, vcpus: u32) -> Guest {
        let mut image = default_guest();
        // Kernel addresses straight from the image: no KASLR slide to find.
        image.append = "console=ttyS0 nokaslr panic=-1 quiet".into();
        let mut cfg = LaunchConfig::new(image);
        cfg.accel = Accel::Tcg;
        cfg.qemu = qemu.to_path_buf();
        cfg.gdbstub = false;
        cfg.vcpus = vcpus;
        let console = Arc::new(Mutex::new(Vec::new()));
        cfg.console = Some(Arc::new(Mutex::new(Sink(console.clone()))));
        if let Some((so, args)) = plugin {
            let mut spec = so.display().to_string();
            if !args.is_empty() {
                spec.push(',');
                spec.push_str(args);
            }
            cfg.extra_args = vec!["-plugin".into(), spec];
        }
        let mut vm = Vm::launch(&cfg).expect("launching QEMU");
        let mut qmp = qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), T).expect("QMP");
        qmp.cont().expect("QMP cont");
        let start = Instant::now();
        vm.wait_ready(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("guest did not boot: {e}"));
        eprintln!("guest booted in {:.1} s", start.elapsed().as_secs_f64());
        Guest { vm, console, qmp }
    }

    /// Runs a shell command line in the guest; its exit status and the
    /// wall time from sending it to the guest's EXIT message.
    pub fn run(&mut self, command_line: &str) -> (i32, Duration) {
        let start = Instant::now();
        self.vm
            .start_workload(command_line)
            .expect("sending workload");
        let status = self
            .vm
            .wait_exit(Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("workload {command_line:?}: {e}"));
        let end = self.vm.last_event_at().unwrap_or_else(Instant::now);
        (status, end.saturating_duration_since(start))
    }

    /// Sends a workload without waiting for it.
    pub fn start(&mut self, command_line: &str) -> Instant {
        self.vm
            .start_workload(command_line)
            .expect("sending workload");
        Instant::now()
    }

    pub fn wait(&mut self) -> i32 {
        self.vm
            .wait_exit(Duration::from_secs(600))
            .expect("workload end")
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    /// Powers the guest off: QEMU exits and runs the plugin's atexit.
    pub fn shutdown(mut self) -> String {
        self.vm
            .shutdown(Duration::from_secs(60))
            .expect("guest power-off");
        self.console()
    }
}

/// The example's report: `key value` lines and `key k=v k=v` lines.
pub struct Report {
    pub text: String,
}

impl Report {
    pub fn read(path: &Path) -> Report {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && !text.is_empty()
            {
                return Report { text };
            }
            assert!(
                Instant::now() < deadline,
                "no plugin report at {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn scalar(&self, key: &str) -> u64 {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the report:\n{}", self.text))
    }

    /// Lines `key a=1 b=2`, as maps.
    pub fn records(&self, key: &str) -> Vec<BTreeMap<String, String>> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// The `field` of the `hits` lines of `addr`, summed over vCPUs.
    pub fn hits(&self, addr: u64, field: &str) -> u64 {
        let a = format!("{addr:#x}");
        self.records("hits")
            .iter()
            .filter(|r| r.get("addr") == Some(&a))
            .map(|r| r[field].parse::<u64>().unwrap())
            .sum()
    }

    /// The rdx histogram of `addr`.
    pub fn hist(&self, addr: u64) -> BTreeMap<String, u64> {
        let a = format!("{addr:#x}");
        self.records("hist")
            .iter()
            .filter(|r| r.get("addr") == Some(&a))
            .map(|r| (r["rdx"].clone(), r["n"].parse().unwrap()))
            .collect()
    }

    /// (requested, in effect) of every switch, in ns since install.
    pub fn switches(&self) -> Vec<(u64, u64)> {
        self.records("switch")
            .iter()
            .map(|r| {
                (
                    r["request_ns"].parse().unwrap(),
                    r["done_ns"].parse().unwrap(),
                )
            })
            .collect()
    }
}

/// A private scratch directory for reports and trigger files.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vmprobe-plugin-test-")
        .tempdir()
        .expect("temporary directory")
}
