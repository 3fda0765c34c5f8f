//! qemu-guest
