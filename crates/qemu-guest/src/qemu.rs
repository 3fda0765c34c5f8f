//! Which QEMU: the version a binary reports, and where `.ci/install-deps`
//! put QEMU 10.0.
//!
//! Debian 12's QEMU is 7.2. QEMU 10.0 (TCG plugins, current gdbstub) comes
//! from bookworm-backports, whose package would replace 7.2 at /usr/bin; so
//! install-deps unpacks it into the cache instead, with a wrapper that points
//! it at its own firmware and modules.

use crate::{Error, Result, cache_dir, io_err};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `VMPROBE_QEMU10` names a QEMU 10 binary to use instead of the cache's.
pub const QEMU10_ENV: &str = "VMPROBE_QEMU10";

/// A QEMU release, as `-version` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl QemuVersion {
    /// Reads `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-...)`.
    pub fn parse(version_output: &str) -> Option<QemuVersion> {
        let rest = version_output
            .lines()
            .find_map(|l| l.split_once("QEMU emulator version "))?
            .1;
        let number = rest
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?;
        let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
        Some(QemuVersion {
            major: parts.next()??,
            minor: parts.next()??,
            micro: parts.next().flatten().unwrap_or(0),
        })
    }

    /// `qemu -version`.
    pub fn of(qemu: &Path) -> Result<QemuVersion> {
        let out = Command::new(qemu)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(qemu))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match QemuVersion::parse(&text) {
            Some(v) if out.status.success() => Ok(v),
            _ => Err(Error::Command {
                command: format!("{} -version", qemu.display()),
                detail: format!(
                    "no version in its output ({}): {}",
                    out.status,
                    text.lines().next().unwrap_or("nothing")
                ),
            }),
        }
    }
}

/// Where install-deps puts QEMU 10.0's wrapper:
/// `CACHE/qemu-10.0/bin/qemu-system-x86_64`.
pub fn qemu10_in(cache: &Path) -> PathBuf {
    cache.join("qemu-10.0/bin/qemu-system-x86_64")
}

/// QEMU 10 on this machine, if any: `$VMPROBE_QEMU10`, else install-deps'
/// copy in the cache, else the system's QEMU if it is a 10 (Debian 13).
/// The first two are not checked beyond existing.
pub fn installed_qemu10() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(QEMU10_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cached = qemu10_in(&cache_dir());
    if cached.is_file() {
        return Some(cached);
    }
    let system = PathBuf::from("qemu-system-x86_64");
    QemuVersion::of(&system)
        .ok()
        .filter(|v| v.major == 10)
        .map(|_| system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_debian_prints_them() {
        let v = |s| QemuVersion::parse(s);
        assert_eq!(
            v("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"),
            Some(QemuVersion {
                major: 10,
                minor: 0,
                micro: 2
            })
        );
        assert_eq!(
            v("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(QemuVersion {
                major: 7,
                minor: 2,
                micro: 22
            })
        );
        assert_eq!(v("QEMU emulator version 9.1").map(|v| v.micro), Some(0));
        assert_eq!(v("qemu-system-x86_64: -version: invalid option"), None);
        assert_eq!(v("QEMU emulator version x.y"), None);
        assert!(
            v("QEMU emulator version 10.0.0").unwrap()
                >= QemuVersion {
                    major: 10,
                    minor: 0,
                    micro: 0
                }
        );
    }
}
