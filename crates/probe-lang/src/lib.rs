//! probe-lang
