//! probe-engine
