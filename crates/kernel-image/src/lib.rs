//! kernel-image
