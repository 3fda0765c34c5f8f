//! Directories only this user can enter, for QEMU's sockets, logs and stubs.
//!
//! Anyone who can connect to a QMP socket can run host commands as its
//! owner (HMP `migrate "exec:..."`), and a gdbstub gives the guest's memory
//! and registers. So every such socket lives in a directory of mode 0700
//! owned by us, whatever the umask, and is checked again once QEMU has
//! bound it.

use crate::{Error, Result, io_err};
use std::fs::Permissions;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// A fresh directory `$TMPDIR/PREFIX...` of mode 0700 owned by this user,
/// removed on drop.
pub fn private_dir(prefix: &str) -> Result<tempfile::TempDir> {
    // The mode given to mkdir(2) is masked by the umask, which can only
    // narrow it; the chmod after restores owner access a strict umask took.
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o700))
        .tempdir()
        .map_err(io_err(format!("creating a private directory {prefix}*")))?;
    std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700))
        .map_err(io_err(dir.path()))?;
    check_private_dir(dir.path())?;
    Ok(dir)
}

/// Checks that `path` is a directory (not a symlink) of mode 0700 owned by
/// this user.
pub fn check_private_dir(path: &Path) -> Result<()> {
    let meta = owned_by_me(path, |t| t.is_dir(), "not a directory")?;
    match meta.mode() & 0o7777 {
        0o700 => Ok(()),
        mode => Err(not_private(path, format!("mode {mode:04o}, not 0700"))),
    }
}

/// Checks a socket QEMU has bound: a socket owned by this user, in a
/// private directory (its own mode does not matter, as connecting needs
/// search permission on the directory).
pub fn check_private_socket(path: &Path) -> Result<()> {
    owned_by_me(path, |t| t.is_socket(), "not a socket")?;
    let parent = path
        .parent()
        .ok_or_else(|| not_private(path, "no directory".into()))?;
    check_private_dir(parent)
}

/// `path`'s own metadata (a symlink is not followed), if its type passes
/// `kind` (else `not_kind`) and this user owns it.
fn owned_by_me(
    path: &Path,
    kind: impl Fn(std::fs::FileType) -> bool,
    not_kind: &str,
) -> Result<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    if !kind(meta.file_type()) {
        return Err(not_private(path, not_kind.into()));
    }
    let me = rustix::process::geteuid().as_raw();
    match meta.uid() {
        uid if uid == me => Ok(meta),
        uid => Err(not_private(path, format!("owned by uid {uid}, not {me}"))),
    }
}

fn not_private(path: &Path, detail: String) -> Error {
    Error::NotPrivate {
        path: path.to_path_buf(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run alone in a child process (the umask is process-wide): makes a
    /// private directory under the umask `VMPROBE_TEST_UMASK` and prints
    /// its mode.
    #[test]
    #[ignore]
    fn umask_child() {
        let Ok(mask) = std::env::var("VMPROBE_TEST_UMASK") else {
            return;
        };
        let mask = u32::from_str_radix(&mask, 8).unwrap();
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
        let dir = private_dir("vmprobe-test-").unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().mode() & 0o7777;
        println!("MODE {mode:04o}");
    }

    #[test]
    fn directories_are_0700_whatever_the_umask() {
        // 0277 takes the owner's write bit, 0777 every bit.
        for mask in ["000", "022", "077", "277", "777"] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "private::tests::umask_child", "--ignored"])
                .args(["--nocapture", "--test-threads=1"])
                .env("VMPROBE_TEST_UMASK", mask)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("MODE 0700"), "umask {mask}: {stdout}");
        }
    }

    #[test]
    fn a_socket_is_private_only_in_a_private_directory() {
        let dir = private_dir("vmprobe-test-").unwrap();
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_private_socket(&sock).unwrap();
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        let e = check_private_socket(&sock).unwrap_err().to_string();
        assert!(e.contains("mode 0755, not 0700"), "{e}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = check_private_socket(&file).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
    }
}
