//! The benchmark's numbers and how they are shown: statistics, the Markdown
//! report (tables in the style of the LTTng-Xen thesis: time, % of
//! baseline, sigma) and SVG bar charts. Kept apart from running the matrix.

use super::{Config, Workload};
use qemu_guest::LaunchConfig;
use std::fmt::Write as _;

/// One run of one workload under one configuration.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub workload: String,
    pub config: Config,
    /// Host wall time from handing the workload to the guest to its exit.
    pub secs: f64,
    /// Events the probe counted (after its predicate), by vmprobe, GDB or
    /// the guest kernel.
    pub hits: Option<u64>,
    /// Times the guest stopped at a breakpoint (vmprobe, GDB).
    pub stops: Option<u64>,
}

/// Geometric mean and relative standard deviation of repeated times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub geomean: f64,
    /// Sample standard deviation over the arithmetic mean, in percent.
    pub sigma_pct: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let n = values.len();
        if n == 0 {
            return Stats {
                geomean: f64::NAN,
                sigma_pct: f64::NAN,
                n,
            };
        }
        let geomean = (values.iter().map(|v| v.ln()).sum::<f64>() / n as f64).exp();
        let mean = values.iter().sum::<f64>() / n as f64;
        let sigma_pct = if n > 1 {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            var.sqrt() / mean * 100.0
        } else {
            0.0
        };
        Stats {
            geomean,
            sigma_pct,
            n,
        }
    }
}

/// Overhead at one probe rate (busy loop with a null system call every
/// `every` rounds).
#[derive(Clone, Debug)]
pub struct RateRow {
    pub target_rate: u64,
    pub every: u64,
    pub hits: u64,
    pub base: Stats,
    pub probed: Stats,
}

/// What the numbers were measured on.
pub struct Machine {
    pub lines: Vec<String>,
}

impl Machine {
    pub fn describe(cfg: &LaunchConfig, kernel: &str) -> Machine {
        let cmd_line = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default()
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        Machine {
            lines: vec![
                format!(
                    "Host: {cpu}, {cores} cores, {mem_gib:.0} GiB; {}",
                    cmd_line("uname", &["-sr"])
                ),
                format!(
                    "QEMU: `{}` ({}), accel {:?}, {} vCPU, {} MiB",
                    cfg.qemu.display(),
                    cmd_line(&cfg.qemu.to_string_lossy(), &["--version"]),
                    cfg.accel,
                    cfg.vcpus,
                    cfg.memory_mib
                ),
                format!("Guest kernel: Debian linux-image-{kernel}, KASLR on"),
                format!("GDB: {}", cmd_line("gdb", &["--version"])),
                format!("vmprobe {}", env!("CARGO_PKG_VERSION")),
            ],
        }
    }
}

fn per_config<'a>(
    samples: &'a [Measurement],
    workload: &str,
    config: Config,
) -> Vec<&'a Measurement> {
    samples
        .iter()
        .filter(|m| m.workload == workload && m.config == config)
        .collect()
}

fn stats_for(samples: &[Measurement], workload: &str, config: Config) -> Stats {
    let secs: Vec<f64> = per_config(samples, workload, config)
        .iter()
        .map(|m| m.secs)
        .collect();
    Stats::of(&secs)
}

/// Hits of a configuration, if every repetition counted the same.
fn hits_for(samples: &[Measurement], workload: &str, config: Config) -> Option<String> {
    let hits: Vec<u64> = per_config(samples, workload, config)
        .iter()
        .filter_map(|m| m.hits)
        .collect();
    let first = *hits.first()?;
    Some(if hits.iter().all(|&h| h == first) {
        first.to_string()
    } else {
        let min = hits.iter().min().expect("non-empty");
        let max = hits.iter().max().expect("non-empty");
        format!("{min}-{max}")
    })
}

/// The report's title, command line and machine.
pub fn header(machine: &Machine, command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# vmprobe bench report\n");
    let _ = writeln!(md, "Generated by `{command}`.\n");
    for l in &machine.lines {
        let _ = writeln!(md, "- {l}");
    }
    md
}

pub fn render(
    machine: &Machine,
    command: &str,
    workloads: &[Workload],
    samples: &[Measurement],
    rates: &[RateRow],
    reps: u32,
) -> String {
    let mut md = header(machine, command);
    let _ = writeln!(
        md,
        "\nEach cell: geometric mean of {reps} runs, interleaved across configurations; \
         time is host wall time from handing the workload to the guest to its exit; \
         sigma is the standard deviation over the mean. Per-hit cost is \
         (time - time of (0)) / hits.\n"
    );
    for w in workloads {
        let base = stats_for(samples, w.name, Config::Baseline);
        let _ = writeln!(md, "## {}\n", w.name);
        let filter = w
            .filter
            .as_ref()
            .map(|f| format!(" /{}/", f.predicate))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "Workload: `{}`; probed function: `{}`{filter}.\n",
            w.command, w.function
        );
        let _ = writeln!(
            md,
            "| configuration | time (s) | % of (0) | sigma | events | stops | per-hit cost | probes/s |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for config in Config::ALL {
            let s = stats_for(samples, w.name, config);
            if s.n == 0 {
                continue;
            }
            let hits = hits_for(samples, w.name, config);
            // Cost is per breakpoint stop (a filtered-out call costs as
            // much as a counted one); the in-guest probe has no stops, so
            // its cost is per event.
            let stop_count = per_config(samples, w.name, config)
                .iter()
                .filter_map(|m| m.stops.or(m.hits))
                .max()
                .unwrap_or(0);
            let (cost, rate) = if stop_count > 0 && config != Config::Baseline {
                let cost = (s.geomean - base.geomean) / stop_count as f64;
                (
                    format_duration(cost),
                    format!("{:.0}", stop_count as f64 / s.geomean),
                )
            } else {
                (String::new(), String::new())
            };
            let stops = per_config(samples, w.name, config)
                .iter()
                .filter_map(|m| m.stops)
                .max()
                .map(|n| n.to_string())
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {:.3} | {:.1}% | {:.1}% | {} | {stops} | {cost} | {rate} |",
                config.label(),
                s.geomean,
                s.geomean / base.geomean * 100.0,
                s.sigma_pct,
                hits.unwrap_or_default(),
            );
        }
        let ours = per_config(samples, w.name, Config::Aggregate);
        let theirs = per_config(samples, w.name, Config::InGuest);
        if let (Some(a), Some(b)) = (
            ours.first().and_then(|m| m.hits),
            theirs.first().and_then(|m| m.hits),
        ) {
            let verdict = if a == b { "equal" } else { "DIFFERENT" };
            let _ = writeln!(
                md,
                "\nEvents counted by vmprobe (3): {a}; by the guest kernel (6): {b}: {verdict}.",
            );
        }
        let _ = writeln!(md, "\n![{0}]({0}.svg)\n", w.name);
    }
    if !rates.is_empty() {
        let _ = writeln!(md, "## Overhead at fixed probe rates\n");
        let _ = writeln!(
            md,
            "Workload: `vmprobe-mix` (busy arithmetic with a `getppid` every N rounds, N chosen \
             from a calibration run so that the unprobed program makes about the target number \
             of calls per second); probe: `kprobe:__x64_sys_getppid {{ @ = count(); }}`.\n"
        );
        let _ = writeln!(
            md,
            "| target rate | rounds per call | hits | rate without probe | time without (s) | time with (s) | overhead |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
        for r in rates {
            let _ = writeln!(
                md,
                "| {}/s | {} | {} | {:.0}/s | {:.3} | {:.3} | {:.0}% |",
                r.target_rate,
                r.every,
                r.hits,
                r.hits as f64 / r.base.geomean,
                r.base.geomean,
                r.probed.geomean,
                (r.probed.geomean / r.base.geomean - 1.0) * 100.0
            );
        }
        let _ = writeln!(
            md,
            "\nVProbes (VMware, hardware virtualization, probes compiled into the VMM) reported \
             3-4.5% throughput loss at 18,000-72,000 probes/s and 6.2% at 144,000 probes/s.\n"
        );
    }
    md
}

fn format_duration(secs: f64) -> String {
    if secs.abs() >= 1e-3 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{:.1} us", secs * 1e6)
    }
}

/// A horizontal bar chart of each configuration's time as a multiple of
/// (0), on a log scale (the multiples span 1x to thousands).
const BAR_COLOUR: &str = "#4a7ab5";

pub fn chart(workload: &str, samples: &[Measurement]) -> String {
    let base = stats_for(samples, workload, Config::Baseline).geomean;
    let rows: Vec<(Config, f64)> = Config::ALL
        .iter()
        .filter_map(|&c| {
            let s = stats_for(samples, workload, c);
            (s.n > 0).then(|| (c, s.geomean / base))
        })
        .collect();
    let max_log = rows
        .iter()
        .map(|(_, r)| r.max(1.0).log10())
        .fold(1.0f64, f64::max)
        .ceil();
    let (label_w, bar_w, row_h) = (300.0, 420.0, 26.0);
    let height = 50.0 + row_h * rows.len() as f64 + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        label_w + bar_w + 120.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{} - time as a multiple of (0), log scale</text>"#,
        xml_escape(workload)
    );
    for (i, (config, ratio)) in rows.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        let w = (ratio.max(1.0).log10() / max_log * bar_w).max(1.0);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}">{}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{}" fill="{BAR_COLOUR}"/><text x="{}" y="{}">{:.2}x</text>"#,
            y + 15.0,
            xml_escape(config.label()),
            row_h - 8.0,
            label_w + w + 6.0,
            y + 15.0,
            ratio
        );
    }
    for k in 0..=(max_log as u32) {
        let x = label_w + f64::from(k) / max_log * bar_w;
        let y = 40.0 + row_h * rows.len() as f64 + 12.0;
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{y}" text-anchor="middle">{}x</text>"#,
            10u64.pow(k)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn csv(samples: &[Measurement]) -> String {
    let mut out = String::from("workload,configuration,seconds,hits\n");
    for m in samples {
        let _ = writeln!(
            out,
            "{},{},{:.6},{}",
            m.workload,
            m.config.label(),
            m.secs,
            m.hits.map(|h| h.to_string()).unwrap_or_default()
        );
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_mean_and_sigma() {
        let s = Stats::of(&[1.0, 4.0, 16.0]);
        assert!((s.geomean - 4.0).abs() < 1e-12);
        // mean 7, sample variance ((36+9+81)/2) = 63
        assert!((s.sigma_pct - 63f64.sqrt() / 7.0 * 100.0).abs() < 1e-9);
        assert_eq!(Stats::of(&[2.0]).sigma_pct, 0.0);
        assert!(Stats::of(&[]).geomean.is_nan());
    }

    fn m(config: Config, secs: f64, hits: Option<u64>) -> Measurement {
        Measurement {
            workload: "w".into(),
            config,
            secs,
            hits,
            stops: hits.filter(|_| config != Config::InGuest),
        }
    }

    #[test]
    fn report_rows_ratios_and_per_hit_cost() {
        let samples = vec![
            m(Config::Baseline, 1.0, None),
            m(Config::Baseline, 1.0, None),
            m(Config::Aggregate, 3.0, Some(1000)),
            m(Config::Aggregate, 3.0, Some(1000)),
            m(Config::InGuest, 1.1, Some(1000)),
        ];
        let w = Workload {
            name: "w",
            command: "true".into(),
            setup: None,
            function: "f",
            filter: None,
        };
        let md = render(
            &Machine { lines: vec![] },
            "vmprobe bench",
            &[w],
            &samples,
            &[],
            2,
        );
        assert!(
            md.contains("| (3) probes firing, in-memory count | 3.000 | 300.0% | 0.0% | 1000 | 1000 | 2.00 ms | 333 |"),
            "{md}"
        );
        assert!(
            md.contains("| (0) no vmprobe | 1.000 | 100.0% | 0.0% |  |  |  |  |"),
            "{md}"
        );
        assert!(
            md.contains(
                "Events counted by vmprobe (3): 1000; by the guest kernel (6): 1000: equal"
            ),
            "{md}"
        );
        let svg = chart("w", &samples);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("3.00x") && svg.contains("1.00x"), "{svg}");
    }
}
