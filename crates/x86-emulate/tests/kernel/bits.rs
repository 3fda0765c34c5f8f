//! Bit and arithmetic library functions: multiplication (hweight), shifts and bsr (int_sqrt),
//! tzcnt/bsf (gcd), division and digit loops (kstrtoull), table lookups (crc32), bit scans
//! (find_next_bit) and indirect calls through retpoline thunks (sort).
use x86_emulate::{Machine, RDI, RSI};

use crate::{Fake, HEAP, Rng, TestMemory, call, call_with, kernel};

/// Edge values and random ones, of every magnitude.
fn values(rng: &mut Rng, n: usize) -> Vec<u64> {
    let mut v = vec![
        0,
        1,
        2,
        3,
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        (1 << 63) - 1,
        1 << 32,
        u64::from(u32::MAX),
    ];
    v.extend((0..n).map(|i| rng.draw() >> (i % 64)));
    v
}

#[test]
fn hweight_counts_ones() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(11);
    for w in values(&mut rng, 200) {
        let got = call(k, TestMemory::new(k), "__sw_hweight64", &[w]).rax;
        assert_eq!(got, u64::from(w.count_ones()), "__sw_hweight64({w:#x})");
        let got = call(k, TestMemory::new(k), "__sw_hweight32", &[w]).rax;
        assert_eq!(
            got & 0xffff_ffff,
            u64::from((w as u32).count_ones()),
            "__sw_hweight32({w:#x})"
        );
    }
}

#[test]
fn int_sqrt_is_isqrt_and_int_pow_is_wrapping_pow() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(12);
    for x in values(&mut rng, 300) {
        let got = call(k, TestMemory::new(k), "int_sqrt", &[x]).rax;
        assert_eq!(got, x.isqrt(), "int_sqrt({x})");
    }
    for _ in 0..100 {
        let (base, exp) = (rng.draw() % 20, (rng.draw() % 70) as u32);
        let got = call(k, TestMemory::new(k), "int_pow", &[base, u64::from(exp)]).rax;
        assert_eq!(got, base.wrapping_pow(exp), "int_pow({base}, {exp})");
    }
}

fn euclid(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { euclid(b, a % b) }
}

#[test]
fn gcd_is_euclids() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(13);
    for _ in 0..300 {
        // Shared factors, so the answers are not all 1.
        let f = rng.draw() % 1000 + 1;
        let a = (rng.draw() >> (rng.draw() % 64)).wrapping_mul(f);
        let b = (rng.draw() >> (rng.draw() % 64)).wrapping_mul(f);
        let got = call(k, TestMemory::new(k), "gcd", &[a, b]).rax;
        assert_eq!(got, euclid(a, b), "gcd({a}, {b})");
    }
}

#[test]
fn kstrtoull_and_simple_strtoull_parse_as_rust_does() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(14);
    const EINVAL: u64 = (-22i64) as u64;
    const ERANGE: u64 = (-34i64) as u64;
    let res = HEAP + 0x8000;
    let parse = |s: &str, base: u64| {
        let mut mem = TestMemory::new(k);
        let at = mem.put(0x1000, &[s.as_bytes(), b"\0"].concat());
        let mut c = call(k, mem, "kstrtoull", &[at, base, res]);
        let v = u64::from_le_bytes(c.bytes(res, 8).try_into().unwrap());
        (
            c.rax & 0xffff_ffff
                | if c.rax & 0x8000_0000 != 0 {
                    !0xffff_ffff
                } else {
                    0
                },
            v,
        )
    };
    for v in values(&mut rng, 150) {
        assert_eq!(parse(&v.to_string(), 10), (0, v), "kstrtoull({v}, 10)");
        assert_eq!(
            parse(&format!("{v}\n"), 10),
            (0, v),
            "kstrtoull({v}\\n, 10)"
        );
        let hex = format!("{v:x}");
        assert_eq!(u64::from_str_radix(&hex, 16), Ok(v));
        assert_eq!(parse(&hex, 16), (0, v), "kstrtoull({hex}, 16)");
        assert_eq!(
            parse(&format!("0x{v:X}"), 0),
            (0, v),
            "kstrtoull(0x{v:X}, 0)"
        );
        assert_eq!(parse(&format!("0{v:o}"), 0), (0, v), "kstrtoull(0{v:o}, 0)");

        let mut mem = TestMemory::new(k);
        let s = format!("{v:x}zz");
        let at = mem.put(0x1000, &[s.as_bytes(), b"\0"].concat());
        let endp = HEAP + 0x8000;
        let mut c = call(k, mem, "simple_strtoull", &[at, endp, 16]);
        assert_eq!(c.rax, v, "simple_strtoull({s}, 16)");
        let end = u64::from_le_bytes(c.bytes(endp, 8).try_into().unwrap());
        assert_eq!(end, at + hex.len() as u64, "simple_strtoull's end pointer");
    }
    assert_eq!(parse("18446744073709551616", 10).0, ERANGE);
    assert_eq!(parse("10000000000000000", 16).0, ERANGE);
    for bad in ["", "12a", "-1", "0x", " 1", "1 "] {
        assert!(bad.parse::<u64>().is_err());
        assert_eq!(parse(bad, 10).0, EINVAL, "kstrtoull({bad:?}) refused");
    }
}

#[test]
fn crc32_le_is_crc32fast() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(15);
    for len in [
        0usize, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 64, 100, 511, 1500,
    ] {
        for align in [0, 1, 3] {
            let data: Vec<u8> = (0..len).map(|_| rng.draw() as u8).collect();
            let mut mem = TestMemory::new(k);
            let at = mem.put(0x1000 + align, &data);
            // The kernel's crc32_le neither inverts its seed nor its result.
            let got = call(k, mem, "crc32_le_base", &[0xffff_ffff, at, len as u64]).rax as u32;
            assert_eq!(
                !got,
                crc32fast::hash(&data),
                "crc32_le of {len} bytes at +{align}"
            );
        }
    }
}

#[test]
fn find_next_bit_and_bitmap_weight_scan_as_rust_does() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(16);
    for round in 0..40 {
        let words: Vec<u64> = (0..6)
            .map(|i| {
                if (round + i) % 3 == 0 {
                    0
                } else {
                    rng.draw() & rng.draw()
                }
            })
            .collect();
        let bit = |i: u64| words[(i / 64) as usize] >> (i % 64) & 1 != 0;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        for _ in 0..8 {
            let nbits = rng.draw() % 384 + 1;
            let start = rng.draw() % (nbits + 10);
            let want = (start..nbits).find(|&i| bit(i)).unwrap_or(nbits);
            let mut mem = TestMemory::new(k);
            let at = mem.put(0x1000, &bytes);
            let got = call(k, mem, "_find_next_bit", &[at, nbits, start]).rax;
            assert_eq!(got, want, "_find_next_bit({nbits}, {start}) in {words:x?}");

            let mut mem = TestMemory::new(k);
            let at = mem.put(0x1000, &bytes);
            let c = call(k, mem, "__bitmap_weight", &[at, nbits]);
            let want = (0..nbits).filter(|&i| bit(i)).count() as u64;
            assert_eq!(c.rax & 0xffff_ffff, want, "__bitmap_weight({nbits})");
        }
    }
}

/// A comparator served by the hook, in Rust: sort's indirect calls reach it.
fn fake_cmp_u32(m: &mut Machine, heap: &mut TestMemory) -> u64 {
    let mut a = [0u8; 4];
    let mut b = [0u8; 4];
    let (pa, pb) = (m.regs().gpr[RDI], m.regs().gpr[RSI]);
    m.read(heap, pa, &mut a).expect("reads a");
    m.read(heap, pb, &mut b).expect("reads b");
    let (a, b) = (u32::from_le_bytes(a), u32::from_le_bytes(b));
    (a.cmp(&b) as i64) as u64
}

/// A code address with no code: only the hook can answer calls to it.
const FAKE_CMP: u64 = 0xffff_ffff_c000_0000;

#[test]
fn sort_orders_u32_with_the_kernels_and_a_hooked_comparator() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(17);
    let cmp = k.addr("tracing_map_cmp_u32");
    for n in [0usize, 1, 2, 3, 5, 16, 33, 100] {
        let values: Vec<u32> = (0..n).map(|_| (rng.draw() % 50) as u32).collect();
        let mut want = values.clone();
        want.sort_unstable();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // The thunks run as code (the comparator is reached by their `ret`), or are
        // declared, and the hooks see the comparator: the kernel's, or one they serve.
        for (comparator, thunks) in [(cmp, false), (cmp, true), (FAKE_CMP, true)] {
            let mut mem = TestMemory::new(k);
            let at = mem.put(0x1000, &bytes);
            let fakes: &[(u64, Fake)] = &[(FAKE_CMP, fake_cmp_u32)];
            let args = [at, n as u64, 4, comparator, 0];
            let mut c = call_with(k, mem, "sort", &args, fakes, thunks)
                .unwrap_or_else(|e| panic!("sort: {e}"));
            let got: Vec<u32> = c
                .bytes(at, n * 4)
                .chunks(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(got, want, "sort of {n} with {comparator:#x}");
            let calls = c.transfers_to(comparator);
            if !thunks {
                assert_eq!(
                    calls, 0,
                    "without declared thunks, hooks do not see the target"
                );
            } else if n >= 2 {
                assert!(
                    calls >= n - 1,
                    "the comparator was called {calls} times for {n}"
                );
            }
        }
    }
}

/// Not a timed assertion: prints the emulation speed on the kernel's crc32 and sort, for the
/// record (run with --nocapture, in a release build for a meaningful number).
#[test]
fn emulation_speed_is_reported() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(18);
    let timed = |what: &str, input: &[u8], name: &str, args: &dyn Fn(u64) -> Vec<u64>| {
        let mut mem = TestMemory::new(k);
        let at = mem.put(0x1000, input);
        let t = std::time::Instant::now();
        let c = call(k, mem, name, &args(at));
        let secs = t.elapsed().as_secs_f64();
        let n = c.machine.executed();
        eprintln!(
            "{what}: {n} instructions in {:.1} ms, {:.2} M instructions/s",
            secs * 1e3,
            n as f64 / secs / 1e6
        );
        c.rax
    };
    let data: Vec<u8> = (0..16384).map(|_| rng.draw() as u8).collect();
    let len = data.len() as u64;
    let crc = timed("crc32_le of 16 KiB", &data, "crc32_le_base", &|at| {
        vec![0xffff_ffff, at, len]
    });
    assert_eq!(!(crc as u32), crc32fast::hash(&data));
    let values: Vec<u8> = (0..2000u32)
        .flat_map(|_| (rng.draw() as u32).to_le_bytes())
        .collect();
    let cmp = k.addr("tracing_map_cmp_u32");
    timed("sort of 2000 u32", &values, "sort", &|at| {
        vec![at, 2000, 4, cmp, 0]
    });
}
