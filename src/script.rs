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
}

/// Where a program's `#include`s are read: the host's headers, in
/// bpftrace's search directories (probe-lang reads no files itself). A
/// file is read to at most the reader's whole budget, so a header that is
/// a device or huge cannot fill memory.
pub fn host_headers() -> probe_lang::headers::HeaderSearch {
    use probe_lang::headers::{HeaderSearch, MAX_BYTES};
    HeaderSearch {
        dirs: HeaderSearch::host_dirs(),
        read: std::sync::Arc::new(|path: &Path| {
            let mut bytes = Vec::new();
            std::fs::File::open(path)?
                .take(MAX_BYTES as u64 + 1)
                .read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }),
    }
}
