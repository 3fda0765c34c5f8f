//! `vmprobe attach --config FILE`: the service mode's configuration, a
//! TOML file naming the program and the VMs. Everything in it is checked
//! before anything is attached; an error names the file and, where the
//! TOML parser gives it, the line and column.
//!
//! ```toml
//! script = "writes.bt"            # or: program = "kprobe:ksys_write { @c = count(); }"
//! metrics = "127.0.0.1:9100"      # optional, as --metrics
//! otlp = "http://127.0.0.1:4318"  # optional, as --otlp
//!
//! [[vm]]
//! name = "web"
//! qmp = "/run/vms/web.qmp"        # and/or gdb = "unix:/run/vms/web.gdb" (or "127.0.0.1:1234")
//! kernel = "/srv/images/vmlinuz"  # optional, as kernel: in --vm
//!
//! [watch]                         # optional: VMs that appear
//! dir = "/run/vms"                # NAME.qmp (and NAME.gdb) there is VM NAME
//! kernel = "/srv/images/vmlinuz"  # optional
//! ```
//!
//! Relative paths are taken from the file's directory.

use crate::vm_spec::VmSpec;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A service's configuration, checked.
#[derive(Debug)]
pub struct Config {
    pub program: Program,
    pub metrics: Option<SocketAddr>,
    pub otlp: Option<otlp_export::Endpoint>,
    pub vms: Vec<VmSpec>,
    pub watch: Option<Watch>,
}

/// `[watch]`: a directory where each socket `NAME.qmp` that appears is a
/// VM named NAME, reached through that QMP monitor (and `NAME.gdb`, if
/// there, as its stub).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub dir: PathBuf,
    /// The kernel image of the VMs found there (else the default guest's).
    pub kernel: Option<PathBuf>,
}

/// Where the probe program is.
#[derive(Debug, PartialEq, Eq)]
pub enum Program {
    File(PathBuf),
    Text(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// What the TOML parser or a field's check refused, where it is.
    #[error("{path}:{line}:{column}: {message}", path = .path.display())]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}", path = .path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    script: Option<PathBuf>,
    program: Option<String>,
    #[serde(default, deserialize_with = "metrics_addr")]
    metrics: Option<SocketAddr>,
    #[serde(default, deserialize_with = "otlp_endpoint")]
    otlp: Option<otlp_export::Endpoint>,
    #[serde(default)]
    vm: Vec<RawVm>,
    watch: Option<RawWatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    dir: PathBuf,
    kernel: Option<PathBuf>,
}

/// One `[[vm]]`: the keys of `--vm NAME=KEY:VALUE,...` as fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    gdb: Option<String>,
    qmp: Option<PathBuf>,
    plugin: Option<PathBuf>,
    log: Option<PathBuf>,
    kernel: Option<PathBuf>,
}

fn metrics_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    crate::metrics::parse_addr(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn otlp_endpoint<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<otlp_export::Endpoint>, D::Error> {
    let text = String::deserialize(d)?;
    crate::otlp::parse_endpoint(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("'{text}': {e}")))
}

/// `attach --config`: the arguments the configuration gives, checked in
/// full before any VM is touched.
pub fn apply(mut args: crate::AttachArgs) -> anyhow::Result<crate::AttachArgs> {
    let Some(path) = &args.config else {
        return Ok(args);
    };
    let config = load(path)?;
    match config.program {
        Program::File(f) => args.file = Some(f),
        Program::Text(t) => args.program = Some(t),
    }
    args.metrics = config.metrics;
    args.otlp = config.otlp;
    args.vm = config.vms;
    args.watch = config.watch;
    Ok(args)
}

/// Reads and checks the configuration at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Checks a configuration's text; `path` names it in errors and is where
/// relative paths start.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let raw: Raw = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            ConfigError::At {
                path: path.to_path_buf(),
                line,
                column,
                message: one_line(e.message()),
            }
        }
        None => invalid(one_line(e.message())),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let program = match (raw.script, raw.program) {
        (Some(script), None) => Program::File(base.join(script)),
        (None, Some(text)) => Program::Text(text),
        (Some(_), Some(_)) => {
            return Err(invalid("give `script` or `program`, not both".into()));
        }
        (None, None) => {
            return Err(invalid(
                "no program: give `script = \"FILE\"` or `program = \"...\"`".into(),
            ));
        }
    };
    let watch = raw.watch.map(|w| Watch {
        dir: base.join(w.dir),
        kernel: w.kernel.map(|k| base.join(k)),
    });
    if raw.vm.is_empty() && watch.is_none() {
        return Err(invalid(
            "no VM: add a [[vm]] with a name and gdb or qmp, or a [watch] dir".into(),
        ));
    }
    if let Some(w) = &watch
        && !w.dir.is_dir()
    {
        return Err(invalid(format!(
            "[watch] dir {}: not a directory",
            w.dir.display()
        )));
    }
    let mut vms: Vec<VmSpec> = Vec::new();
    for (i, vm) in raw.vm.into_iter().enumerate() {
        let spec = vm_spec(vm, base).map_err(|e| invalid(format!("[[vm]] {}: {e}", i + 1)))?;
        if vms.iter().any(|v| v.name == spec.name) {
            return Err(invalid(format!("two VMs named '{}'", spec.name)));
        }
        vms.push(spec);
    }
    Ok(Config {
        program,
        metrics: raw.metrics,
        otlp: raw.otlp,
        vms,
        watch,
    })
}

/// A `[[vm]]` as `--vm` would give it, with the same checks.
fn vm_spec(vm: RawVm, base: &Path) -> Result<VmSpec, String> {
    let mut spec = crate::vm_spec::VmSpec::named(&vm.name)?;
    let path = |p: PathBuf| base.join(p).to_string_lossy().into_owned();
    if let Some(gdb) = vm.gdb {
        // A relative unix: path is the file's too; HOST:PORT stays as is.
        let gdb = match gdb.strip_prefix("unix:") {
            Some(p) => format!("unix:{}", path(p.into())),
            None => gdb,
        };
        crate::vm_spec::set_vm_key(&mut spec, "gdb", &gdb)?;
    }
    for (key, value) in [
        ("qmp", vm.qmp),
        ("plugin", vm.plugin),
        ("log", vm.log),
        ("kernel", vm.kernel),
    ] {
        if let Some(v) = value {
            crate::vm_spec::set_vm_key(&mut spec, key, &path(v))?;
        }
    }
    if spec.gdb.is_none() && spec.qmp.is_none() && spec.plugin.is_none() {
        return Err(format!(
            "'{}': no connection: give gdb = \"unix:PATH\" (or \"HOST:PORT\"), qmp = \"PATH\" or plugin = \"PATH\"",
            spec.name
        ));
    }
    Ok(spec)
}

/// The parser's message, which can take several lines, on one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("/etc/vmprobe/svc.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_full_config() {
        let c = parse(
            "script = \"w.bt\"\nmetrics = \"9100\"\n\
             [[vm]]\nname = \"web\"\nqmp = \"web.qmp\"\n\
             [[vm]]\nname = \"db\"\ngdb = \"unix:/run/db.gdb\"\nkernel = \"/k\"\n",
            Path::new("/etc/vmprobe/svc.toml"),
        )
        .unwrap();
        assert_eq!(c.program, Program::File("/etc/vmprobe/w.bt".into()));
        assert_eq!(c.metrics.unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(c.vms[0].qmp, Some("/etc/vmprobe/web.qmp".into()));
        assert_eq!(
            c.vms[1].gdb,
            Some(crate::vm_spec::StubAddr::Unix("/run/db.gdb".into()))
        );
        assert_eq!(c.vms[1].kernel, Some("/k".into()));
    }

    #[test]
    fn a_watched_directory_alone() {
        let c = parse(
            "program = \"x\"\n[watch]\ndir = \"/tmp\"\nkernel = \"k\"\n",
            Path::new("/etc/vmprobe/svc.toml"),
        )
        .unwrap();
        assert!(c.vms.is_empty());
        assert_eq!(
            c.watch,
            Some(Watch {
                dir: "/tmp".into(),
                kernel: Some("/etc/vmprobe/k".into())
            })
        );
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            err("program = \"x\"\n[[vm]]\nname = \"a\"\nqmp = \n"),
            "/etc/vmprobe/svc.toml:4:7: invalid string: expected `\"`, `'`"
        );
        let e = err("program = \"x\"\nbogus = 1\n");
        assert!(
            e.starts_with("/etc/vmprobe/svc.toml:2:1: unknown field `bogus`"),
            "{e}"
        );
        let e = err("program = \"x\"\nmetrics = \"nope\"\n[[vm]]\nname=\"a\"\nqmp=\"q\"\n");
        assert!(e.starts_with("/etc/vmprobe/svc.toml:2:11: "), "{e}");
        assert_eq!(
            err("[[vm]]\nname = \"a\"\nqmp = \"q\"\n"),
            "/etc/vmprobe/svc.toml: no program: give `script = \"FILE\"` or `program = \"...\"`"
        );
        let e = err("program = \"x\"\n[[vm]]\nname = \"a\"\n");
        assert!(e.contains("[[vm]] 1: 'a': no connection"), "{e}");
        let e = err("program = \"x\"\n[[vm]]\nname = \"a b\"\nqmp = \"q\"\n");
        assert!(e.contains("a VM name is letters"), "{e}");
        let e = err("program = \"x\"\n[[vm]]\nname = \"a\"\ngdb = \"10.0.0.1:1\"\n");
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(err("program = \"x\"\n").contains("no VM"));
        let e = err("program = \"x\"\n[watch]\ndir = \"/nonexistent\"\n");
        assert!(
            e.ends_with("[watch] dir /nonexistent: not a directory"),
            "{e}"
        );
        let e = err("program = \"x\"\n[watch]\ndir = \"/tmp\"\nkernal = \"k\"\n");
        assert!(e.contains(":4:1: unknown field `kernal`"), "{e}");
        for e in [err("x = "), err("[[vm]]\nname = 1\n")] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
