//! gdb-remote
