//! `--metrics ADDR:PORT`: a real Prometheus server (Debian's `prometheus`,
//! installed by `.ci/install-deps`) scrapes a run on the default guest, and
//! what its HTTP API answers is compared with the guest kernel's own count
//! (a kprobe event in the guest) and with the histogram vmprobe prints.
//!
//! The run must still be serving when Prometheus scrapes after the
//! workload: the workload ends with a marker line and a long `sleep`; the
//! test waits for the marker, waits for a scrape that began after it, asks
//! Prometheus, then ends the run with SIGINT (END runs and the maps print,
//! status 0, as after Ctrl-C). `attach` would do as well; `run` keeps the
//! test to one process.

mod support;
use rustix::process::{Pid, Signal};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use support::*;

/// Prometheus' configuration, as README's Prometheus section shows it
/// (with `TARGET` there `127.0.0.1:9464`); only the target differs.
const SCRAPE_CONFIG: &str = "\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: vmprobe
    static_configs:
      - targets: ['TARGET']
";

/// One Prometheus server on loopback, its storage in a temporary directory;
/// killed (by its own pid) when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, SCRAPE_CONFIG.replace("TARGET", target)).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's package; .ci/install-deps installs it)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let start = Instant::now();
        while get(&p.addr, "/-/ready").is_none_or(|(code, _)| code != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus not ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query's result vector: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", percent(promql));
        let (code, body) = get(&self.addr, &path).expect("prometheus answers");
        assert_eq!(code, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The one value of an instant query.
    fn one(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: {r:?}");
        r.first().map(|s| s.1)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    get_with(addr, path, "*/*")
}

fn get_accept(addr: &str, path: &str, accept: &str) -> (u16, String) {
    get_with(addr, path, accept).expect("an answer")
}

fn get_with(addr: &str, path: &str, accept: &str) -> Option<(u16, String)> {
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        c,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Counts the workload's 1-byte writes between the markers (as the guest's
/// kprobe event does), and every write's size there as a histogram.
fn program() -> String {
    format!(
        "kprobe:ksys_write /arg2 == {WINDOW_START}/ {{ @on = sum(1); }}\n\
         kprobe:ksys_write /arg2 == {WINDOW_END}/ {{ @on = sum(-1); }}\n\
         kprobe:ksys_write /arg2 == 1 && @on == 1/ {{ @ksys_write = count(); }}\n\
         kprobe:ksys_write /@on == 1/ {{ @size = hist(arg2); @bycomm[comm] = count(); \
           @maxsize = max(arg2); @avgsize = avg(arg2); }}\n\
         END {{ clear(@on); }}"
    )
}

/// The marker the workload prints once the window has closed and the
/// guest's trace is out; `$((6*7))` keeps the command line itself from
/// matching.
const MARKER: &str = "scrape-42-now";

/// bpftrace's printed `hist()` of `@name` as (lower bound, count) per
/// printed bucket: `(..., 0)` is -1, `[0]` 0, `[4K, 8K)` 4096.
fn printed_hist(stdout: &str, name: &str) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    let mut lines = stdout.lines().skip_while(|l| *l != format!("@{name}: "));
    lines
        .next()
        .unwrap_or_else(|| panic!("no @{name} in:\n{stdout}"));
    let num = |t: &str| -> i64 {
        let t = t.trim();
        let (digits, mult) = match t.chars().last() {
            Some('K') => (&t[..t.len() - 1], 1 << 10),
            Some('M') => (&t[..t.len() - 1], 1 << 20),
            Some('G') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        digits.parse::<i64>().unwrap() * mult
    };
    for l in lines.take_while(|l| !l.trim().is_empty()) {
        let (range, rest) = l.split_at(l.find([')', ']']).unwrap() + 1);
        let count = rest.split('|').next().unwrap().trim().parse().unwrap();
        let low = if range.starts_with("(...") {
            -1
        } else {
            num(range[1..].split([',', ']']).next().unwrap())
        };
        out.push((low, count));
    }
    out
}

#[test]
fn prometheus_scrapes_counters_histograms_and_labels() {
    scrape_a_run(&["--backend", "gdb"], 0.0);
}

/// Inside QEMU the maps are the plugin's, as vmprobe last copied them
/// (every 500 ms): a scrape 2 s after the marker has the final copy.
#[test]
fn the_plugin_backends_maps_are_scraped_as_copied() {
    let Some(qemu) = qemu10() else { return };
    plugin_library();
    let qemu = qemu.to_string_lossy().into_owned();
    scrape_a_run(&["--backend", "plugin", "--qemu", &qemu], 2.0);
}

fn scrape_a_run(backend: &[&str], settle: f64) {
    let n = 30;
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let prometheus = Prometheus::start(&target);
    let dd = |bs: u32, count: u32| {
        format!("dd if=/dev/zero of=/dev/null bs={bs} count={count} 2>/dev/null")
    };
    let inner = format!("{} && {} && {}", dd(1, n), dd(100, 3), dd(3000, 2));
    let workload = format!(
        "{}; echo scrape-$((6*7))-now; sleep 600",
        ground_truth_workload(&inner)
    );
    let (mut child, stdout, stderr) = spawn_collected(
        vmprobe()
            .args(["run", "--console", "--stats", "--metrics", &target])
            .args(backend)
            .args(["-e", &program(), "--", &workload]),
    );
    stderr.wait_for(MARKER, RUN_LIMIT);
    let marked = unix_now() + settle;
    let truth = ground_truth_hits(&stderr.text());
    // A scrape that began after the marker has the window's final counts.
    let start = Instant::now();
    while prometheus
        .one("timestamp(ksys_write_total)")
        .is_none_or(|t| t <= marked)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no scrape after the workload; up: {:?}",
            prometheus.query("up")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let writes = prometheus.one("ksys_write_total").unwrap();
    let buckets = prometheus.query("size_bucket");
    let bycomm = prometheus.query("bycomm_total");
    let maxsize = prometheus.one("maxsize");
    let avg = (
        prometheus.one("avgsize_sum").unwrap(),
        prometheus.one("avgsize_count").unwrap(),
    );
    let up = prometheus.one("up{job=\"vmprobe\"}");
    let health = |q: &str| prometheus.one(&format!("{q}{{guest=\"vm0\"}}"));
    let (hits, served, lost) = (
        health("vmprobe_hits_total"),
        health("vmprobe_service_seconds_count"),
        health("vmprobe_lost_events_total"),
    );
    let errors = prometheus.one("vmprobe_handler_errors_total");
    let build = prometheus.query("vmprobe_build_info");
    // Prometheus' own 0.0.4 text, when a scraper asks for it.
    let (code, text004) = get_accept(&target, "/metrics", "text/plain;version=0.0.4");
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    let status = wait_for_exit(&mut child, RUN_LIMIT);
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert!(status.success(), "{stderr}");
    assert_eq!(up, Some(1.0));

    // The counter is the guest kernel's own count, and what vmprobe prints.
    assert_eq!(
        writes, truth as f64,
        "ksys_write_total vs the guest's kprobe event"
    );
    assert_eq!(map_value(&stdout, "ksys_write"), truth);
    assert!(truth >= n as u64, "{truth}");

    // Every `le` bucket holds what the printed buckets up to it hold.
    let printed = printed_hist(&stdout, "size");
    let total: u64 = printed.iter().map(|b| b.1).sum();
    assert_eq!(
        buckets.len(),
        34,
        "one series per hist() bucket: {buckets:?}"
    );
    for (labels, cumulative) in &buckets {
        let le = &labels["le"];
        let want: u64 = match le.as_str() {
            "+Inf" => total,
            le => {
                let le: f64 = le.parse().unwrap();
                printed
                    .iter()
                    .filter(|b| b.0 as f64 <= le)
                    .map(|b| b.1)
                    .sum()
            }
        };
        assert_eq!(*cumulative, want as f64, "le={le}: printed {printed:?}");
    }
    // 30 (or more) 1-byte writes, 3 of 100, 2 of 3000, the marker of 4242.
    assert!(printed.contains(&(64, 3)), "{printed:?}");
    assert!(printed.contains(&(2048, 2)), "{printed:?}");
    assert!(printed.contains(&(4096, 1)), "{printed:?}");

    // `@bycomm[comm]`: the label is named after the key.
    let dd_writes = bycomm
        .iter()
        .find(|(l, _)| l.get("comm").map(String::as_str) == Some("dd"))
        .unwrap_or_else(|| panic!("no comm=\"dd\" series: {bycomm:?}"));
    assert_eq!(dd_writes.1, keyed_str(&stdout, "bycomm", "dd") as f64);

    // max() is a gauge; avg() a _sum/_count pair whose quotient vmprobe prints.
    assert_eq!(maxsize, Some(map_value(&stdout, "maxsize") as f64));
    assert_eq!(maxsize, Some(WINDOW_START as f64));
    assert_eq!(avg.1, total as f64, "avg's count is the histogram's");
    assert_eq!(
        (avg.0 / avg.1).floor(),
        map_value(&stdout, "avgsize") as f64
    );

    // vmprobe's health.
    assert_eq!(errors, Some(0.0));
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build[0].1, 1.0);
    if backend.contains(&"gdb") {
        // Every write in the window was a hit; --stats counts the whole run.
        let final_hits: f64 = stderr
            .split(" backend, workload ")
            .nth(1)
            .and_then(|r| r.split(", ").nth(1))
            .and_then(|h| h.strip_suffix(" hits"))
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("no hits in --stats:\n{stderr}"));
        let hits = hits.unwrap();
        assert!(
            hits >= (truth + 7) as f64 && hits <= final_hits,
            "{hits} of {final_hits}"
        );
        assert!(served.unwrap() >= hits, "{served:?}");
        assert_eq!(lost, Some(0.0));
    } else {
        // Inside QEMU hits are counted there, and copied with the maps:
        // the copy that had the window's writes had the hits too.
        let final_hits: f64 = stderr
            .split(" backend, workload ")
            .nth(1)
            .and_then(|r| r.split(", ").nth(1))
            .and_then(|h| h.strip_suffix(" hits"))
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("no hits in --stats:\n{stderr}"));
        let hits = hits.expect("vmprobe_hits_total inside QEMU");
        assert!(
            hits >= truth as f64 && hits <= final_hits,
            "{hits} of {final_hits}"
        );
        assert_eq!(served, Some(hits), "one service time per hit");
        assert_eq!(lost, Some(0.0));
    }
    assert_eq!(code, 200);
    assert!(
        text004.contains("# TYPE ksys_write_total counter\n"),
        "{text004}"
    );
    assert!(!text004.contains("# EOF"), "{text004}");
    eprintln!(
        "prometheus: ksys_write_total {writes} (guest kernel {truth}), {} size buckets, {} bycomm series, hits {hits:?}",
        buckets.len(),
        bycomm.len()
    );
}

/// `@name[KEY]: N` for a string key.
fn keyed_str(stdout: &str, name: &str, key: &str) -> u64 {
    let line = format!("@{name}[{key}]: ");
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in:\n{stdout}"))
        .trim()
        .parse()
        .unwrap()
}

/// README's scrape configuration is the one this test gives Prometheus.
#[test]
fn readme_shows_the_scrape_config_the_test_uses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = format!(
        "```yaml\n{}```",
        SCRAPE_CONFIG.replace("TARGET", "127.0.0.1:9464")
    );
    assert!(readme.contains(&block), "README lacks:\n{block}");
}

/// `attach` serves a VM started elsewhere; `@w[guest]` is labelled `guest`
/// with the name given in `--vm`.
#[test]
fn attach_serves_a_running_vms_maps_labelled_by_guest() {
    use qemu_guest::{Accel, LaunchConfig, Vm};
    let image = default_guest();
    let kernel = image.kernel.clone();
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    let mut vm = Vm::launch(&cfg).expect("launch");
    boot_through_stub(&mut vm);
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let prometheus = Prometheus::start(&target);
    let spec = format!(
        "prod-db=gdb:unix:{},kernel:{}",
        vm.gdb_socket().display(),
        kernel.display()
    );
    let (mut child, stdout, stderr) = spawn_collected(vmprobe().args([
        "attach",
        "--vm",
        &spec,
        "--metrics",
        &port.to_string(),
        "-e",
        "kprobe:ksys_write /arg2 == 1/ { @w[guest] = count(); }",
    ]));
    stdout.wait_for("Attaching 1 probe", RUN_LIMIT);
    stderr.wait_for(&format!("metrics at http://{target}/metrics"), RUN_LIMIT);
    vm.start_workload("dd if=/dev/zero of=/dev/null bs=1 count=40 2>/dev/null")
        .unwrap();
    assert_eq!(vm.wait_exit(RUN_LIMIT).unwrap(), 0);
    // The guest idles now: a scrape after this has every write.
    let done = unix_now();
    let start = Instant::now();
    while prometheus
        .one("timestamp(w_total)")
        .is_none_or(|t| t <= done)
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no scrape");
        std::thread::sleep(Duration::from_millis(250));
    }
    let series = prometheus.query("w_total");
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    let status = wait_for_exit(&mut child, RUN_LIMIT);
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert!(status.success(), "{stderr}");
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].0["guest"], "prod-db");
    let printed = keyed_str(&stdout, "w", "prod-db");
    assert!(printed >= 40, "{stdout}");
    assert_eq!(series[0].1, printed as f64);
    let _ = vm.shutdown(Duration::from_secs(10));
}

/// A run with no guest serves too; an address other than loopback is said
/// even with -q; what `--otlp` drops is counted at /metrics as it happens.
#[test]
fn otlp_drops_are_counted_and_other_addresses_are_told() {
    let closed = free_port();
    let port = free_port();
    let all = format!("0.0.0.0:{port}");
    let (child, _stdout, stderr) = spawn_collected(vmprobe().args([
        "run",
        "-q",
        "--stats",
        "--duration",
        "4",
        "--metrics",
        &all,
        "--otlp",
        &format!("http://127.0.0.1:{closed}"),
        "-e",
        "interval:ms:50 { @ticks = count(); printf(\"tick\\n\"); }",
    ]));
    stderr.wait_for(
        &format!("vmprobe: metrics at http://{all}/metrics, not loopback"),
        RUN_LIMIT,
    );
    // Scraped on loopback, which 0.0.0.0 includes.
    let local = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let (ticks, dropped) = loop {
        let (code, body) = get_accept(&local, "/metrics", "application/openmetrics-text");
        assert_eq!(code, 200, "{body}");
        let value = |name: &str| -> f64 {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
                .parse()
                .unwrap()
        };
        let (t, d) = (
            value("ticks_total"),
            value("vmprobe_otlp_dropped_events_total"),
        );
        if d >= 5.0 {
            assert!(body.ends_with("# EOF\n"), "{body}");
            break (t, d);
        }
        assert!(start.elapsed() < Duration::from_secs(3), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut child = child;
    let status = wait_for_exit(&mut child, RUN_LIMIT);
    let stderr = stderr.finish();
    assert!(status.success(), "{stderr}");
    // Each tick printed once: every printf is one OTLP event, all dropped.
    let final_dropped: f64 = stderr
        .split("spans sent, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no otlp stats:\n{stderr}"));
    assert!(
        dropped <= final_dropped && ticks >= 1.0,
        "{dropped} {final_dropped}"
    );
}
