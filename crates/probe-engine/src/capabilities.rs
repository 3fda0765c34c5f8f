//! What a backend serves, declared up front (as the gdbstub crate's
//! optional extensions), and what each probe kind's context has: a program
//! that asks for more fails before anything boots, at the line:column of
//! the use, instead of with a counted error at every hit.

use probe_lang::diag::Span;
use probe_lang::needs::{Need, NeedUse};
use probe_lang::{BlockId, Diagnostics, ProbeSpec, Program};

/// What a backend lacks, each with the reason a user is told (`None`: it
/// serves it). The reasons end with what to use instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capabilities {
    /// `watchpoint:` probes.
    pub watchpoints: Option<&'static str>,
    /// Guest-physical memory (`vtop`, `str_as`, `buf_as`, `uint_as`),
    /// after "`what` reads guest-physical memory, ".
    pub physical_memory: Option<&'static str>,
    /// Guest state in `interval` blocks, after "`what` reads guest state, ".
    pub interval_guest_state: Option<&'static str>,
    /// Map reads in VMM and host handlers that see what guest handlers
    /// wrote, in the order it happened; after "`@map` is written ...".
    pub ordered_layer_reads: Option<&'static str>,
}

impl Capabilities {
    /// A backend that serves everything a program can ask (through a
    /// stub: the guest stops for every probe, timers included).
    pub const ALL: Capabilities = Capabilities {
        watchpoints: None,
        physical_memory: None,
        interval_guest_state: None,
        ordered_layer_reads: None,
    };
}

/// The probe kinds whose handlers no vCPU stops for, and why, for
/// "`what` reads guest state, which ... does not have".
fn without_guest_state(spec: &ProbeSpec) -> Option<&'static str> {
    match spec {
        ProbeSpec::Begin | ProbeSpec::End => {
            Some("BEGIN and END do not have (they run in vmprobe, not in a guest)")
        }
        ProbeSpec::Vmm { .. } => Some("a VMM event does not have (no vCPU stops for it)"),
        ProbeSpec::HostTracepoint { .. } => Some(
            "a host tracepoint does not have (it fires in the host kernel; no vCPU stops for it)",
        ),
        _ => None,
    }
}

/// Checks `program` against what `caps` serves and what each probe kind
/// has. Every refusal is an error at its use, all reported at once.
pub fn check(program: &Program, caps: &Capabilities) -> Result<(), Diagnostics> {
    let probes = program.probes();
    let spans = program.probe_spans();
    let kinds_of = |block: BlockId| -> Vec<&ProbeSpec> {
        (0..probes.len())
            .filter(|&i| program.block_of(i) == block)
            .map(|i| &probes[i])
            .collect()
    };
    let mut errors: Vec<(Span, String)> = Vec::new();
    if let Some(why) = caps.watchpoints {
        errors.extend(
            probes
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p, ProbeSpec::Watchpoint { .. }))
                .map(|(i, _)| (spans.get(i).copied().unwrap_or_default(), why.to_string())),
        );
    }
    // Blocks that run for a VMM or host event, and the maps guest handlers
    // write, for the order of map reads.
    let in_layers = |block: BlockId| {
        kinds_of(block)
            .iter()
            .any(|p| matches!(p, ProbeSpec::Vmm { .. } | ProbeSpec::HostTracepoint { .. }))
    };
    let in_guest = |block: BlockId| {
        kinds_of(block).iter().any(|p| {
            matches!(
                p,
                ProbeSpec::Kprobe { .. }
                    | ProbeSpec::Kretprobe { .. }
                    | ProbeSpec::Kfunc { .. }
                    | ProbeSpec::Kretfunc { .. }
                    | ProbeSpec::Uprobe { .. }
                    | ProbeSpec::GuestTracepoint { .. }
                    | ProbeSpec::Profile { .. }
            )
        })
    };
    let written_in_guest: Vec<&str> = program
        .needs()
        .iter()
        .filter(|n| n.need == Need::MapWrite && in_guest(n.block))
        .map(|n| n.what.as_str())
        .collect();
    let refusal = |n: &NeedUse| match n.need {
        Need::MapRead if in_layers(n.block) && written_in_guest.contains(&n.what.as_str()) => caps
            .ordered_layer_reads
            .map(|why| format!("{} is written {why}", n.what)),
        Need::MapRead | Need::MapWrite => None,
        Need::GuestState | Need::PhysicalMemory => {
            let kinds = kinds_of(n.block);
            // Strict where a block is shared: the probe that has no guest
            // state would fail at each of its hits.
            if let Some(which) = kinds.iter().find_map(|p| without_guest_state(p)) {
                return Some(format!("{} reads guest state, which {which}", n.what));
            }
            if n.need == Need::PhysicalMemory
                && let Some(why) = caps.physical_memory
            {
                return Some(format!("{} reads guest-physical memory, {why}", n.what));
            }
            let interval = kinds
                .iter()
                .any(|p| matches!(p, ProbeSpec::Interval { .. }));
            caps.interval_guest_state
                .filter(|_| interval)
                .map(|why| format!("{} reads guest state, {why}", n.what))
        }
    };
    errors.extend(
        program
            .needs()
            .iter()
            .filter_map(|n| refusal(n).map(|why| (n.span, why))),
    );
    errors.sort_by_key(|(span, _)| span.start);
    program.errors_at(&errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(source: &str, caps: &Capabilities) -> String {
        let program = probe_lang::compile(source, "t.bt").expect("compiles");
        match check(&program, caps) {
            Ok(()) => String::new(),
            Err(d) => d.to_string(),
        }
    }

    const LACKS_ALL: Capabilities = Capabilities {
        watchpoints: Some("no watchpoints here"),
        physical_memory: Some("which this backend cannot"),
        interval_guest_state: Some("which an interval has not here"),
        ordered_layer_reads: Some("out of order here"),
    };

    #[test]
    fn guest_state_where_no_vcpu_stops_is_refused_at_its_use() {
        let e = errors("BEGIN { printf(\"%s\\n\", comm); }", &Capabilities::ALL);
        assert!(
            e.contains("comm reads guest state, which BEGIN and END do not have"),
            "{e}"
        );
        assert!(e.contains("t.bt:1:24"), "{e}");
        let e = errors("END { join(0x1000); }", &Capabilities::ALL);
        assert!(
            e.contains("join() reads guest state, which BEGIN and END do not have"),
            "{e}"
        );
        let e = errors(
            "vmm:serial_write { @[str(0)] = count(); }",
            &Capabilities::ALL,
        );
        assert!(
            e.contains("str() reads guest state, which a VMM event"),
            "{e}"
        );
        // A block shared with a probe that has no guest state would fail at
        // that probe's hits.
        let e = errors(
            "kprobe:vfs_read, host:tracepoint:kvm:kvm_exit { @[pid] = count(); }",
            &Capabilities::ALL,
        );
        assert!(
            e.contains("pid reads guest state, which a host tracepoint"),
            "{e}"
        );
        // What a VMM event has (its fields, maps, the clock) is fine.
        let ok = "vmm:serial_write { @[args.value] = count(); @t = nsecs; } END { print(@t); }";
        assert_eq!(errors(ok, &Capabilities::ALL), "");
        assert_eq!(
            errors("kprobe:vfs_read { @[comm, kstack] = count(); }", &LACKS_ALL),
            ""
        );
    }

    #[test]
    fn what_a_backend_lacks_is_refused_with_its_reason() {
        let source = "watchpoint:0x1000:8:w { @w = count(); }\n\
                      interval:s:1 { @c[comm] = count(); }\n\
                      kprobe:vfs_read { @v = vtop(0, 0); @n = count(); }\n\
                      vmm:serial_write { @m = @n; }";
        assert_eq!(errors(source, &Capabilities::ALL), "");
        let e = errors(source, &LACKS_ALL);
        for want in [
            "no watchpoints here",
            "t.bt:1:1",
            "comm reads guest state, which an interval has not here",
            "t.bt:2:19",
            "vtop() reads guest-physical memory, which this backend cannot",
            "@n is written out of order here",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
