//! Guests served through their GDB stub (`backend-gdb`).

use crate::kernel::KernelInfo;
use anyhow::{Context, Result, bail};
use backend_gdb::Session;
use probe_plan::{resolve_probes, resolve_timers, resolve_watches};
use std::sync::Arc;

/// On a stopped, attached guest: finds the KASLR slide, arms every probe of
/// the program (breakpoints, watchpoints, timers) and gives handlers the
/// guest kernel's symbols, types and unwind tables. Returns the slide.
pub fn arm_program(
    session: &mut Session,
    program: &probe_lang::Program,
    kernel: &KernelInfo,
) -> Result<u64> {
    let slide = session
        .detect_slide(&kernel.symbols)
        .context("finding the KASLR slide")?;
    // Arming is not interrupted part way: what was armed is removed again.
    session.client().set_abort(None);
    let map = session.client().register_map();
    if let Err(diags) = program.check_registers(|r| map.lookup(r).is_some()) {
        bail!("{}", diags.to_string().trim_end());
    }
    let sites = resolve_probes(program, &kernel.symbols, slide)?;
    session.arm(sites)?;
    let watches = resolve_watches(program, &kernel.symbols, slide).map_err(|(_, e)| e)?;
    session.arm_watches(watches)?;
    session.set_timers(resolve_timers(program))?;
    session.set_kernel(Arc::new(kernel.guest.with_slide(slide)));
    Ok(slide)
}
