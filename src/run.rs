//! `vmprobe run`, `guest build` and `list`: the order of a run, and its reports.

use crate::kernel::{KernelInfo, compile_typed, guest_image, load_kernel, load_symbols};
use crate::recorder::{Recording, start_recorder};
use crate::report::{ServePlan, serve_and_report};
use crate::{AccelArg, RunArgs};
use anyhow::{Context, Result, anyhow, bail};
use backend_gdb::Session;
use gdb_remote::Client;
use probe_engine::BackendError;
use probe_engine::serve::{Guest, GuestControl};
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// A TCG boot takes 5-20 s on a loaded 2-core machine; leave ample room.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Joins the workload words into one shell command line for the guest.
fn command_line(words: &[String]) -> String {
    if let [only] = words {
        return only.clone();
    }
    let quote = |w: &String| {
        if !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
        {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

pub fn run(args: RunArgs) -> Result<i32> {
    run_recording(args, None)
}

pub fn run_recording(mut args: RunArgs, recording: Option<Recording>) -> Result<i32> {
    crate::bpftrace::apply(&args.bpftrace)?;
    crate::bpftrace::pid_for_run(&args.bpftrace)?;
    if args.list {
        return list_probes(&args);
    }
    // Everything that can be checked before booting is checked first.
    // With -e every positional argument is a parameter, as in bpftrace.
    if args.program.is_some()
        && let Some(first) = args.file.take()
    {
        args.params.insert(0, first.to_string_lossy().into_owned());
    }
    let (source, source_name) = crate::script::program_source(&args.program, &args.file)?;
    // `#include`s read the guest kernel's headers, then the host's, as
    // bpftrace reads the running kernel's: the default guest's are
    // fetched on first need (once the guest is built: below, if not yet).
    let own_kernel = args.boot.guest.kernel.is_some();
    let built = if own_kernel {
        None
    } else {
        qemu_guest::default_guest(&qemu_guest::cache_dir())
    };
    let headers_known = own_kernel || built.is_some() || args.boot.kernel_headers.is_some();
    let headers = if headers_known {
        crate::script::program_headers(
            &source,
            args.boot.kernel_headers.as_deref(),
            built.as_ref().map(|i| i.version.as_str()),
        )?
    } else {
        crate::script::host_headers()
    };
    let mut options = probe_lang::Options {
        params: args.params.clone(),
        str_len: str_len_from_env()?,
        headers: Some(headers),
        pid: None,
        users: None,
    };
    if let Some(command) = args.command.take() {
        args.workload = vec![command];
    }
    // A program that needs no guest runs at once, as bpftrace runs a BEGIN
    // block, with no image read and nothing booted; with a workload (which
    // needs a guest to run in) or a recording, a guest boots as always.
    let guest_free = |p: &probe_lang::Program| {
        recording.is_none()
            && args.workload.is_empty()
            && !args.dump
            && crate::noguest::needs_no_guest(p)
    };
    if let Ok(program) = probe_lang::compile_with(&source, &source_name, None, &options)
        && guest_free(&program)
    {
        return run_without_guest(&args, Arc::new(program));
    }
    // The program is typed with the guest kernel's BTF (args, struct
    // casts); without an image, a program that needs no types still checks.
    let loaded = guest_image(&args.boot.guest).and_then(|image| {
        let symbols = load_symbols(&args.boot.guest, &image)?;
        let kernel = load_kernel(symbols, &image.kernel);
        Ok((image, kernel))
    });
    let (image, kernel) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            if let Err(diags) = probe_lang::compile_with(&source, &source_name, None, &options) {
                eprint!("{diags}");
                return Ok(1);
            }
            return Err(e);
        }
    };
    if !headers_known {
        options.headers = Some(crate::script::program_headers(
            &source,
            None,
            Some(image.version.as_str()),
        )?);
    }
    let program = match compile_typed(
        &source,
        &source_name,
        &kernel,
        &options,
        args.boot.guest.guest_root.as_deref(),
    ) {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
    };
    if args.dump {
        print!("{}", program.dump());
        return Ok(0);
    }
    // trace() and snapshot() need the trace `record` writes (trace() also
    // goes out with --otlp): an error before anything boots, as bpftrace
    // reports errors before attaching.
    if let Some(allowed) = crate::attach::allowed_recording(&recording, &args.otlp)
        && let Err(diags) = program.check_recording_only("run", allowed)
    {
        eprint!("{diags}");
        return Ok(1);
    }
    // Typed constructs (sizeof(struct file)) needed the image to compile;
    // the program may still need no guest.
    if guest_free(&program) {
        return run_without_guest(&args, program);
    }
    if let Some(disk) = &args.boot.disk {
        if args.boot.guests > 1 {
            bail!("--disk gives one guest a disk; several guests (--guests) cannot share it");
        }
        std::fs::metadata(disk).with_context(|| format!("--disk {}", disk.display()))?;
    }
    // Unknown symbols and bad patterns fail here, before anything boots.
    if !crate::kernel::check_program(&program, &kernel.symbols)? {
        return Ok(1);
    }
    // Guests are vm0, vm1, ...: a per-guest probe (`vm1:kprobe:F`) names one.
    let names: Vec<String> = (0..args.boot.guests.max(1))
        .map(|i| format!("vm{i}"))
        .collect();
    if let Err(diags) = program.check_guests(&names.iter().map(String::as_str).collect::<Vec<_>>())
    {
        eprint!("{diags}");
        return Ok(1);
    }
    let metrics = crate::metrics::bind(args.metrics, &program)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let snapshot_requested = Arc::new(AtomicBool::new(false));
    let recorder = start_recorder(recording.as_ref(), &snapshot_requested, || {
        crate::kernel::own_fields(&program, &kernel)
    })?;
    let out = crate::bpftrace::output(&args.bpftrace)?;

    let release = crate::otlp::kernel_release(&image.kernel);
    let mut cfg = LaunchConfig::new(image);
    cfg.vcpus = args.boot.vcpus;
    cfg.disk = args.boot.disk.clone();
    if let Some(q) = &args.boot.qemu {
        cfg.qemu = q.clone();
    }
    if let Some(a) = args.boot.accel {
        cfg.accel = match a {
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        };
    }
    if crate::uprobe::has_uprobes(&program) && cfg.accel == Accel::Kvm {
        if args.boot.accel.is_some() {
            bail!("{}", crate::uprobe::KVM_REFUSAL);
        }
        progress!("vmprobe: uprobes need TCG: booting under TCG, not KVM");
        cfg.accel = Accel::Tcg;
    }
    if args.console {
        cfg.console = Some(Arc::new(std::sync::Mutex::new(std::io::stderr())));
    }
    let choice = crate::plugin::choose(
        args.boot.backend,
        &program,
        cfg.accel,
        args.boot.qemu.as_deref(),
        args.verbose,
    )?;
    let plugin = match choice {
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
        Ok(crate::plugin::Choice::Plugin { library, qemu }) => {
            cfg.qemu = qemu;
            cfg.plugin = Some(library);
            Some(crate::plugin::record_mode(
                recording.is_some() || args.otlp.is_some(),
                &program,
            ))
        }
        Ok(crate::plugin::Choice::Gdb) => None,
    };
    let count = args.boot.guests.max(1);
    progress!(
        "vmprobe: booting {} guest{} of {} ({:?}, {} backend)",
        count,
        if count == 1 { "" } else { "s" },
        cfg.image.kernel.display(),
        cfg.accel,
        if plugin.is_some() { "plugin" } else { "gdb" },
    );
    // QEMUs are started from this thread: PR_SET_PDEATHSIG fires when the
    // *thread* that forked them exits. They then boot in parallel; any
    // failure ends the run (the others' QEMUs are killed when their `Vm`s
    // drop).
    let layers = probe_plan::resolve_layers(&program);
    let stall = args.boot.stall_timeout;
    let logs = qemu_guest::private_dir("vmprobe-logs-").context("creating a log directory")?;
    let mut vms = Vec::new();
    for i in 0..count {
        let name = format!("vm{i}");
        let mut cfg = cfg.clone();
        if args.console && count > 1 {
            // Several consoles on one stderr: each line says whose it is.
            cfg.console = Some(Arc::new(std::sync::Mutex::new(PrefixLines::new(
                format!("{name}: "),
                std::io::stderr(),
            ))));
        }
        if !layers.vmm_events.is_empty() {
            // QEMU's trace events go to a log file vmprobe follows; it can
            // carry guest data, so it lives in a private directory.
            cfg.log_file = Some(logs.path().join(format!("{name}.log")));
        }
        let vm = Vm::launch(&cfg).with_context(|| format!("{name}: starting QEMU"))?;
        vms.push((name, vm));
    }
    let booted: Vec<Result<Guest>> = std::thread::scope(|scope| {
        let handles: Vec<_> = vms
            .into_iter()
            .map(|(name, vm)| {
                let (kernel, program, layers) = (&kernel, &program, &layers);
                let vm = VmControl::new(&name, vm, stall);
                scope.spawn(move || match plugin {
                    Some(record) => boot_guest_plugin(name, vm, kernel, program, layers, record),
                    None => boot_guest(name, vm, kernel, program, layers),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("booting a guest panicked")))
            })
            .collect()
    });
    let mut guests = Vec::new();
    for g in booted {
        guests.push(g?);
    }

    // Without a workload the guest idles and the run traces it until
    // Ctrl-C, `exit()` or --duration, as bpftrace traces the host.
    let workload = (!args.workload.is_empty()).then(|| command_line(&args.workload));
    if workload.is_none() {
        progress!(
            "vmprobe: no workload: tracing until Ctrl-C, exit(){}",
            if args.duration.is_some() {
                " or --duration"
            } else {
                ""
            }
        );
    }
    let plan = ServePlan {
        workload,
        deadline: args.duration.and_then(|d| Instant::now().checked_add(d)),
        stats: args.stats,
        output: args.format.format(),
        flamegraph: recording.as_ref().and_then(|r| r.flamegraph.clone()),
        out,
        otlp: args.otlp.clone().map(|endpoint| crate::otlp::OtlpPlan {
            endpoint,
            releases: guests
                .iter()
                .filter_map(|g| Some((g.name.clone(), release.clone()?)))
                .collect(),
        }),
        metrics,
        reattach: None,
        discover: None,
        reload: None,
    };
    serve_and_report(
        guests,
        &program,
        recorder,
        &stop,
        &snapshot_requested,
        &plan,
    )
}

/// Runs a program that needs no guest (see `noguest`): BEGIN, its
/// `interval` blocks on host timers, then END and the maps, as any run.
fn run_without_guest(args: &RunArgs, program: Arc<probe_lang::Program>) -> Result<i32> {
    if let Err(diags) = program.check_not_recording("run") {
        eprint!("{diags}");
        return Ok(1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let metrics = crate::metrics::bind(args.metrics, &program)?;
    let guests = vec![Guest {
        name: "host".to_string(),
        backend: Box::new(crate::noguest::NoGuest::new(&program)),
        control: None,
    }];
    let plan = ServePlan {
        workload: None,
        deadline: args.duration.and_then(|d| Instant::now().checked_add(d)),
        stats: args.stats,
        output: args.format.format(),
        flamegraph: None,
        out: crate::bpftrace::output(&args.bpftrace)?,
        otlp: args.otlp.clone().map(|endpoint| crate::otlp::OtlpPlan {
            endpoint,
            releases: Default::default(),
        }),
        metrics,
        reattach: None,
        discover: None,
        reload: None,
    };
    let snapshot_requested = AtomicBool::new(false);
    serve_and_report(guests, &program, None, &stop, &snapshot_requested, &plan)
}

/// `run -l`: the probes matching FILE taken as a pattern, or the probes of
/// the program given with -e (each of its attach points as a pattern), as
/// bpftrace's `-l`.
fn list_probes(args: &RunArgs) -> Result<i32> {
    let qemu = args
        .boot
        .qemu
        .as_deref()
        .unwrap_or(std::path::Path::new("qemu-system-x86_64"));
    let pattern = args.file.as_ref().map(|f| f.to_string_lossy().into_owned());
    match &args.program {
        Some(source) => {
            for spec in probe_lang::attach_points(source) {
                crate::list::list(Some(&spec.name()), args.verbose, &args.boot.guest, qemu)?;
            }
        }
        None => crate::list::list(pattern.as_deref(), args.verbose, &args.boot.guest, qemu)?,
    }
    Ok(0)
}

/// Lets a launched guest boot, attaches, finds its KASLR slide and arms the
/// program.
fn boot_guest(
    name: String,
    mut control: VmControl,
    kernel: &KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &probe_plan::LayerPlan,
) -> Result<Guest> {
    let vm = &mut control.vm;
    let mut client = Client::connect_unix_wait(&vm.gdb_socket(), Duration::from_secs(5))
        .with_context(|| format!("{name}: attaching to QEMU's gdbstub"))?;
    // QEMU's system-mode stub reads packets without waiting for our acks.
    client.set_stub_ignores_acks(true);
    let mut session = Session::new(client);
    session.set_name(&name);
    session.resume()?;
    let booted = Instant::now();
    vm.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| anyhow!("{name}: {e}; last console output: {}", tail(vm)))?;
    session.pause()?;
    let slide = crate::gdb::arm_program(&mut session, program, kernel)?;
    if !layers.vmm_events.is_empty() {
        let log = vm
            .log_file()
            .context("QEMU was started without a log file")?;
        let source =
            probe_engine::layers::VmmSource::start(&vm.qmp_socket(), log, &layers.vmm_events)
                .with_context(|| format!("{name}: QEMU trace events"))?;
        session.add_layer(Box::new(source), &layers.handlers);
    }
    if !layers.tracepoints.is_empty() {
        let conditions = probe_engine::layers::host_conditions(program);
        let source =
            probe_engine::layers::HostSource::start(vm.pid(), &layers.tracepoints, &conditions)
                .with_context(|| format!("{name}: host tracepoints"))?;
        session.add_layer(Box::new(source), &layers.handlers);
    }
    progress!(
        "vmprobe: {name} up in {:.1} s, KASLR slide {slide:#x}",
        booted.elapsed().as_secs_f64()
    );
    Ok(Guest {
        name,
        backend: Box::new(session),
        control: Some(Box::new(control)),
    })
}

/// Lets a guest launched with vmprobe's plugin boot, then attaches the
/// program through the plugin (the guest keeps running: no probe runs a
/// handler until the engine starts the backend).
fn boot_guest_plugin(
    name: String,
    mut control: VmControl,
    kernel: &KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &probe_plan::LayerPlan,
    record: plugin_protocol::RecordMode,
) -> Result<Guest> {
    let vm = &mut control.vm;
    // QEMU starts paused (-S); with no debugger, the monitor lets it go.
    qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5))
        .and_then(|mut qmp| qmp.cont())
        .with_context(|| format!("{name}: starting the guest through QMP"))?;
    let booted = Instant::now();
    vm.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| anyhow!("{name}: {e}; last console output: {}", tail(vm)))?;
    let mut backend = crate::plugin::attach(&name, &vm.plugin_socket(), program, kernel, record)
        .with_context(|| format!("{name}: attaching through vmprobe's plugin"))?;
    if !layers.vmm_events.is_empty() {
        let log = vm
            .log_file()
            .context("QEMU was started without a log file")?;
        let source =
            probe_engine::layers::VmmSource::start(&vm.qmp_socket(), log, &layers.vmm_events)
                .with_context(|| format!("{name}: QEMU trace events"))?;
        backend.add_layer(Box::new(source), &layers.handlers);
    }
    if !layers.tracepoints.is_empty() {
        let conditions = probe_engine::layers::host_conditions(program);
        let source =
            probe_engine::layers::HostSource::start(vm.pid(), &layers.tracepoints, &conditions)
                .with_context(|| format!("{name}: host tracepoints"))?;
        backend.add_layer(Box::new(source), &layers.handlers);
    }
    let slide = probe_engine::Backend::kernel(&backend).map_or(0, |k| k.slide);
    progress!(
        "vmprobe: {name} up in {:.1} s, KASLR slide {slide:#x}, plugin {} attached",
        booted.elapsed().as_secs_f64(),
        backend.plugin_version()
    );
    Ok(Guest {
        name,
        backend: Box::new(backend),
        control: Some(Box::new(control)),
    })
}

/// A guest vmprobe booted: its init runs the workload. A QEMU that is
/// stopped (SIGSTOP) answers nothing; that is said once, and after the
/// stall timeout the run ends with what was collected.
struct VmControl {
    vm: Vm,
    name: String,
    stall_timeout: Duration,
    stopped_since: Option<Instant>,
    checked_at: Option<Instant>,
}

/// How often QEMU's process state is looked at.
const STALL_CHECK: Duration = Duration::from_millis(250);

impl VmControl {
    fn new(name: &str, vm: Vm, stall_timeout: Duration) -> VmControl {
        VmControl {
            vm,
            name: name.to_string(),
            stall_timeout,
            stopped_since: None,
            checked_at: None,
        }
    }

    /// An error once QEMU has been stopped for the stall timeout.
    fn check_stall(&mut self) -> Result<(), BackendError> {
        if self.checked_at.is_some_and(|t| t.elapsed() < STALL_CHECK) {
            return Ok(());
        }
        self.checked_at = Some(Instant::now());
        if !self.vm.is_stopped() {
            if let Some(since) = self.stopped_since.take() {
                eprintln!(
                    "vmprobe: {}: QEMU goes on after {:.1} s stopped",
                    self.name,
                    since.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        let since = *self.stopped_since.get_or_insert_with(|| {
            eprintln!(
                "vmprobe: {}: QEMU (pid {}) is stopped (SIGSTOP?); waiting up to {:.0} s for it to go on (--stall-timeout)",
                self.name,
                self.vm.pid(),
                self.stall_timeout.as_secs_f64()
            );
            Instant::now()
        });
        if since.elapsed() >= self.stall_timeout {
            return Err(format!(
                "QEMU stayed stopped for {:.0} s (--stall-timeout)",
                self.stall_timeout.as_secs_f64()
            )
            .into());
        }
        Ok(())
    }
}

impl GuestControl for VmControl {
    fn start_workload(&mut self, command: &str) -> Result<(), BackendError> {
        Ok(self.vm.start_workload(command)?)
    }

    fn poll_exit(&mut self) -> Result<Option<i32>, BackendError> {
        self.check_stall()?;
        Ok(self.vm.poll_exit()?)
    }

    fn shutdown(&mut self) -> Result<(), BackendError> {
        Ok(self.vm.shutdown(Duration::from_secs(10))?)
    }
}

/// Puts a prefix in front of every line written through it, and passes on
/// whole lines only: several guests share one stderr, and a line written in
/// two pieces would otherwise have another guest's line land in its middle.
struct PrefixLines<W: Write> {
    prefix: String,
    inner: W,
    pending: Vec<u8>,
}

/// A line longer than this is passed on in pieces rather than held forever.
const MAX_HELD_LINE: usize = 64 * 1024;

impl<W: Write> PrefixLines<W> {
    fn new(prefix: String, inner: W) -> Self {
        PrefixLines {
            prefix,
            inner,
            pending: Vec::new(),
        }
    }

    /// Writes `line` (newline included, if any) with the prefix, in one write.
    fn emit(&mut self, line: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(self.prefix.len() + line.len());
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(line);
        self.inner.write_all(&out)
    }
}

impl<W: Write> Write for PrefixLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(&self.pending[start..start + nl + 1]);
            start += nl + 1;
        }
        self.pending.drain(..start);
        if !out.is_empty() {
            self.inner.write_all(&out)?;
        }
        if self.pending.len() > MAX_HELD_LINE {
            let held = std::mem::take(&mut self.pending);
            self.emit(&held)?;
            self.inner.write_all(b"\n")?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for PrefixLines<W> {
    /// The guest's last words, even without a final newline.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let held = std::mem::take(&mut self.pending);
            let _ = self.emit(&held).and_then(|_| self.inner.write_all(b"\n"));
        }
    }
}

fn tail(vm: &Vm) -> String {
    let text = vm.console_tail();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// BPFTRACE_STRLEN as bpftrace reads it: the bytes a string holds, its NUL
/// included, from 1 to 200 (default 64).
fn str_len_from_env() -> Result<Option<u64>> {
    let Some(v) = std::env::var_os("BPFTRACE_STRLEN") else {
        return Ok(None);
    };
    let limit = probe_lang::check::STR_LEN_LIMIT;
    match v.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(n) if (1..=limit).contains(&n) => Ok(Some(n)),
        _ => bail!(
            "BPFTRACE_STRLEN={}: give a number of bytes from 1 to {limit}",
            v.to_string_lossy()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{PrefixLines, command_line};
    use std::io::Write;

    #[test]
    fn console_lines_get_the_guest_prefix() {
        let mut out = Vec::new();
        {
            let mut w = PrefixLines::new("vm1: ".into(), &mut out);
            w.write_all(b"a\nb").unwrap();
            // Only whole lines go out, so another guest's line cannot land
            // inside "bc".
            assert_eq!(w.inner.as_slice(), b"vm1: a\n");
            w.write_all(b"c\n\nd").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "vm1: a\nvm1: bc\nvm1: \nvm1: d\n"
        );
    }

    #[test]
    fn workload_words_are_quoted_for_the_guest_shell() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&w(&["dd", "if=/dev/zero", "bs=1"])),
            "dd if=/dev/zero bs=1"
        );
        assert_eq!(
            command_line(&w(&["echo", "a b", "it's"])),
            r"echo 'a b' 'it'\''s'"
        );
        assert_eq!(command_line(&w(&["echo a; echo b"])), "echo a; echo b");
        assert_eq!(command_line(&w(&["printf", ""])), "printf ''");
    }
}
