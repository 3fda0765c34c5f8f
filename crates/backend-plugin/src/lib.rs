//! backend-plugin: probes served inside QEMU by vmprobe's TCG plugin
//! (`vmprobe-qemu-plugin`), with no VM stop per hit. This crate is
//! vmprobe's side: it finds the plugin library and the flags that load it,
//! tells which programs the plugin can serve, and attaches a program
//! through the plugin's socket ([`attach`]), after which the engine serves
//! the run through [`PluginBackend`].
//!
//! What the plugin cannot serve, refused before anything boots (with the
//! place in the script):
//! - guest-physical memory (`vtop`, `str_as`, `buf_as`, `uint_as`): QEMU
//!   10.0's plugin API (version 4) has no physical reads;
//! - watchpoints: served through the GDB stub, where a data watchpoint
//!   costs no flush of translated code (QEMU flushes at breakpoint and step
//!   stops, not at watchpoint stops);
//! - guest state in `interval` blocks: they run in vmprobe, where no vCPU
//!   stopped for them.

#![forbid(unsafe_code)]
mod backend;
pub mod client;
mod home;

pub use backend::PluginBackend;
pub use client::PluginClient;

use kernel_image::KernelSymbols;
use linux_guest::GuestKernel;
use plugin_protocol::{Attach, RecordMode};
use probe_engine::capabilities::Capabilities;
use probe_lang::{Diagnostics, Program};
use probe_plan::{resolve_probes_for, resolve_timers};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The plugin library's file name, as cargo builds it.
pub const LIBRARY: &str = "libvmprobe_qemu_plugin.so";
/// Names a plugin library to use instead of the one next to vmprobe.
pub const LIBRARY_ENV: &str = "VMPROBE_PLUGIN";

/// Events each vCPU's output ring holds before it drops new ones.
pub const RING_EVENTS: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the plugin at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] plugin_protocol::ProtocolError),
    #[error(
        "the VM's vmprobe plugin is version {plugin} (protocol {plugin_protocol}); this vmprobe is {ours} (protocol {our_protocol}): load the plugin of this vmprobe"
    )]
    Version {
        plugin: String,
        plugin_protocol: u32,
        ours: String,
        our_protocol: u32,
    },
    #[error("the plugin: {0}")]
    Remote(String),
    #[error("the plugin closed its socket")]
    Closed,
    #[error("no answer from the plugin for {0} (is the VM paused?)")]
    Timeout(&'static str),
    #[error("unexpected message from the plugin: {0}")]
    Unexpected(String),
    #[error(
        "could not find the kernel in guest memory (KASLR slide detection failed); is the guest kernel the image given?"
    )]
    SlideNotFound,
    #[error(transparent)]
    Plan(#[from] probe_plan::Error),
    #[error(transparent)]
    Boundary(#[from] probe_engine::boundary::BoundaryError),
}

/// The plugin library: `$VMPROBE_PLUGIN`, else `libvmprobe_qemu_plugin.so`
/// next to the vmprobe executable (where cargo builds both).
pub fn library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(LIBRARY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    // Test binaries live one level deeper, in target/*/deps.
    let dir = exe.parent()?;
    [dir.join(LIBRARY), dir.parent()?.join(LIBRARY)]
        .into_iter()
        .find(|p| p.is_file())
}

/// QEMU's flags to load the plugin listening on `socket`.
pub fn qemu_args(library: &Path, socket: &Path) -> Vec<String> {
    vec![
        "-plugin".into(),
        format!("{},sock={}", library.display(), socket.display()),
    ]
}

/// What the plugin backend lacks, and what to use instead.
pub const CAPABILITIES: Capabilities = Capabilities {
    watchpoints: Some("watchpoints are served through the GDB stub: use --backend gdb"),
    physical_memory: Some("which QEMU 10.0's plugin API cannot: use --backend gdb"),
    interval_guest_state: Some(
        "which an interval probe does not have with the plugin backend \
         (it runs in vmprobe, no vCPU stops for it): use profile: or --backend gdb",
    ),
    ordered_layer_reads: Some(
        "inside QEMU, and VMM and host events are served later in vmprobe, \
         so this read would not see those writes in the order they happened: use --backend gdb",
    ),
};

/// Refuses, each at its place in the script, what the plugin cannot serve.
pub fn check_program(program: &Program) -> Result<(), Diagnostics> {
    probe_engine::capabilities::check(program, &CAPABILITIES)
}

/// What [`attach`] needs to know of the run.
pub struct AttachPlan<'a> {
    pub guest: &'a str,
    pub program: &'a Program,
    pub symbols: &'a KernelSymbols,
    /// The kernel as read from its image (slide 0).
    pub kernel: &'a GuestKernel,
    pub record: RecordMode,
    pub step_budget: u64,
    pub map_limit: usize,
}

/// Attaches a program through a connected plugin: finds the KASLR slide,
/// checks `F+OFFSET` probes against the code in guest memory and sends
/// the program. The guest must be running (a vCPU answers the plugin's
/// requests); nothing runs a handler until the engine starts the backend.
pub fn attach(mut client: PluginClient, plan: AttachPlan<'_>) -> Result<PluginBackend, Error> {
    let samples = plan.symbols.text_samples().to_vec();
    let slide = if samples.is_empty() {
        // Symbols from a System.map or /proc/kallsyms: taken as they are.
        0
    } else {
        client.detect_slide(samples)?.ok_or(Error::SlideNotFound)?
    };
    let sites = resolve_probes_for(plan.program, plan.symbols, slide, plan.guest)?;
    // A module function's site has no address before its module is loaded
    // (in QEMU, an offset inside an instruction is never run, so never fires).
    for site in sites.iter().filter(|s| !s.in_module()) {
        probe_engine::boundary::check_instruction_boundary(site, |addr, len| {
            client
                .read_memory(addr, len as u64)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not mapped".to_string())
        })?;
    }
    let timers = resolve_timers(plan.program);
    let (samplers, intervals): (Vec<_>, Vec<_>) = timers.into_iter().partition(|t| t.every_vcpu);
    let kernel = plan.kernel.with_slide(slide);
    client.attach(Attach {
        id: 0,
        guest: plan.guest.to_string(),
        exec: (**plan.program.executable()).clone(),
        kernel: kernel.description(),
        slide,
        sites: sites.clone(),
        samplers,
        step_budget: plan.step_budget,
        map_limit: plan.map_limit,
        record: plan.record,
        ring_events: RING_EVENTS,
    })?;
    Ok(PluginBackend::new(
        plan.guest,
        client,
        Arc::new(kernel),
        sites,
        intervals,
    ))
}
