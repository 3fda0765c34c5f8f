//! Guests served through their GDB stub (`backend-gdb`).

use crate::kernel::KernelInfo;
use anyhow::{Context, Result, bail};
use backend_gdb::Session;
use probe_plan::{resolve_probes_for, resolve_timers, resolve_watches};
use std::sync::Arc;

/// On a stopped, attached guest: finds the KASLR slide, arms every probe of
/// the program (breakpoints, watchpoints, timers) and gives handlers the
/// guest kernel's symbols, types and unwind tables. Returns the slide.
pub fn arm_program(
    session: &mut Session,
    program: &probe_lang::Program,
    kernel: &KernelInfo,
) -> Result<u64> {
    arm(session, program, kernel, false)
}

/// `arm_program` on a guest that may still be booting (a VM attached again
/// after its QEMU restarted): refused with [`StillBooting`] until the
/// kernel's `system_state` says init is done, because the kernel patches
/// its own text (alternatives, ftrace) while it boots, under the probes.
pub fn arm_program_after_boot(
    session: &mut Session,
    program: &probe_lang::Program,
    kernel: &KernelInfo,
) -> Result<u64> {
    arm(session, program, kernel, true)
}

/// The guest kernel has not finished booting yet.
#[derive(Debug, thiserror::Error)]
#[error("the guest kernel is still booting (system_state {0})")]
pub struct StillBooting(pub u32);

/// `SYSTEM_FREEING_INITMEM` since Linux 5.5 (`SYSTEM_RUNNING` before):
/// from here on the kernel's boot-time patching of its text is done.
const SYSTEM_PAST_INIT: u32 = 2;

fn arm(
    session: &mut Session,
    program: &probe_lang::Program,
    kernel: &KernelInfo,
    after_boot: bool,
) -> Result<u64> {
    let slide = session
        .detect_slide(&kernel.symbols)
        .context("finding the KASLR slide")?;
    if after_boot && let Some(sym) = kernel.symbols.lookup("system_state") {
        let mut state = [0u8; 4];
        session
            .client()
            .read_memory(sym.addr.wrapping_add(slide), &mut state)
            .context("reading the kernel's system_state")?;
        let state = u32::from_le_bytes(state);
        if state < SYSTEM_PAST_INIT {
            return Err(StillBooting(state).into());
        }
    }
    // Arming is not interrupted part way: what was armed is removed again.
    session.client().set_abort(None);
    let map = session.client().register_map();
    if let Err(diags) = program.check_registers(|r| map.lookup(r).is_some()) {
        bail!("{}", diags.to_string().trim_end());
    }
    let sites = resolve_probes_for(program, &kernel.symbols, slide, session.name())?;
    session.arm(sites)?;
    let watches = resolve_watches(program, &kernel.symbols, slide).map_err(|(_, e)| e)?;
    session.arm_watches(watches)?;
    session.set_timers(resolve_timers(program))?;
    session.set_kernel(Arc::new(kernel.guest.with_slide(slide)));
    session
        .arm_user_mappings()
        .context("arming uprobes in the guest's processes")?;
    session
        .arm_modules()
        .context("arming kprobes in the guest's kernel modules")?;
    if let Some(symbols) = crate::uprobe::symbols() {
        session.set_user_symbols(symbols);
    }
    Ok(slide)
}
