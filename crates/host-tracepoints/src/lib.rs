//! Host kernel tracepoints for vmprobe.
pub mod format;
