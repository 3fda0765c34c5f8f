//! Finding tracefs, listing tracepoints, reading their formats.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;
use crate::format::EventFormat;

/// Where tracefs is normally mounted, in order of preference.
pub const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A tracepoint's name: `system:event`, e.g. `sched:sched_switch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TracepointName {
    pub system: String,
    pub event: String,
}

impl TracepointName {
    pub fn new(system: &str, event: &str) -> Result<TracepointName, Error> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                && s != "."
                && s != ".."
        };
        if !ok(system) || !ok(event) {
            // Also keeps the name from walking out of tracefs (`../`).
            return Err(Error::BadTracepointName(format!("{system}:{event}")));
        }
        Ok(TracepointName {
            system: system.to_string(),
            event: event.to_string(),
        })
    }
}

impl FromStr for TracepointName {
    type Err = Error;

    /// Accepts `system:event` (bpftrace, perf) and `system/event` (tracefs).
    fn from_str(s: &str) -> Result<Self, Error> {
        let (sys, ev) = s
            .split_once(':')
            .or_else(|| s.split_once('/'))
            .ok_or_else(|| Error::BadTracepointName(s.to_string()))?;
        TracepointName::new(sys, ev)
    }
}

impl fmt::Display for TracepointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.system, self.event)
    }
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs at [`TRACEFS_PATHS`]; if it is mounted at neither and we
    /// are root, mounts it at `/sys/kernel/tracing`.
    pub fn open() -> Result<Tracefs, Error> {
        if let Some(t) = Self::find() {
            return Ok(t);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            // tracefs is root-only (0700) by default: say so rather than
            // "not mounted".
            let denied = TRACEFS_PATHS.iter().any(|p| {
                std::fs::metadata(Path::new(p).join("events"))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
            });
            return Err(Error::TracefsUnavailable {
                reason: if denied {
                    "permission denied (tracefs is readable by root only)".into()
                } else {
                    "not mounted, and mounting it needs root".into()
                },
            });
        }
        mount_tracefs(Path::new(TRACEFS_PATHS[0]))?;
        Self::find().ok_or_else(|| Error::TracefsUnavailable {
            reason: format!("mounted at {} but it has no events/", TRACEFS_PATHS[0]),
        })
    }

    /// Tracefs at [`TRACEFS_PATHS`], if mounted there (a mount shows `events/`;
    /// the bare mount point is an empty directory).
    pub fn find() -> Option<Tracefs> {
        TRACEFS_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
            .map(Tracefs::at)
    }

    /// Tracefs (or a copy of its layout) at `root`, unchecked.
    pub fn at(root: impl Into<PathBuf>) -> Tracefs {
        Tracefs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every tracepoint the kernel offers (`available_events`), sorted.
    pub fn available_events(&self) -> Result<Vec<TracepointName>, Error> {
        let path = self.root.join("available_events");
        let text = read(&path)?;
        let mut v: Vec<_> = text
            .lines()
            .filter_map(|l| l.trim().parse::<TracepointName>().ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// The parsed `events/<system>/<event>/format`.
    pub fn format(&self, tp: &TracepointName) -> Result<EventFormat, Error> {
        let dir = self.root.join("events").join(&tp.system).join(&tp.event);
        let path = dir.join("format");
        if !path.exists() {
            return Err(Error::UnknownTracepoint(tp.to_string()));
        }
        let text = read(&path)?;
        EventFormat::parse(&text).map_err(|source| Error::Format { path, source })
    }

    /// The tracepoint's id (`events/<system>/<event>/id`): what perf wants
    /// in `perf_event_attr.config`.
    pub fn id(&self, tp: &TracepointName) -> Result<u64, Error> {
        let path = self
            .root
            .join("events")
            .join(&tp.system)
            .join(&tp.event)
            .join("id");
        if !path.exists() {
            return Err(Error::UnknownTracepoint(tp.to_string()));
        }
        let text = read(&path)?;
        text.trim().parse().map_err(|_| Error::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
        })
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn mount_tracefs(at: &Path) -> Result<(), Error> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let target =
        CString::new(at.as_os_str().as_bytes()).map_err(|_| Error::TracefsUnavailable {
            reason: "mount point has a NUL".into(),
        })?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call;
    // tracefs takes no mount data, so `data` may be null.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::TracefsUnavailable {
            reason: format!("mounting tracefs at {} failed: {e}", at.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t: TracepointName = "sched:sched_switch".parse().unwrap();
        assert_eq!(
            (t.system.as_str(), t.event.as_str()),
            ("sched", "sched_switch")
        );
        assert_eq!(t.to_string(), "sched:sched_switch");
        assert_eq!(
            "kvm/kvm_exit".parse::<TracepointName>().unwrap().event,
            "kvm_exit"
        );
        for bad in ["sched", ":x", "x:", "../x:y", "a:..", "a:b/c", "a b:c", ""] {
            assert!(bad.parse::<TracepointName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fake_tracefs_tree() {
        let d = std::env::temp_dir().join(format!("ht-tracefs-{}", std::process::id()));
        let ev = d.join("events/sched/sched_switch");
        std::fs::create_dir_all(&ev).unwrap();
        std::fs::write(
            ev.join("format"),
            include_str!("../tests/formats/sched_sched_switch.format"),
        )
        .unwrap();
        std::fs::write(
            d.join("available_events"),
            "sched:sched_switch\nkvm:kvm_exit\njunk\n",
        )
        .unwrap();
        let t = Tracefs::at(&d);
        let evs = t.available_events().unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].to_string(), "kvm:kvm_exit");
        let f = t.format(&evs[1]).unwrap();
        assert_eq!(f.id, 372);
        assert!(matches!(t.id(&evs[1]), Err(Error::UnknownTracepoint(_))));
        std::fs::write(ev.join("id"), "372\n").unwrap();
        assert_eq!(t.id(&evs[1]).unwrap(), 372);
        assert!(matches!(
            t.format(&evs[0]),
            Err(Error::UnknownTracepoint(_))
        ));
        std::fs::remove_dir_all(&d).ok();
    }
}
