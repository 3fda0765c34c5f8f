//! A hostile stub's byte stream: the packet decoder (framing, escapes,
//! run-length, checksums, notifications, the 1 MiB bound) in read-sized
//! pieces, and every reply parser over the packets it yields.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    gdb_remote::fuzzing::decode_stream(bytes, usize::from(split) + 1);
});
