//! The language end to end: every script in `tests/scripts/*.bt` runs
//! against ONE long-lived default guest. For each script the test starts
//! `vmprobe attach` on the guest's gdbstub, waits until it has armed its
//! probes, runs the script's workload in the guest, and when the workload
//! is done interrupts vmprobe as a user's Ctrl-C would (END runs, maps
//! print, every breakpoint is removed, the stub is detached). The next
//! script attaches to the same guest, so each one also proves the previous
//! detach left the guest running and attachable.
//!
//! Long file: the fixture language (`//-` lines), the guest's ground truth
//! (kprobe events, hist triggers) and the runner that judges each script
//! against it are one harness, used only here.
//!
//! A script file is a valid script whose `//-` comment lines (in the style
//! of rust-analyzer's test fixtures) say how to run and judge it:
//!
//! ```text
//! //- workload: dd if=/dev/zero of=/dev/null bs=1 count=40
//! //- truth: p:gv vfs_read /comm == "dd"/
//! //- expect: hist(@ns) == hits(gv)
//! //- expect: stdout contains "@ns:"
//! ```
//!
//! - `workload:` a shell command line for the guest's init (in `/tmp`).
//! - `truth:` a kprobe event the guest kernel itself records around the
//!   workload: the text before `/` goes to `kprobe_events` as is, the text
//!   between slashes is the event's filter. `hits(NAME)` is the kernel's
//!   `kprobe_profile` hit count, `events(NAME)` the number of events that
//!   passed the filter into the trace.
//! - `truth: hist:NAME GROUP/EVENT KEY /FILTER/` a hist trigger the guest
//!   kernel keeps on one of its own events (a real tracepoint such as
//!   `syscalls/sys_exit_read`, or `kprobes/NAME` of a `p:` truth above it),
//!   counting events by the field KEY; `keyed(NAME)` is that table.
//! - `expect: LHS OP RHS` with OP one of `== != >= <= > <`; operands are
//!   integers, `@m` (a scalar map's value), `@m[KEY]` (an entry, KEY as
//!   printed), `len(@m)`, `sum(@m)` (entries of a keyed map), `hist(@m)`
//!   (all counts of a hist/lhist map), `lines("TEXT")` (stdout lines
//!   containing TEXT), `hits(NAME)`, `events(NAME)`, `console(KEY)` (an
//!   integer the workload printed as `KEY=N`).
//! - `expect: @m == keyed(NAME)`: the keyed map `@m` has exactly the keys
//!   and counts of the hist truth NAME (integer keys compared as signed
//!   64-bit, as the kernel's table prints them unsigned).
//! - `expect: stdout contains "TEXT"` / `stdout lacks "TEXT"` (`\n` allowed).
//! - `expect: stderr contains "TEXT"`.
//! - `flags: ...` more `vmprobe attach` options (e.g. `-f json`).
//! - `allow: runtime-errors`: the script's handlers may report counted
//!   errors (by default any is a failure), and vmprobe may exit 3 for them.
//!
//! Every script must also exit 0 (or 3 as allowed), print its `Attaching N probes...` banner
//! and detach without error.

#[path = "support/fixtures.rs"]
mod fixtures;
mod support;

use fixtures::*;
use support::*;

#[test]
fn fixtures_parse() {
    let all = fixtures("scripts");
    assert!(all.len() >= 40, "{} scripts", all.len());
    // Each parses (its `//-` lines are comments); typing needs the guest
    // kernel's BTF, which the e2e run compiles with.
    for f in &all {
        let source = std::fs::read_to_string(&f.path).unwrap();
        if let Err(e) = probe_lang::parser::parse(&source) {
            panic!("{}: {} at byte {}", f.name, e.message, e.span.start);
        }
    }
}

#[test]
fn every_script_against_one_guest() {
    run_suite("scripts", Suite::default());
}

/// The same scripts on QEMU 10 with vmprobe's plugin loaded: each one the
/// plugin can serve runs inside QEMU, the others fall back to the stub;
/// every count is judged against the same guest-kernel ground truth.
#[test]
fn every_script_on_the_plugin_backend() {
    let Some(qemu) = qemu10() else { return };
    run_suite(
        "scripts",
        Suite {
            plugin_qemu: Some(qemu),
            ..Suite::default()
        },
    );
}
