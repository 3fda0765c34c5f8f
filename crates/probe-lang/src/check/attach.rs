//! Attach points: the text of each (`kprobe:vfs_read+4`, `interval:ms:100`)
//! parsed into a [`ProbeSpec`], and what a block's attach points allow
//! (`argN` in kprobes, `retval` in kretprobes), before its body is checked.

use crate::ast::Ast;
use crate::diag::Reporter;
use crate::lexer::parse_int;
use crate::{KprobeTarget, ProbeSpec, RateUnit, WatchMode};

/// The attach points of one probe block.
pub(super) struct BlockAttach {
    /// The ones that parsed, in source order.
    pub(super) specs: Vec<ProbeSpec>,
    /// Every one is a kprobe (`argN` is allowed).
    pub(super) all_kprobe: bool,
    /// Every one is a kretprobe (`retval` is allowed).
    pub(super) all_kretprobe: bool,
}

/// Parses every block's attach points, reporting those that do not parse
/// and a second `BEGIN` or `END`. Returns (spec, index of the AST probe
/// block) in source order, and each block's [`BlockAttach`].
pub(super) fn resolve(
    ast: &Ast,
    r: &mut Reporter<'_>,
) -> (Vec<(ProbeSpec, usize)>, Vec<BlockAttach>) {
    let mut probes = Vec::new();
    let mut blocks = Vec::new();
    let (mut begins, mut ends) = (0, 0);
    for (bi, block) in ast.probes.iter().enumerate() {
        let mut all_k = true;
        let mut all_kr = true;
        let mut specs = Vec::new();
        for (text, span) in &block.attach {
            match parse_probe(text) {
                Ok(spec) => {
                    // bpftrace 0.17 allows one of each.
                    let n = match spec {
                        ProbeSpec::Begin => &mut begins,
                        ProbeSpec::End => &mut ends,
                        _ => &mut 0,
                    };
                    *n += 1;
                    if *n == 2 {
                        r.error(*span, format!("More than one {text} probe defined"));
                    }
                    all_k &= matches!(spec, ProbeSpec::Kprobe { .. });
                    all_kr &= matches!(spec, ProbeSpec::Kretprobe { .. });
                    specs.push(spec.clone());
                    probes.push((spec, bi));
                }
                Err(m) => r.error(*span, m),
            }
        }
        blocks.push(BlockAttach {
            specs,
            all_kprobe: all_k,
            all_kretprobe: all_kr,
        });
    }
    (probes, blocks)
}

/// The shortest period of `interval` and `profile` probes (100 kHz).
/// bpftrace's are perf events on the kernel's cpu-clock, which refuses
/// higher rates (`profile:hz:1000000`: "Invalid argument") and stretches
/// shorter periods to 10 us; here every firing stops the guest.
pub const MIN_PERIOD_NS: u64 = 10_000;

/// Attach point text -> ProbeSpec.
pub fn parse_probe(text: &str) -> Result<ProbeSpec, String> {
    match text {
        "BEGIN" => return Ok(ProbeSpec::Begin),
        "END" => return Ok(ProbeSpec::End),
        _ => {}
    }
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(format!("invalid probe '{text}'"));
    };
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '?'))
    };
    match kind {
        "kprobe" | "k" => {
            let (target, off) = match rest.split_once('+') {
                Some((t, o)) => {
                    let off = parse_int(o).ok_or_else(|| format!("invalid probe offset '{o}'"))?;
                    (t, off)
                }
                None => (rest, 0),
            };
            if target.starts_with("0x") {
                let a = parse_int(target).ok_or_else(|| format!("invalid address '{target}'"))?;
                return Ok(ProbeSpec::Kprobe {
                    target: KprobeTarget::Address(a),
                    offset: off,
                });
            }
            if !valid_name(target) {
                return Err(format!("invalid kprobe function name '{target}'"));
            }
            if off != 0 && target.contains(['*', '?']) {
                return Err("an offset cannot be combined with a wildcard".into());
            }
            Ok(ProbeSpec::Kprobe {
                target: KprobeTarget::Function(target.to_string()),
                offset: off,
            })
        }
        "kretprobe" | "kr" => {
            if !valid_name(rest) {
                return Err(format!("invalid kretprobe function name '{rest}'"));
            }
            Ok(ProbeSpec::Kretprobe {
                function: rest.to_string(),
            })
        }
        "interval" | "i" | "profile" | "p" => {
            let full = if kind.len() == 1 {
                if kind == "i" { "interval" } else { "profile" }
            } else {
                kind
            };
            let Some((unit, n)) = rest.split_once(':') else {
                return Err(format!(
                    "{full} probes take a unit and a count, e.g. '{full}:ms:100'"
                ));
            };
            let unit = match unit {
                "s" => RateUnit::S,
                "ms" => RateUnit::Ms,
                "us" => RateUnit::Us,
                "hz" => RateUnit::Hz,
                _ => {
                    return Err(format!(
                        "invalid {full} unit '{unit}' (expected s, ms, us or hz)"
                    ));
                }
            };
            let value = match parse_int(n) {
                Some(v) if v > 0 => v,
                _ => return Err(format!("invalid {full} count '{n}' (a positive integer)")),
            };
            if unit.period_ns(value) < MIN_PERIOD_NS {
                return Err(format!(
                    "{full}:{}:{value} fires more than 100000 times a second, the limit \
                     (as in bpftrace, whose perf events the kernel refuses above 100000 Hz \
                     and runs at most every 10 us)",
                    unit.name()
                ));
            }
            Ok(if full == "interval" {
                ProbeSpec::Interval { unit, value }
            } else {
                ProbeSpec::Profile { unit, value }
            })
        }
        "watchpoint" | "w" => {
            let parts: Vec<&str> = rest.split(':').collect();
            let [addr, len, mode] = parts[..] else {
                return Err(
                    "watchpoint probes look like 'watchpoint:ADDR:LEN:MODE', e.g. 'watchpoint:0xffffffff81000000:8:w'"
                        .into(),
                );
            };
            let addr =
                parse_int(addr).ok_or_else(|| format!("invalid watchpoint address '{addr}'"))?;
            let len = match parse_int(len) {
                Some(l @ (1 | 2 | 4 | 8)) => l as u8,
                _ => return Err(format!("invalid watchpoint length '{len}' (1, 2, 4 or 8)")),
            };
            let mode = match mode {
                "r" => WatchMode::Read,
                "w" => WatchMode::Write,
                "rw" | "wr" => WatchMode::ReadWrite,
                _ => return Err(format!("invalid watchpoint mode '{mode}' (r, w or rw)")),
            };
            Ok(ProbeSpec::Watchpoint { addr, len, mode })
        }
        "vmm" => {
            if !valid_name(rest) || rest.contains(['*', '?']) {
                return Err(format!("invalid vmm event name '{rest}'"));
            }
            Ok(ProbeSpec::Vmm {
                event: rest.to_string(),
            })
        }
        "tracepoint" | "t" => {
            let Some((system, event)) = rest.split_once(':') else {
                return Err(
                    "tracepoint probes look like 'tracepoint:SYSTEM:EVENT', e.g. 'tracepoint:kvm:kvm_exit'"
                        .into(),
                );
            };
            if !valid_name(system) || !valid_name(event) {
                return Err(format!("invalid tracepoint '{system}:{event}'"));
            }
            Ok(ProbeSpec::Tracepoint {
                system: system.to_string(),
                event: event.to_string(),
            })
        }
        "uprobe" | "u" | "uretprobe" | "ur" | "usdt" | "U" | "software" | "s" | "hardware"
        | "h" | "kfunc" | "f" | "kretfunc" | "fr" | "rawtracepoint" | "rt" | "iter" => {
            Err(format!(
                "probe type '{kind}' is not supported (supported: BEGIN, END, kprobe, kretprobe, interval, profile, watchpoint, vmm, tracepoint)"
            ))
        }
        _ => Err(format!("unknown probe type '{kind}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_parsing() {
        assert_eq!(
            parse_probe("kprobe:f+0x10").unwrap(),
            ProbeSpec::Kprobe {
                target: KprobeTarget::Function("f".into()),
                offset: 16
            }
        );
        assert_eq!(
            parse_probe("kprobe:0x10").unwrap(),
            ProbeSpec::Kprobe {
                target: KprobeTarget::Address(16),
                offset: 0
            }
        );
        assert!(parse_probe("kprobe:").is_err());
        assert!(parse_probe("kprobe:f+zz").is_err());
        assert!(parse_probe("kretprobe:f+1").is_err());
        assert!(parse_probe("BEGINX").is_err());
    }
}
