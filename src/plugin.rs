//! Guests served inside QEMU by vmprobe's plugin (`backend-plugin`): which
//! runs can use it, how QEMU loads it, and attaching through its socket.

use crate::BackendArg;
use crate::kernel::KernelInfo;
use anyhow::{Context, Result, bail};
use backend_plugin::{AttachPlan, PluginBackend, PluginClient};
use plugin_protocol::RecordMode;
use qemu_guest::{Accel, QemuVersion};
use std::path::{Path, PathBuf};

/// The plugin API version 4 arrived in QEMU 9.2.
const FIRST_QEMU: QemuVersion = QemuVersion {
    major: 9,
    minor: 2,
    micro: 0,
};

/// Which backend serves a run's guests.
pub enum Choice {
    /// vmprobe's plugin, loaded into this QEMU.
    Plugin {
        library: PathBuf,
        qemu: PathBuf,
    },
    Gdb,
}

/// The plugin when asked for or, with `auto`, when it can serve: TCG, a
/// QEMU with plugin API v4 (`--qemu`, else QEMU 10 where install-deps put
/// it), the plugin library, and a program it serves. Else the gdbstub;
/// with `--backend plugin` each missing piece is an error (the program's,
/// at line:column).
pub fn choose(
    arg: BackendArg,
    program: &probe_lang::Program,
    accel: Accel,
    qemu: Option<&Path>,
    verbose: bool,
) -> Result<Result<Choice, probe_lang::Diagnostics>> {
    if arg == BackendArg::Gdb {
        return Ok(Ok(Choice::Gdb));
    }
    let why_not = match plugin_parts(program, accel, qemu) {
        Ok(Ok(choice)) => {
            if verbose {
                eprintln!(
                    "vmprobe: backend: plugin (handlers run inside QEMU, no VM stop per hit)"
                );
            }
            return Ok(Ok(choice));
        }
        Ok(Err(diags)) if arg == BackendArg::Plugin => return Ok(Err(diags)),
        Ok(Err(diags)) => {
            let text = diags.to_string();
            text.lines().next().unwrap_or("").to_string()
        }
        Err(e) if arg == BackendArg::Plugin => return Err(e),
        Err(e) => format!("{e:#}"),
    };
    if verbose {
        eprintln!("vmprobe: backend: gdb ({why_not})");
    }
    Ok(Ok(Choice::Gdb))
}

fn plugin_parts(
    program: &probe_lang::Program,
    accel: Accel,
    qemu: Option<&Path>,
) -> Result<Result<Choice, probe_lang::Diagnostics>> {
    if accel == Accel::Kvm {
        bail!("the plugin runs under TCG only; under KVM probes go through the gdbstub");
    }
    let qemu = match qemu {
        Some(q) => q.to_path_buf(),
        None => qemu_guest::installed_qemu10().context(
            "no QEMU with plugin API v4 (9.2 or later): run .ci/install-deps, or give --qemu",
        )?,
    };
    let version = QemuVersion::of(&qemu)?;
    if version < FIRST_QEMU {
        bail!(
            "{} is QEMU {version}; the plugin needs {FIRST_QEMU} or later",
            qemu.display()
        );
    }
    let library = backend_plugin::library().with_context(|| {
        format!(
            "no {} next to vmprobe (build it: cargo build -p vmprobe-qemu-plugin; or set ${})",
            backend_plugin::LIBRARY,
            backend_plugin::LIBRARY_ENV
        )
    })?;
    Ok(backend_plugin::check_program(program).map(|()| Choice::Plugin { library, qemu }))
}

/// What the plugin records for `vmprobe record`.
pub fn record_mode(recording: bool, program: &probe_lang::Program) -> RecordMode {
    match (recording, program.uses_trace()) {
        (false, _) => RecordMode::Off,
        (true, true) => RecordMode::Traced,
        (true, false) => RecordMode::EveryHit,
    }
}

/// Connects to a plugin's socket and attaches the program (the guest must
/// be running).
pub fn attach(
    name: &str,
    socket: &Path,
    program: &probe_lang::Program,
    kernel: &KernelInfo,
    record: RecordMode,
) -> Result<PluginBackend> {
    let client = PluginClient::connect(socket)?;
    let backend = backend_plugin::attach(
        client,
        AttachPlan {
            guest: name,
            program,
            symbols: &kernel.symbols,
            kernel: &kernel.guest,
            record,
            step_budget: probe_runtime::DEFAULT_STEP_BUDGET,
            map_limit: probe_runtime::DEFAULT_MAP_LIMIT,
        },
    )?;
    Ok(backend)
}

/// `vmprobe qemu-args`: the flags that load the plugin into a QEMU.
pub fn qemu_args(socket: &Path) -> Result<()> {
    let library = backend_plugin::library().with_context(|| {
        format!(
            "no {} next to vmprobe (build it: cargo build --release -p vmprobe-qemu-plugin)",
            backend_plugin::LIBRARY
        )
    })?;
    let library = std::fs::canonicalize(&library).unwrap_or(library);
    let args = backend_plugin::qemu_args(&library, socket);
    println!("-accel tcg,thread=single {}", args.join(" "));
    Ok(())
}
