//! The default guest's kernel headers, for programs that `#include` them
//! as bpftrace reads the running kernel's from `/lib/modules/$(uname
//! -r)/source` and `build`: Debian's `linux-headers-VERSION` (the build
//! tree: generated headers, `.config`) and `linux-headers-BASE-common`
//! (the source tree's `include/` and `arch/x86/include`), fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into the same cache
//! as the guest's kernel, on first need: building the guest does not
//! fetch them.

use crate::image::{require_tool, unpack};
use crate::{Error, Result, io_err};
use std::path::{Path, PathBuf};

/// A kernel's header trees, as bpftrace's `get_kernel_dirs` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHeaders {
    /// The pristine tree (`/lib/modules/VERSION/source`).
    pub source: PathBuf,
    /// The build tree with the generated headers (`.../build`).
    pub build: PathBuf,
}

/// The two packages of kernel `version` ("6.1.0-57-amd64"): the flavour's
/// and the `-common` one it depends on ("6.1.0-57-common").
fn packages(version: &str) -> Option<(String, String)> {
    let (base, _flavour) = version.rsplit_once('-')?;
    Some((
        format!("linux-headers-{version}"),
        format!("linux-headers-{base}-common"),
    ))
}

fn trees(debs: &Path, version: &str) -> Option<KernelHeaders> {
    let (arch, common) = packages(version)?;
    let src = |pkg: &str| debs.join(format!("{pkg}.root/usr/src/{pkg}"));
    Some(KernelHeaders {
        source: src(&common),
        build: src(&arch),
    })
}

/// The headers of kernel `version` if they were fetched before.
pub fn default_guest_headers(cache: &Path, version: &str) -> Option<KernelHeaders> {
    let debs = cache.join("debs");
    let h = trees(&debs, version)?;
    let stamped = |dir: &Path| {
        dir.ancestors()
            .nth(3)
            .is_some_and(|r| r.join(".unpacked").exists())
    };
    (stamped(&h.source) && stamped(&h.build)).then_some(h)
}

/// The headers of the default guest's kernel `version`, fetched now if
/// they were not before. Concurrent fetches take turns, as guest builds do.
pub fn ensure_default_guest_headers(
    cache: &Path,
    version: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelHeaders> {
    if let Some(h) = default_guest_headers(cache, version) {
        return Ok(h);
    }
    let Some((arch, common)) = packages(version) else {
        return Err(Error::Command {
            command: format!("apt-get download linux-headers-{version}"),
            detail: format!("'{version}' is not a Debian kernel version (BASE-FLAVOUR)"),
        });
    };
    require_tool(
        "apt-get",
        "the default guest's kernel headers are Debian packages; pass --kernel-headers DIR",
    )?;
    require_tool("dpkg-deb", "install dpkg (Debian: apt-get install dpkg)")?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let lock_path = cache.join("headers.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| Error::Io {
        path: lock_path.clone(),
        source: e.into(),
    })?;
    // Each package is unpacked once (its stamp), so a second fetch that
    // waited on the lock finds both done.
    unpack(&debs, &common, progress)?;
    unpack(&debs, &arch, progress)?;
    let h = trees(&debs, version).expect("the version parsed above");
    for dir in [&h.source, &h.build] {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_of_a_debian_version() {
        assert_eq!(
            packages("6.1.0-57-amd64"),
            Some((
                "linux-headers-6.1.0-57-amd64".into(),
                "linux-headers-6.1.0-57-common".into()
            ))
        );
        assert_eq!(packages("custom"), None);
        let h = trees(Path::new("/c/debs"), "6.1.0-57-amd64").unwrap();
        assert_eq!(
            h.source,
            Path::new(
                "/c/debs/linux-headers-6.1.0-57-common.root/usr/src/linux-headers-6.1.0-57-common"
            )
        );
        assert_eq!(
            h.build,
            Path::new(
                "/c/debs/linux-headers-6.1.0-57-amd64.root/usr/src/linux-headers-6.1.0-57-amd64"
            )
        );
        // Not fetched: nothing is claimed.
        assert_eq!(
            default_guest_headers(Path::new("/nonexistent"), "6.1.0-57-amd64"),
            None
        );
    }
}
