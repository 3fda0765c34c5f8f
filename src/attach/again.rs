//! Service mode (`attach --config`): a VM whose connection ended is
//! attached again once it is back, VMs that appear in a watched directory
//! are attached, each from its own serving thread, and SIGHUP reloads the
//! program from the configuration file.

use super::{
    Until, VmSpec, attach_one, attach_plugin, check_layers, close_stubs, compile_for, connect_qmp,
    plugin_choice, vm_kernel,
};
use anyhow::{Context, Result, anyhow, bail};
use probe_engine::Backend;
use probe_engine::serve::Guest;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a service looks for a VM that went away.
const RETRY: Duration = Duration::from_millis(500);

/// Service mode (`attach --config`): what attaching a VM again needs.
pub(super) struct Service {
    /// The VMs served: the configuration's, then those found.
    pub specs: Mutex<Vec<VmSpec>>,
    pub watch: Option<crate::service::Watch>,
    /// What VMs are attached with: the configuration's program, then
    /// each reload's.
    pub program: Mutex<Arc<probe_lang::Program>>,
    pub private: PathBuf,
    pub until: Until,
    pub stall_timeout: Duration,
    /// `--backend`: a VM with a plugin socket is served inside QEMU unless
    /// it says `gdb`.
    pub backend: crate::BackendArg,
    /// Whether probe events are recorded or exported (`--otlp`), which
    /// the plugin then sends.
    pub records: bool,
    /// VMs whose stub was opened through QMP when attached again.
    pub opened: Mutex<Vec<String>>,
    /// The last reason a VM found in the watched directory was not
    /// attached, so that each is said once.
    pub told: Mutex<HashMap<String, String>>,
    pub reload: Reload,
}

/// What SIGHUP reads again, and what it is checked against.
pub(super) struct Reload {
    pub config: PathBuf,
    /// Set by SIGHUP.
    pub requested: Arc<AtomicBool>,
    /// The VM whose kernel types the program: the first `[[vm]]`, else
    /// `[watch]`'s.
    pub typed_with: VmSpec,
    pub recording: Option<&'static [&'static str]>,
    /// `--guest-root`: where uprobes' files are found on the host.
    pub guest_root: Option<PathBuf>,
    /// `--kernel-headers`, for the reloaded program's `#include`s.
    pub kernel_headers: Option<PathBuf>,
    /// The configuration as the service started with it, but its program:
    /// a reload changes the program only.
    pub settings: crate::service::Config,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    /// Waits, in the VM's own thread, for the VM to be back (a new QEMU
    /// at the same sockets, running a kernel past its boot) and attaches
    /// to it again; `None` once the run has ended first.
    pub fn reattach(&self, name: &str, ended: &dyn Fn() -> bool) -> Option<Box<dyn Backend>> {
        progress!(
            "vmprobe: {name}: its connection ended; attaching again once the VM is back (checking every {} ms)",
            RETRY.as_millis()
        );
        self.attach_when_back(name, ended)
    }

    /// Attaches a VM again with the program a reload installed (it
    /// detached for it); if the VM went meanwhile, once it is back.
    pub fn rearm(&self, name: &str, ended: &dyn Fn() -> bool) -> Option<Box<dyn Backend>> {
        let spec = lock(&self.specs).iter().find(|s| s.name == name)?.clone();
        // A stub vmprobe opened through QMP is still open in this QEMU
        // (QEMU would refuse a second one): closed, and opened again as
        // at attach.
        if spec.gdb.is_none()
            && spec.plugin.is_none()
            && let Ok(mut qmp) = connect_qmp(&spec, Duration::from_secs(1))
        {
            let _ = qmp.close_gdbstub();
        }
        self.attach_when_back(name, ended)
    }

    fn attach_when_back(&self, name: &str, ended: &dyn Fn() -> bool) -> Option<Box<dyn Backend>> {
        let spec = lock(&self.specs).iter().find(|s| s.name == name)?.clone();
        let mut last = String::new();
        loop {
            if ended() {
                return None;
            }
            match self.attach_again(&spec) {
                Ok(guest) => {
                    progress!(
                        "vmprobe: {name}: attached again; the maps go on from where they were"
                    );
                    return Some(guest.backend);
                }
                Err(e) => {
                    // Each reason once, not every 500 ms.
                    let line = crate::one_line(&e);
                    if line != last {
                        progress!("vmprobe: {name}: not back yet: {line}");
                        last = line;
                    }
                }
            }
            let next = Instant::now() + RETRY;
            while Instant::now() < next && !ended() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn attach_again(&self, spec: &VmSpec) -> Result<Guest> {
        // A VM that is not running (QEMU just started with -S, or paused)
        // is left alone: connecting a stub to it would change nothing but
        // detaching would resume it.
        if spec.qmp.is_some() {
            let status = connect_qmp(spec, Duration::from_secs(1))?
                .query_status()
                .context("query-status")?;
            if !status.running {
                bail!("the VM is not running ({:?})", status.status);
            }
        }
        let kernel = vm_kernel(spec)?;
        let program = lock(&self.program).clone();
        let layers = probe_plan::resolve_layers(&program);
        let mut opened = Vec::new();
        let attached = match plugin_choice(spec, &program, self.backend, false)? {
            Some(socket) => {
                let record = crate::plugin::record_mode(self.records, &program);
                let how = (record, self.stall_timeout);
                attach_plugin(spec, &socket, kernel, &program, &layers, how)
            }
            None => attach_one(
                spec,
                kernel,
                &program,
                &layers,
                &self.private,
                &mut opened,
                (&self.until, self.stall_timeout, true),
            ),
        };
        if !opened.is_empty() {
            if attached.is_ok() {
                lock(&self.opened).push(spec.name.clone());
            } else {
                // Opened again at the next try.
                close_stubs(&mut opened);
            }
        }
        attached
    }

    /// Waits for a VM that is not served yet to appear in the watched
    /// directory (`NAME.qmp`, a socket) and attaches to it; `None` once
    /// the run has ended first.
    pub fn discover(&self, ended: &dyn Fn() -> bool) -> Option<Guest> {
        let watch = self.watch.as_ref()?;
        loop {
            if ended() {
                return None;
            }
            for spec in self.new_sockets(watch) {
                match self.attach_again(&spec) {
                    Ok(guest) => {
                        progress!(
                            "vmprobe: {}: found in {}, attached",
                            spec.name,
                            watch.dir.display()
                        );
                        lock(&self.told).remove(&spec.name);
                        lock(&self.specs).push(spec);
                        return Some(guest);
                    }
                    Err(e) => {
                        let line = crate::one_line(&e);
                        let mut told = lock(&self.told);
                        if told.get(&spec.name) != Some(&line) {
                            progress!("vmprobe: {}: found, not attached yet: {line}", spec.name);
                            told.insert(spec.name.clone(), line);
                        }
                    }
                }
            }
            let next = Instant::now() + RETRY;
            while Instant::now() < next && !ended() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The watched directory's `NAME.qmp` sockets of VMs not served yet,
    /// by name; `NAME.gdb` there is the VM's stub.
    fn new_sockets(&self, watch: &crate::service::Watch) -> Vec<VmSpec> {
        use std::os::unix::fs::FileTypeExt;
        let Ok(entries) = std::fs::read_dir(&watch.dir) else {
            return Vec::new();
        };
        let served = lock(&self.specs);
        let mut found: Vec<VmSpec> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            .filter_map(|e| {
                let file = e.file_name();
                let name = file.to_str()?.strip_suffix(".qmp")?;
                let mut spec = VmSpec::named(name).ok()?;
                if served.iter().any(|s| s.name == spec.name) {
                    return None;
                }
                spec.qmp = Some(e.path());
                let gdb = watch.dir.join(format!("{name}.gdb"));
                if gdb.exists() {
                    spec.gdb = Some(crate::vm_spec::StubAddr::Unix(gdb));
                }
                spec.kernel = watch.kernel.clone();
                Some(spec)
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    /// SIGHUP's program: the configuration file's as it is now, checked
    /// as at start, once SIGHUP asked for it; `None` otherwise, and when it
    /// cannot be served (said on stderr: the previous program goes on).
    pub fn reloaded_program(&self) -> Option<Arc<probe_lang::Program>> {
        if !self.reload.requested.swap(false, Ordering::Relaxed) {
            return None;
        }
        let file = self.reload.config.display();
        progress!("vmprobe: SIGHUP: reloading the program of {file}");
        match self.load_program() {
            Ok(program) => Some(program),
            Err(e) => {
                eprintln!(
                    "vmprobe: reload: {}; still serving the previous program",
                    crate::one_line(&e)
                );
                None
            }
        }
    }

    fn load_program(&self) -> Result<Arc<probe_lang::Program>> {
        let r = &self.reload;
        let config = crate::service::load(&r.config)?;
        let was = &r.settings;
        if config.vms != was.vms
            || config.watch != was.watch
            || config.metrics != was.metrics
            || config.otlp != was.otlp
        {
            eprintln!(
                "vmprobe: reload: {}: only the program is reloaded; changes to the VMs, [watch], metrics or otlp need a restart",
                r.config.display()
            );
        }
        let (text, file) = match config.program {
            crate::service::Program::File(f) => (None, Some(f)),
            crate::service::Program::Text(t) => (Some(t), None),
        };
        let (source, source_name) = crate::script::program_source(&text, &file)?;
        let guest_root = r.guest_root.as_deref();
        let (compiled, _) = compile_for(
            &source,
            &source_name,
            &r.typed_with,
            r.recording,
            (guest_root, r.kernel_headers.as_deref()),
            None,
        )?;
        let program = compiled.map_err(|diags| {
            // Every diagnostic, as at start; the summary line follows.
            eprint!("{diags}");
            anyhow!("{source_name}: the program has errors")
        })?;
        if !crate::kernel::check_capabilities(&program) {
            bail!("{source_name}: the program asks for what no backend has");
        }
        if was.watch.is_none() {
            let names: Vec<&str> = was.vms.iter().map(|s| s.name.as_str()).collect();
            if let Err(diags) = program.check_guests(&names) {
                eprint!("{diags}");
                bail!("{source_name}: the program names a VM the service does not serve");
            }
        }
        check_layers(
            &program,
            &was.vms,
            was.watch.is_some(),
            &Some(r.config.clone()),
        )?;
        Ok(Arc::new(program))
    }

    /// The VMs whose stub vmprobe opened through QMP after the start.
    pub fn opened_specs(&self) -> Vec<VmSpec> {
        let specs = lock(&self.specs);
        lock(&self.opened)
            .iter()
            .filter_map(|n| specs.iter().find(|s| &s.name == n).cloned())
            .collect()
    }
}
