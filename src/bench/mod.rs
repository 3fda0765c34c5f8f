//! `vmprobe bench`: what probing costs, against the same guest without
//! vmprobe, measured in one run on one machine (issue 7).
//!
//! One guest is booted and kept for the whole matrix (its init serves one
//! workload after another), so that configurations differ only in what is
//! attached. Runs are interleaved across configurations, repetition by
//! repetition, so slow drift of the machine spreads over all of them. Every
//! time is host wall time from handing the workload to the guest to its exit
//! message: the guest's own clock stops while QEMU is stopped at a probe, so
//! it cannot see what probing costs.

mod inside;
mod report;

use crate::BenchArgs;
use anyhow::{Context, Result, anyhow, bail};
use backend_gdb::Session;
use gdb_remote::Client;
use probe_engine::EndReason;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use report::{Measurement, Stats};

pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// A hang detector for one workload run, not a performance bound.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// The configurations of the matrix, as numbered in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    /// No debugger connected to the stub.
    Baseline,
    /// vmprobe attached, no probe armed.
    Attached,
    /// Probes armed on functions the workload never calls.
    ArmedIdle,
    /// Probes firing, counted in memory.
    Aggregate,
    /// Probes firing, every event written to a file.
    Record,
    /// GDB on the same stub, a Python breakpoint that counts and never stops.
    Gdb,
    /// The guest kernel's own kprobe event on the same function (tracefs).
    InGuest,
}

impl Config {
    pub const ALL: [Config; 7] = [
        Config::Baseline,
        Config::Attached,
        Config::ArmedIdle,
        Config::Aggregate,
        Config::Record,
        Config::Gdb,
        Config::InGuest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Config::Baseline => "(0) no vmprobe",
            Config::Attached => "(1) attached, no probes",
            Config::ArmedIdle => "(2) probes never firing",
            Config::Aggregate => "(3) probes firing, in-memory count",
            Config::Record => "(4) probes firing, every event to disk",
            Config::Gdb => "(5) GDB, Python breakpoint counting",
            Config::InGuest => "(6) guest kernel's own kprobe event",
        }
    }
}

/// A workload run in the guest, and the kernel function it makes fire.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub command: String,
    /// Run once before the matrix (e.g. to generate input files).
    pub setup: Option<String>,
    pub function: &'static str,
    /// A vmprobe predicate and the matching tracefs filter (with the fetch
    /// argument it needs) that select the workload's own calls, where other
    /// processes call the function too.
    pub filter: Option<Filter>,
}

#[derive(Clone, Debug)]
pub struct Filter {
    pub predicate: String,
    pub fetch: &'static str,
    pub tracefs: String,
}

/// Selects the calls of the process named `comm` (truncated to 15
/// characters as the kernel does), plus an optional extra condition on both
/// sides: the guest shell and init make the same calls too.
fn by_comm(comm: &str, extra: Option<(&str, &'static str, &str)>) -> Filter {
    let comm: String = comm.chars().take(15).collect();
    match extra {
        Some((pred, fetch, tracefs)) => Filter {
            predicate: format!("comm == \"{comm}\" && {pred}"),
            fetch,
            tracefs: format!("comm == \"{comm}\" && {tracefs}"),
        },
        None => Filter {
            predicate: format!("comm == \"{comm}\""),
            fetch: "",
            tracefs: format!("comm == \"{comm}\""),
        },
    }
}

fn workloads(quick: bool) -> Vec<Workload> {
    let dd_filter = by_comm("dd", Some(("arg2 == 1", "count=%dx:u64", "count == 1")));
    if quick {
        return vec![Workload {
            name: "dd-bs1",
            command: "dd if=/dev/zero of=/dev/null bs=1 count=100 2>/dev/null".into(),
            setup: None,
            function: "ksys_write",
            filter: Some(dd_filter),
        }];
    }
    vec![
        Workload {
            name: "dd-bs1",
            command: "dd if=/dev/zero of=/dev/null bs=1 count=1000 2>/dev/null".into(),
            setup: None,
            function: "ksys_write",
            filter: Some(dd_filter.clone()),
        },
        Workload {
            name: "null-syscall",
            command: "vmprobe-nullsys 1000".into(),
            setup: None,
            function: "__x64_sys_getppid",
            filter: Some(by_comm("vmprobe-nullsys", None)),
        },
        Workload {
            name: "fork-exec",
            command: "vmprobe-forkexec 100".into(),
            setup: None,
            function: "wake_up_new_task",
            filter: Some(by_comm("vmprobe-forkexec", None)),
        },
        Workload {
            name: "gzip",
            command: "gzip -c /tmp/bench.in > /dev/null".into(),
            setup: Some("dd if=/dev/urandom of=/tmp/bench.in bs=1k count=512 2>/dev/null".into()),
            function: "ksys_read",
            filter: Some(by_comm("gzip", None)),
        },
        Workload {
            name: "tar",
            command: "tar cf /tmp/bench.tar -C /tmp tree && rm -rf /tmp/x && mkdir /tmp/x && \
                      tar xf /tmp/bench.tar -C /tmp/x"
                .into(),
            setup: Some(
                "mkdir -p /tmp/tree && for d in 1 2 3 4 5 6 7 8; do mkdir -p /tmp/tree/$d; \
                 for f in 1 2 3 4 5 6 7 8 9 10; do echo $d$f > /tmp/tree/$d/$f; done; done"
                    .into(),
            ),
            function: "do_sys_openat2",
            filter: Some(by_comm("tar", None)),
        },
    ]
}

/// Functions no workload calls: configuration (2) arms these.
const IDLE_FUNCTIONS: [&str; 3] = [
    "__x64_sys_reboot",
    "__x64_sys_swapon",
    "__x64_sys_pivot_root",
];

/// The booted guest the matrix runs on.
struct Bench {
    vm: Vm,
    kernel: crate::kernel::KernelInfo,
    slide: u64,
    console: Arc<Mutex<Vec<u8>>>,
    scratch: PathBuf,
}

pub fn bench(args: BenchArgs) -> Result<i32> {
    let reps = args.reps.unwrap_or(3).max(1);
    let out_dir = args.output.clone();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let image = crate::kernel::default_image()?;
    let kernel =
        crate::kernel::load_kernel(crate::kernel::load_image_symbols(&image)?, &image.kernel);
    let mut cfg = LaunchConfig::new(image.clone());
    cfg.accel = match args.accel {
        Some(crate::AccelArg::Kvm) => Accel::Kvm,
        Some(crate::AccelArg::Tcg) => Accel::Tcg,
        None => cfg.accel,
    };
    if let Some(q) = &args.qemu {
        cfg.qemu = q.clone();
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if args.in_vmm {
        let started = Instant::now();
        let inside = inside::run(args.quick, reps, &image, &kernel)?
            .context("--in-vmm: nothing to measure (see above)")?;
        if let Some(q) = qemu_guest::installed_qemu10() {
            cfg.qemu = q;
        }
        let machine = report::Machine::describe(&cfg, &image.version);
        let text = format!(
            "{}\n{}",
            report::header(&machine, &command),
            inside.render()
        );
        let report_path = out_dir.join("REPORT.md");
        std::fs::write(&report_path, text)
            .with_context(|| format!("writing {}", report_path.display()))?;
        eprintln!(
            "vmprobe bench: done in {:.0} s; report in {}",
            started.elapsed().as_secs_f64(),
            report_path.display()
        );
        return Ok(0);
    }
    require_gdb()?;
    let console = Arc::new(Mutex::new(Vec::new()));
    cfg.console = Some(console.clone());
    let started = Instant::now();
    eprintln!("vmprobe bench: booting the default guest ({:?})", cfg.accel);
    let mut bench = Bench::boot(&cfg, kernel, console, out_dir.clone())?;
    eprintln!(
        "vmprobe bench: guest up in {:.1} s, KASLR slide {:#x}",
        started.elapsed().as_secs_f64(),
        bench.slide
    );

    let workloads = workloads(args.quick);
    for w in &workloads {
        if let Some(setup) = &w.setup {
            bench.plain(setup)?;
        }
    }
    let mut samples: Vec<Measurement> = Vec::new();
    for rep in 0..reps {
        for w in &workloads {
            // Rotate the order each repetition: no configuration always runs
            // right after the same other one.
            let mut order = Config::ALL.to_vec();
            let n = order.len();
            order.rotate_left(rep as usize % n);
            for config in order {
                let m = bench
                    .measure(w, config)
                    .with_context(|| format!("{} under {}", w.name, config.label()))?;
                eprintln!(
                    "vmprobe bench: rep {}/{reps} {:<13} {:<40} {:>9.3} s{}",
                    rep + 1,
                    w.name,
                    config.label(),
                    m.secs,
                    m.hits.map(|h| format!(", {h} events")).unwrap_or_default()
                );
                samples.push(m);
            }
        }
    }
    let rates = if args.quick {
        Vec::new()
    } else {
        bench.rate_table(reps)?
    };
    let _ = bench.vm.shutdown(Duration::from_secs(10));
    let inside = inside::run(args.quick, reps, &image, &bench.kernel)?;

    let machine = report::Machine::describe(&cfg, &image.version);
    let mut text = report::render(&machine, &command, &workloads, &samples, &rates, reps);
    if let Some(inside) = &inside {
        text.push_str(&inside.render());
    }
    let report_path = out_dir.join("REPORT.md");
    std::fs::write(&report_path, text)
        .with_context(|| format!("writing {}", report_path.display()))?;
    for w in &workloads {
        let svg = report::chart(w.name, &samples);
        let path = out_dir.join(format!("{}.svg", w.name));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let csv = report::csv(&samples);
    std::fs::write(out_dir.join("samples.csv"), csv)?;
    eprintln!(
        "vmprobe bench: done in {:.0} s; report in {}",
        started.elapsed().as_secs_f64(),
        report_path.display()
    );
    Ok(0)
}

fn require_gdb() -> Result<()> {
    let ok = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("configuration (5) runs GDB, which is not installed (Debian: apt-get install gdb)");
    }
    Ok(())
}

impl Bench {
    fn boot(
        cfg: &LaunchConfig,
        kernel: crate::kernel::KernelInfo,
        console: Arc<Mutex<Vec<u8>>>,
        scratch: PathBuf,
    ) -> Result<Bench> {
        let mut vm = Vm::launch(cfg).context("starting QEMU")?;
        let mut session = Session::new(connect(&vm)?);
        session.resume()?;
        vm.wait_ready(BOOT_TIMEOUT)?;
        session.pause()?;
        let slide = session.detect_slide(&kernel.symbols)?;
        // Detaching leaves the guest running with no debugger connected:
        // the state of configuration (0).
        session.detach()?;
        Ok(Bench {
            vm,
            kernel,
            slide,
            console,
            scratch,
        })
    }

    /// Runs a command with nothing attached; returns its wall time.
    fn plain(&mut self, command: &str) -> Result<f64> {
        let t = Instant::now();
        self.vm.start_workload(command)?;
        let status = self.vm.wait_exit(RUN_TIMEOUT)?;
        let end = self.vm.last_event_at().unwrap_or_else(Instant::now);
        if status != 0 {
            bail!("`{command}` exited with status {status}");
        }
        Ok(end.duration_since(t).as_secs_f64())
    }

    fn measure(&mut self, w: &Workload, config: Config) -> Result<Measurement> {
        let pred = w
            .filter
            .as_ref()
            .map(|f| format!("/{}/ ", f.predicate))
            .unwrap_or_default();
        let probe = format!("kprobe:{}", w.function);
        let (secs, hits, stops) = match config {
            Config::Baseline => (self.plain(&w.command)?, None, None),
            Config::Attached => {
                let (secs, stops, _) = self.with_vmprobe("BEGIN { }", &w.command, false)?;
                (secs, None, Some(stops))
            }
            Config::ArmedIdle => {
                let probes = IDLE_FUNCTIONS.map(|f| format!("kprobe:{f}")).join(", ");
                let program = format!("{probes} {{ @ = count(); }}");
                let (secs, stops, _) = self.with_vmprobe(&program, &w.command, false)?;
                (secs, Some(stops), Some(stops))
            }
            Config::Aggregate => {
                let program = format!("{probe} {pred}{{ @ = count(); }}");
                let (secs, stops, printed) = self.with_vmprobe(&program, &w.command, false)?;
                let counted = printed
                    .lines()
                    .find_map(|l| l.strip_prefix("@: "))
                    .map_or(Ok(0), |n| n.trim().parse::<u64>())
                    .with_context(|| format!("reading the count from {printed:?}"))?;
                (secs, Some(counted), Some(stops))
            }
            Config::Record => {
                let program = format!(
                    "{probe} {pred}{{ printf(\"%u %u %x %x %x\\n\", nsecs, vcpu, arg0, arg1, arg2); }}"
                );
                let (secs, stops, _) = self.with_vmprobe(&program, &w.command, true)?;
                let path = self.scratch.join("record.txt");
                let lines = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count() as u64;
                (secs, Some(lines), Some(stops))
            }
            Config::Gdb => {
                let (secs, stops) = self.with_gdb(w)?;
                (secs, Some(stops), Some(stops))
            }
            Config::InGuest => {
                let (secs, hits) = self.in_guest(w)?;
                (secs, Some(hits), None)
            }
        };
        Ok(Measurement {
            workload: w.name.to_string(),
            config,
            secs,
            hits,
            stops,
        })
    }

    /// Runs the workload with vmprobe attached and `program` armed. Returns
    /// the wall time, the number of breakpoint stops, and what the program
    /// printed (maps included) when `record` is false.
    fn with_vmprobe(
        &mut self,
        program: &str,
        command: &str,
        record: bool,
    ) -> Result<(f64, u64, String)> {
        let program = Arc::new(
            probe_lang::compile(program, "bench").map_err(|d| anyhow!("bench program: {d}"))?,
        );
        // QEMU stops the guest when a debugger connects.
        let mut session = Session::new(connect(&self.vm)?);
        crate::gdb::arm_program(&mut session, &program, &self.kernel)?;
        let printed = SharedBuf::default();
        let out: Box<dyn Write + Send> = if record {
            let path = self.scratch.join("record.txt");
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            Box::new(std::io::BufWriter::new(file))
        } else {
            Box::new(printed.clone())
        };
        let runtime = Mutex::new(probe_output::printing_runtime(
            program.executable().clone(),
            out,
            probe_output::OutputFormat::Text,
        ));
        session.resume()?;
        let t = Instant::now();
        self.vm.start_workload(command)?;
        let vm = &mut self.vm;
        let mut poll = || match vm.poll_exit() {
            Ok(Some(status)) => Some(EndReason::WorkloadExited(status)),
            Ok(None) => None,
            Err(e) => Some(EndReason::TargetGone(e.to_string())),
        };
        let reason = session.run(&runtime, &mut poll);
        let end = self.vm.last_event_at().unwrap_or_else(Instant::now);
        let stops = session.stats.hits;
        runtime
            .lock()
            .map_err(|_| anyhow!("runtime lock"))?
            .print_maps();
        drop(runtime);
        match reason {
            EndReason::WorkloadExited(0) => {}
            EndReason::WorkloadExited(s) => bail!("the workload exited with status {s}"),
            other => bail!("the run ended early: {other:?}"),
        }
        session.detach()?;
        let printed =
            String::from_utf8_lossy(&printed.0.lock().map_err(|_| anyhow!("lock"))?).into_owned();
        Ok((end.duration_since(t).as_secs_f64(), stops, printed))
    }

    /// Runs the workload under GDB: a breakpoint whose Python `stop()`
    /// counts and returns False, as a GDB user would count calls.
    fn with_gdb(&mut self, w: &Workload) -> Result<(f64, u64)> {
        let sym = self
            .kernel
            .symbols
            .lookup(w.function)
            .ok_or_else(|| anyhow!("unknown function {}", w.function))?;
        let addr = sym.addr + self.slide;
        let script = self.scratch.join("count.py");
        std::fs::write(
            &script,
            format!(
                r#"import gdb
hits = 0
class Count(gdb.Breakpoint):
    def stop(self):
        global hits
        hits += 1
        return False
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("target remote {sock}")
Count("*{addr:#x}")
print("vmprobe-bench: armed", flush=True)
try:
    gdb.execute("continue")
except BaseException:
    pass
print("vmprobe-bench: hits %d" % hits, flush=True)
gdb.execute("detach")
"#,
                sock = self.vm.gdb_socket().display()
            ),
        )?;
        let mut gdb = Command::new("gdb")
            .args(["-batch", "-nx", "-x"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting gdb")?;
        let stdout = gdb.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wait_line = |prefix: &str, limit: Duration| -> Result<String> {
            let deadline = Instant::now() + limit;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line.starts_with(prefix) => return Ok(line),
                    Ok(_) => {}
                    Err(_) => bail!("gdb did not print `{prefix}` within {limit:?}"),
                }
            }
        };
        let result = (|| -> Result<(f64, u64)> {
            wait_line("vmprobe-bench: armed", Duration::from_secs(60))?;
            let t = Instant::now();
            self.vm.start_workload(&w.command)?;
            let status = self.vm.wait_exit(RUN_TIMEOUT)?;
            let end = self.vm.last_event_at().unwrap_or_else(Instant::now);
            if status != 0 {
                bail!("the workload exited with status {status}");
            }
            // SIGINT makes GDB interrupt the target; `continue` returns.
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(gdb.id() as i32).expect("child pid is positive"),
                rustix::process::Signal::INT,
            )?;
            let line = wait_line("vmprobe-bench: hits", Duration::from_secs(60))?;
            let hits = line
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("bad gdb output: {line}"))?;
            Ok((end.duration_since(t).as_secs_f64(), hits))
        })();
        let deadline = Instant::now() + Duration::from_secs(30);
        while gdb.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = gdb.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = gdb.wait();
        result
    }

    /// Runs the workload with the guest kernel's own kprobe event on the
    /// function, and reads the kernel's hit count back.
    fn in_guest(&mut self, w: &Workload) -> Result<(f64, u64)> {
        let fetch = w.filter.as_ref().map(|f| f.fetch).unwrap_or("");
        let filter = w
            .filter
            .as_ref()
            .map(|f| format!("echo '{}' > events/kprobes/vmbench/filter && ", f.tracefs))
            .unwrap_or_default();
        // Setting the event up and reading it back are untimed: only the
        // workload with the event enabled is measured. The count comes from
        // the trace buffer (filtered events), not from kprobe_profile, whose
        // hit column counts unfiltered hits.
        self.plain(&format!(
            "cd /sys/kernel/tracing && echo > trace && echo 'p:vmbench {f} {fetch}' > kprobe_events && \
             {filter}echo 1 > events/kprobes/vmbench/enable",
            f = w.function
        ))?;
        let secs = self.plain(&w.command)?;
        self.console
            .lock()
            .map_err(|_| anyhow!("console lock"))?
            .clear();
        self.plain(
            "cd /sys/kernel/tracing && echo 0 > events/kprobes/vmbench/enable && \
             echo \"VMPROBE-BENCH-HITS $(grep -c 'vmbench:' trace)\" && echo > kprobe_events",
        )?;
        let text =
            String::from_utf8_lossy(&self.console.lock().map_err(|_| anyhow!("console lock"))?)
                .into_owned();
        let hits = text
            .lines()
            .find_map(|l| l.split("VMPROBE-BENCH-HITS ").nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no hit count from the guest; console: {text}"))?;
        Ok((secs, hits))
    }

    /// Overhead at chosen probe rates: a busy loop that makes one null
    /// system call every EVERY rounds, with and without a probe on it.
    fn rate_table(&mut self, reps: u32) -> Result<Vec<report::RateRow>> {
        const ITER: u64 = 200_000;
        // Calibrate: rounds per second with no system calls at all.
        let secs = self.plain(&format!("vmprobe-mix {ITER} 0"))?;
        let rounds_per_sec = ITER as f64 / secs;
        let mut rows = Vec::new();
        for rate in [100u64, 1_000, 10_000] {
            let every = ((rounds_per_sec / rate as f64).round() as u64).max(1);
            let command = format!("vmprobe-mix {ITER} {every}");
            let mut base = Vec::new();
            let mut probed = Vec::new();
            let mut hits = 0;
            for _ in 0..reps {
                base.push(self.plain(&command)?);
                let (s, h, _) = self.with_vmprobe(
                    "kprobe:__x64_sys_getppid { @ = count(); }",
                    &command,
                    false,
                )?;
                probed.push(s);
                hits = h;
            }
            let row = report::RateRow {
                target_rate: rate,
                every,
                hits,
                base: Stats::of(&base),
                probed: Stats::of(&probed),
            };
            eprintln!(
                "vmprobe bench: rate {rate}/s: {:.3} s -> {:.3} s ({hits} hits)",
                row.base.geomean, row.probed.geomean
            );
            rows.push(row);
        }
        Ok(rows)
    }
}

/// A `Write` whose bytes the bench reads back after the run.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn connect(vm: &Vm) -> Result<Client> {
    let mut client = Client::connect_unix_wait(&vm.gdb_socket(), Duration::from_secs(5))
        .context("attaching to QEMU's gdbstub")?;
    client.set_stub_ignores_acks(true);
    Ok(client)
}
