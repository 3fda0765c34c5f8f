//! The guest side of vmprobe: building the default guest (a Debian kernel plus a
//! busybox initramfs) and launching QEMU paused, with its gdbstub, QMP monitor,
//! console and control channel on Unix sockets in a private directory.
//!
//! Nothing here knows about probes or scripts: it hands out socket paths and
//! guest-control messages, and guarantees the QEMU process never outlives us.

mod cpio;
mod headers;
mod image;
mod launch;
mod private;
mod qemu;

pub use headers::{KernelHeaders, default_guest_headers, ensure_default_guest_headers};
pub use image::{
    DEFAULT_APPEND, GuestImage, USERLAND, build_default_guest, cache_dir, default_guest,
    default_guest_files, default_guest_modules, default_guest_root, ensure_default_guest,
};
pub use launch::{Accel, ControlEvent, LaunchConfig, Vm, kvm_usable};
pub use private::{check_private_dir, check_private_socket, private_dir};
pub use qemu::{QEMU10_ENV, QemuVersion, installed_qemu10, qemu10_in};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool} not found: {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QEMU exited before the guest was up: {stderr}")]
    QemuExited { stderr: String },
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: &'static str, seconds: u64 },
    #[error(
        "guest control channel closed while waiting for {what} (QEMU or the guest went away): {detail}"
    )]
    ControlClosed {
        what: &'static str,
        /// QEMU's state and error output, and the console's last lines.
        detail: String,
    },
    #[error("{path}: not private to this user: {detail}")]
    NotPrivate { path: PathBuf, detail: String },
    #[error("unexpected message from guest init: {0:?}")]
    Protocol(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
