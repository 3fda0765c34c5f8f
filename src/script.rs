//! The probe program's text: `-e PROGRAM`, or a file read with a bound.

use anyhow::{Context, Result, anyhow, bail};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest script read from a file: far beyond any written by hand or
/// generated, small enough that `vmprobe run /dev/zero` fails at once
/// instead of filling memory.
pub const MAX_SCRIPT_BYTES: u64 = 16 << 20;

/// The program's text, and the name its diagnostics give it.
pub fn program_source(
    program: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<(String, String)> {
    match (program, file) {
        (Some(p), _) => Ok((p.clone(), "stdin".to_string())),
        (None, Some(f)) => Ok((read_script(f)?, f.display().to_string())),
        (None, None) => bail!("no program: give -e PROGRAM or a FILE"),
    }
}

/// Reads a script of at most [`MAX_SCRIPT_BYTES`]: a regular file is
/// refused by its size before anything is read, and a device or pipe
/// (whose size says nothing) is read through `take`, so memory stays
/// bounded either way.
pub fn read_script(path: &Path) -> Result<String> {
    let too_large = || {
        anyhow!(
            "{}: the script is larger than the limit of {} MiB",
            path.display(),
            MAX_SCRIPT_BYTES >> 20
        )
    };
    let reading = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).with_context(reading)?;
    if file.metadata().with_context(reading)?.len() > MAX_SCRIPT_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SCRIPT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(reading)?;
    if bytes.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        // Where, as a compile error would say it (line:column), and the byte offset.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let col = valid.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        anyhow!(
            "{}:{line}:{col}: the script is not UTF-8 text (byte offset {})",
            path.display(),
            valid.len()
        )
    })
}

/// Where a program's `#include`s are read: the host's headers, in
/// bpftrace's search directories (probe-lang reads no files itself). A
/// file is read to at most the reader's whole budget, so a header that is
/// a device or huge cannot fill memory.
pub fn host_headers() -> probe_lang::headers::HeaderSearch {
    use probe_lang::headers::HeaderSearch;
    HeaderSearch::new(HeaderSearch::host_dirs(), std::sync::Arc::new(read_header))
}

/// Where a program's `#include`s are read, as bpftrace reads the running
/// kernel's headers and then the host's: `kernel_headers` (the user's
/// `--kernel-headers DIR`), else the default guest's kernel's when the
/// guest is the default one (`default_guest`: its kernel version; the
/// headers are fetched on the first program that includes anything), else
/// the host's only, which the unknown-identifier error then says.
pub fn program_headers(
    source: &str,
    kernel_headers: Option<&Path>,
    default_guest: Option<&str>,
) -> Result<probe_lang::headers::HeaderSearch> {
    use probe_lang::headers::HeaderSearch;
    let read = std::sync::Arc::new(read_header);
    let kernel = |ksrc: &Path, kobj: &Path, what: String| {
        let mut s = HeaderSearch::kernel(ksrc, kobj, read.clone());
        s.about = Some(format!(
            "the headers read are {what} ({}, {}), then the host's",
            ksrc.display(),
            kobj.display()
        ));
        s
    };
    if let Some(dir) = kernel_headers {
        if !dir.is_dir() {
            bail!("--kernel-headers {}: not a directory", dir.display());
        }
        // A /lib/modules/VERSION directory names both trees, as bpftrace
        // finds them; a kernel built in its tree is both.
        let (src, build) = (dir.join("source"), dir.join("build"));
        return Ok(if src.is_dir() && build.is_dir() {
            kernel(&src, &build, "the kernel's from --kernel-headers".into())
        } else {
            kernel(dir, dir, "the kernel's from --kernel-headers".into())
        });
    }
    let includes = source
        .lines()
        .any(|l| l.trim_start().starts_with("#include"));
    match default_guest {
        Some(version) if includes => {
            let cache = qemu_guest::cache_dir();
            let h = qemu_guest::ensure_default_guest_headers(&cache, version, &mut |step| {
                progress!("vmprobe: kernel headers: {step}")
            })
            .with_context(|| format!("fetching the default guest's kernel headers ({version})"))?;
            Ok(kernel(
                &h.source,
                &h.build,
                format!("the guest kernel's {version}"),
            ))
        }
        Some(_) => Ok(host_headers()),
        None => {
            let mut s = host_headers();
            s.about = Some(format!(
                "the headers read are the host's only ({}): --kernel-headers DIR gives the guest kernel's",
                s.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Ok(s)
        }
    }
}

fn read_header(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(probe_lang::headers::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_past_the_limit_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bt");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_SCRIPT_BYTES + 1).unwrap();
        let e = read_script(&path).unwrap_err().to_string();
        assert!(
            e.contains("big.bt: the script is larger than the limit of 16 MiB"),
            "{e}"
        );
        file.set_len(MAX_SCRIPT_BYTES).unwrap();
        assert_eq!(read_script(&path).unwrap().len() as u64, MAX_SCRIPT_BYTES);
        // A device whose size is 0 and whose reads never end.
        let e = read_script(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero: the script is larger than"), "{e}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let e = read_script(&path).unwrap_err().to_string();
        assert!(
            e.contains("big.bt:1:1: the script is not UTF-8 text (byte offset 0)"),
            "{e}"
        );
        std::fs::write(&path, b"BEGIN {\n  printf(\"\xc3\xa9\xff\");\n}").unwrap();
        let e = read_script(&path).unwrap_err().to_string();
        assert!(
            e.contains("big.bt:2:12: the script is not UTF-8 text (byte offset 20)"),
            "{e}"
        );
    }

    /// The integer macros of the host's headers, as this reader takes
    /// them, have the values gcc compiles them to (public names: those
    /// with a leading `_` may follow the compiler, and ours is clang's).
    #[test]
    fn host_header_macros_agree_with_gcc() {
        let socket = Path::new("/usr/include/x86_64-linux-gnu/sys/socket.h");
        let gcc = std::process::Command::new("gcc").arg("--version").output();
        if !socket.is_file() || !gcc.is_ok_and(|o| o.status.success()) {
            eprintln!("no libc6-dev headers or no gcc: skipping");
            return;
        }
        let headers = [
            "sys/socket.h",
            "netinet/in.h",
            "netinet/tcp.h",
            "fcntl.h",
            "signal.h",
            "errno.h",
            "sys/mman.h",
            "sys/stat.h",
            "sys/ioctl.h",
            "unistd.h",
            "time.h",
            "linux/sched.h",
            "linux/if_ether.h",
            "linux/fs.h",
        ];
        let includes: Vec<(String, bool)> =
            headers.iter().map(|h| (h.to_string(), false)).collect();
        let m = probe_lang::headers::read(&host_headers(), &includes);
        // Only the compiler's own headers are elsewhere.
        for n in &m.notes {
            assert!(
                n.starts_with("<stddef.h> was not found")
                    || n.starts_with("<stdint.h> was not found"),
                "{n}"
            );
        }
        let ints: Vec<&(String, i128)> =
            m.ints.iter().filter(|(n, _)| !n.starts_with('_')).collect();
        let get = |name: &str| ints.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(get("AF_INET"), Some(2));
        assert_eq!(get("AF_INET6"), Some(10));
        assert_eq!(get("TCP_NODELAY"), Some(1));
        assert!(ints.len() > 300, "{} macros", ints.len());
        let dir = tempfile::tempdir().unwrap();
        let mut c = String::from("#include <stdio.h>\n");
        for h in headers {
            c.push_str(&format!("#include <{h}>\n"));
        }
        c.push_str("int main(void) {\n");
        for (n, _) in &ints {
            c.push_str(&format!(
                "printf(\"{n} %llu\\n\", (unsigned long long)({n}));\n"
            ));
        }
        c.push_str("return 0; }\n");
        let src = dir.path().join("m.c");
        let exe = dir.path().join("m");
        std::fs::write(&src, c).unwrap();
        let out = std::process::Command::new("gcc")
            .args(["-w", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&exe).output().unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        let (mut agree, mut int32) = (0, Vec::new());
        for (line, (n, v)) in printed.lines().zip(&ints) {
            // In C `(1<<31)` is an int, negative; bpftrace evaluates the
            // expanded text in 64 bits, as the reader does.
            let c_int = (*v as u32 as i32) as i64 as u64;
            if line != format!("{n} {}", *v as u64) && line == format!("{n} {c_int}") {
                int32.push(n.as_str());
                continue;
            }
            assert_eq!(line, format!("{n} {}", *v as u64), "{n}");
            agree += 1;
        }
        assert_eq!(agree + int32.len(), ints.len());
        assert!(int32.len() < 5, "{int32:?}");
        eprintln!("{agree} macros agree with gcc, {int32:?} differ as 32-bit C ints");
    }
}
