//! lib/string.c and arch/x86/lib's string functions: string instructions (rep movs/stos),
//! word-at-a-time loads, byte loops, signed/unsigned compares.

use crate::{HEAP, Rng, TestMemory, call, kernel};

const SRC: usize = 0x1000;
const DST: usize = 0x9000;

/// `len` random bytes, none of them NUL.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| (rng.draw() % 255 + 1) as u8).collect()
}

fn with_nul(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

#[test]
fn strlen_and_strnlen_count_as_rust_does() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(1);
    let mut checked = 0;
    for len in 0..70 {
        for align in [0, 1, 3, 7] {
            let s = text(&mut rng, len);
            let mut mem = TestMemory::new(k);
            let at = mem.put(SRC + align, &with_nul(&s));
            let c = call(k, mem, "strlen", &[at]);
            assert_eq!(c.rax, len as u64, "strlen of {len} bytes at +{align}");
            // The image's unpatched `jmp __x86_return_thunk` ran (its `call __fentry__`
            // sites are NOPs already in the image).
            assert_eq!(c.transfers_to(k.addr("__x86_return_thunk")), 1);
            assert_eq!(c.transfers_to(k.addr("__fentry__")), 0);
            for n in [0, len / 2, len, len + 5] {
                let mut mem = TestMemory::new(k);
                let at = mem.put(SRC + align, &with_nul(&s));
                let got = call(k, mem, "strnlen", &[at, n as u64]).rax;
                assert_eq!(got, len.min(n) as u64, "strnlen({len} bytes, {n})");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 70 * 4 * 4);
}

#[test]
fn strcpy_strncpy_strscpy_copy_as_specified() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(2);
    for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 64, 100] {
        let s = text(&mut rng, len);
        let fresh = |rng: &mut Rng| {
            let mut mem = TestMemory::new(k);
            // The destination's old contents, to see what was (not) overwritten.
            let junk: Vec<u8> = (0..256).map(|_| rng.draw() as u8 | 1).collect();
            let dst = mem.put(DST, &junk);
            let src = mem.put(SRC + len % 8, &with_nul(&s));
            (mem, dst, src, junk)
        };

        let (mem, dst, src, junk) = fresh(&mut rng);
        let mut c = call(k, mem, "strcpy", &[dst, src]);
        assert_eq!(c.rax, dst);
        let mut want = with_nul(&s);
        want.push(junk[len + 1]);
        assert_eq!(c.bytes(dst, len + 2), want, "strcpy of {len} bytes");

        for n in [0, len / 2, len, len + 1, len + 9] {
            let (mem, dst, src, junk) = fresh(&mut rng);
            let mut c = call(k, mem, "strncpy", &[dst, src, n as u64]);
            assert_eq!(c.rax, dst);
            let mut want: Vec<u8> = s
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(n)
                .collect();
            want.push(junk[n]);
            assert_eq!(c.bytes(dst, n + 1), want, "strncpy({len} bytes, {n})");
        }

        for size in [0, 1, len / 2, len, len + 1, len + 8, len + 40] {
            let (mem, dst, src, junk) = fresh(&mut rng);
            let mut c = call(k, mem, "strscpy", &[dst, src, size as u64]);
            let e2big = (-7i64) as u64;
            if size == 0 {
                assert_eq!(c.rax, e2big);
                assert_eq!(c.bytes(dst, 1), &junk[..1]);
                continue;
            }
            let copied = len.min(size - 1);
            let want_rax = if len < size { len as u64 } else { e2big };
            assert_eq!(c.rax, want_rax, "strscpy({len} bytes, {size})");
            let mut want = s[..copied].to_vec();
            want.push(0);
            assert_eq!(
                c.bytes(dst, copied + 1),
                want,
                "strscpy({len} bytes, {size})"
            );
        }
    }
}

#[test]
fn strcmp_and_memcmp_order_as_rust_does() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(3);
    let mut seen = [false; 3];
    for round in 0..120 {
        let len = (rng.draw() % 40) as usize + 1;
        let a = text(&mut rng, len);
        let mut b = a.clone();
        match round % 4 {
            0 => {}
            1 => b.truncate(rng.draw() as usize % len),
            _ => {
                let i = rng.draw() as usize % len;
                b[i] = (rng.draw() % 255 + 1) as u8;
            }
        }
        let want = a.cmp(&b);
        seen[(want as i8 + 1) as usize] = true;

        let mut mem = TestMemory::new(k);
        let pa = mem.put(SRC, &with_nul(&a));
        let pb = mem.put(DST + round % 8, &with_nul(&b));
        let got = call(k, mem, "strcmp", &[pa, pb]).rax as i32;
        assert_eq!(got.cmp(&0), want, "strcmp({a:?}, {b:?})");

        let n = a.len().min(b.len());
        let mut mem = TestMemory::new(k);
        let pa = mem.put(SRC, &a);
        let pb = mem.put(DST + round % 8, &b);
        let got = call(k, mem, "memcmp", &[pa, pb, n as u64]).rax as i32;
        assert_eq!(got.cmp(&0), a[..n].cmp(&b[..n]), "memcmp({n})");
    }
    assert_eq!(seen, [true; 3], "less, equal and greater all seen");
}

#[test]
fn memcpy_memset_memmove_move_bytes_as_rust_does() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(4);
    for n in [
        0usize, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 100, 255, 256, 1000, 4100,
    ] {
        let data: Vec<u8> = (0..n + 64).map(|_| rng.draw() as u8).collect();
        let align = n % 8;

        let mut mem = TestMemory::new(k);
        let src = mem.put(SRC + align, &data);
        let dst = HEAP + (DST + 0x3000 + n % 5) as u64;
        let mut c = call(k, mem, "__memcpy", &[dst, src, n as u64]);
        assert_eq!(c.rax, dst);
        assert_eq!(c.bytes(dst, n), &data[..n], "memcpy of {n}");
        assert_eq!(
            c.bytes(dst + n as u64, 8),
            [0; 8],
            "memcpy of {n} stops at n"
        );

        let byte = rng.draw() as u8;
        let mem = TestMemory::new(k);
        let mut c = call(
            k,
            mem,
            "__memset",
            &[dst, u64::from(byte) | 0xff00, n as u64],
        );
        assert_eq!(c.rax, dst);
        assert_eq!(c.bytes(dst, n), vec![byte; n], "memset of {n}");
        assert_eq!(
            c.bytes(dst + n as u64, 8),
            [0; 8],
            "memset of {n} stops at n"
        );

        // Overlapping both ways, by a distance smaller and larger than a word.
        for shift in [1usize, 5, 8, 13, 40] {
            for forward in [true, false] {
                let mut mem = TestMemory::new(k);
                let base = mem.put(SRC, &data);
                let (s, d) = if forward { (0, shift) } else { (shift, 0) };
                let len = n.min(data.len() - shift);
                let mut want = data.clone();
                want.copy_within(s..s + len, d);
                let mut c = call(
                    k,
                    mem,
                    "__memmove",
                    &[base + d as u64, base + s as u64, len as u64],
                );
                assert_eq!(c.rax, base + d as u64);
                assert_eq!(
                    c.bytes(base, data.len()),
                    want,
                    "memmove {len} by {shift} {forward}"
                );
            }
        }
    }
}

#[test]
fn strchr_strrchr_memchr_strstr_find_as_rust_does() {
    let Some(k) = kernel() else { return };
    let mut rng = Rng(5);
    for round in 0..60 {
        let len = (rng.draw() % 50) as usize + 1;
        // A small alphabet, so characters repeat and substrings occur.
        let s: Vec<u8> = (0..len).map(|_| b'a' + (rng.draw() % 4) as u8).collect();
        let c = b'a' + (round % 5) as u8;
        let pos = |f: Option<usize>, base: u64| f.map_or(0, |i| base + i as u64);

        let mut mem = TestMemory::new(k);
        let at = mem.put(SRC, &with_nul(&s));
        let got = call(k, mem, "strchr", &[at, u64::from(c)]).rax;
        assert_eq!(got, pos(s.iter().position(|&x| x == c), at), "strchr");

        let mut mem = TestMemory::new(k);
        let at = mem.put(SRC, &with_nul(&s));
        let got = call(k, mem, "strrchr", &[at, u64::from(c)]).rax;
        assert_eq!(got, pos(s.iter().rposition(|&x| x == c), at), "strrchr");

        let mut mem = TestMemory::new(k);
        let at = mem.put(SRC, &s);
        let got = call(k, mem, "memchr", &[at, u64::from(c), len as u64]).rax;
        assert_eq!(got, pos(s.iter().position(|&x| x == c), at), "memchr");

        let nlen = (rng.draw() % 3) as usize + 1;
        let needle: Vec<u8> = (0..nlen).map(|_| b'a' + (rng.draw() % 4) as u8).collect();
        let mut mem = TestMemory::new(k);
        let at = mem.put(SRC, &with_nul(&s));
        let pn = mem.put(DST, &with_nul(&needle));
        let got = call(k, mem, "strstr", &[at, pn]).rax;
        let want = s.windows(nlen).position(|w| w == needle.as_slice());
        assert_eq!(got, pos(want, at), "strstr({s:?}, {needle:?})");
    }
}
