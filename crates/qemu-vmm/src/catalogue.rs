//! `trace-events` source files: for tests and documentation only.
