//! Arithmetic and its flags, as the SDM defines them: pure functions of the operands, the
//! operand size in bytes and the incoming flags.

use crate::flags::{AF, CF, OF, PF, SF, STATUS, ZF};
use crate::operands::{mask, sext};

/// A result, the flags it computed and which flags those are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub v: u64,
    pub flags: u64,
    pub affected: u64,
}

impl Out {
    /// `rflags` with the affected flags replaced.
    pub(crate) fn merge(self, rflags: u64) -> u64 {
        (rflags & !self.affected) | (self.flags & self.affected)
    }
}

fn sign(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

fn bit(cond: bool, f: u64) -> u64 {
    if cond { f } else { 0 }
}

/// ZF SF PF of a result.
pub(crate) fn szp(r: u64, size: u32) -> u64 {
    bit(r & mask(size) == 0, ZF)
        | bit(r & sign(size) != 0, SF)
        | bit((r as u8).count_ones().is_multiple_of(2), PF)
}

pub(crate) fn add(a: u64, b: u64, carry: bool, size: u32) -> Out {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry);
    let r = (wide as u64) & m;
    let flags = szp(r, size)
        | bit(wide > u128::from(m), CF)
        | bit((a ^ r) & (b ^ r) & sign(size) != 0, OF)
        | bit((a ^ b ^ r) & 0x10 != 0, AF);
    Out {
        v: r,
        flags,
        affected: STATUS,
    }
}

pub(crate) fn sub(a: u64, b: u64, borrow: bool, size: u32) -> Out {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b).wrapping_sub(u64::from(borrow)) & m;
    let flags = szp(r, size)
        | bit(u128::from(a) < u128::from(b) + u128::from(borrow), CF)
        | bit((a ^ b) & (a ^ r) & sign(size) != 0, OF)
        | bit((a ^ b ^ r) & 0x10 != 0, AF);
    Out {
        v: r,
        flags,
        affected: STATUS,
    }
}

/// and/or/xor/test: CF OF cleared, AF (undefined) cleared.
pub(crate) fn logic(r: u64, size: u32) -> Out {
    let r = r & mask(size);
    Out {
        v: r,
        flags: szp(r, size),
        affected: STATUS,
    }
}

/// inc/dec: as add/sub of 1, CF kept.
pub(crate) fn inc_dec(a: u64, dec: bool, size: u32) -> Out {
    let mut o = if dec {
        sub(a, 1, false, size)
    } else {
        add(a, 1, false, size)
    };
    o.affected &= !CF;
    o
}

pub(crate) fn neg(a: u64, size: u32) -> Out {
    sub(0, a, false, size)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shift {
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
}

/// A shift or rotate by `count` (already masked to 5 or 6 bits); None when the count is
/// zero (nothing changes, flags included). Flags the SDM leaves undefined (OF for counts
/// above 1, AF, CF past the width) are left unchanged or computed as the bits fall.
pub(crate) fn shift(op: Shift, a: u64, count: u32, size: u32) -> Option<Out> {
    if count == 0 {
        return None;
    }
    let bits = size * 8;
    let m = mask(size);
    let a = a & m;
    let msb = |v: u64| v & sign(size) != 0;
    let (r, cf, of) = match op {
        Shift::Shl => {
            let r = if count >= 64 { 0 } else { (a << count) & m };
            let cf = count <= bits && (a >> (bits - count)) & 1 != 0;
            (r, cf, msb(r) != cf)
        }
        Shift::Shr => {
            let r = if count >= 64 { 0 } else { a >> count };
            let cf = count <= bits && (a >> (count - 1)) & 1 != 0;
            (r, cf, msb(a))
        }
        Shift::Sar => {
            let s = sext(a, size);
            let r = (s >> count.min(63)) as u64 & m;
            let cf = (s >> (count - 1).min(63)) & 1 != 0;
            (r, cf, false)
        }
        Shift::Rol | Shift::Ror => {
            let c = count % bits;
            let r = match (op, c) {
                (_, 0) => a,
                (Shift::Rol, c) => ((a << c) | (a >> (bits - c))) & m,
                (_, c) => ((a >> c) | (a << (bits - c))) & m,
            };
            let (cf, of) = if op == Shift::Rol {
                let cf = r & 1 != 0;
                (cf, msb(r) != cf)
            } else {
                (msb(r), msb(r) != (r & (sign(size) >> 1) != 0))
            };
            let affected = CF | if count == 1 { OF } else { 0 };
            return Some(Out {
                v: r,
                flags: bit(cf, CF) | bit(of, OF),
                affected,
            });
        }
    };
    let affected = CF | ZF | SF | PF | if count == 1 { OF } else { 0 };
    Some(Out {
        v: r,
        flags: szp(r, size) | bit(cf, CF) | bit(of, OF),
        affected,
    })
}

/// rcl (left) / rcr: a rotation through CF, of `size * 8 + 1` bits, by `count` (already
/// masked to 5 or 6 bits); None when the count is zero. OF only for a count of 1.
pub(crate) fn rotate_carry(left: bool, a: u64, count: u32, size: u32, cf: bool) -> Option<Out> {
    if count == 0 {
        return None;
    }
    let bits = size * 8;
    let width = bits + 1;
    let a = a & mask(size);
    let v = (u128::from(cf) << bits) | u128::from(a);
    let all = (1u128 << width) - 1;
    let c = count % width;
    let r = match (c, left) {
        (0, _) => v,
        (c, true) => ((v << c) | (v >> (width - c))) & all,
        (c, false) => ((v >> c) | (v << (width - c))) & all,
    };
    let result = r as u64 & mask(size);
    let cf_out = (r >> bits) & 1 != 0;
    let msb = |x: u64| x & sign(size) != 0;
    // rcl: the new MSB against the new CF; rcr: the old MSB against the old CF.
    let of = if left {
        msb(result) != cf_out
    } else {
        msb(a) != cf
    };
    Some(Out {
        v: result,
        flags: bit(cf_out, CF) | bit(of, OF),
        affected: CF | if count == 1 { OF } else { 0 },
    })
}

/// shld (left) / shrd: `a` shifted by `count` (masked to 5 or 6 bits), filled from `b`.
pub(crate) fn double_shift(left: bool, a: u64, b: u64, count: u32, size: u32) -> Option<Out> {
    if count == 0 {
        return None;
    }
    let bits = size * 8;
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    // Counts past the width (16-bit operands) are undefined: shift through a 128-bit pair.
    let c = count.min(bits);
    let (r, cf) = if left {
        let pair = (u128::from(a) << bits) | u128::from(b);
        let r = ((pair << c) >> bits) as u64 & m;
        (r, (pair >> (2 * bits - c)) & 1 != 0)
    } else {
        let pair = (u128::from(b) << bits) | u128::from(a);
        let r = (pair >> c) as u64 & m;
        (r, (pair >> (c - 1)) & 1 != 0)
    };
    let of = (r ^ a) & sign(size) != 0;
    let affected = CF | ZF | SF | PF | if count == 1 { OF } else { 0 };
    Some(Out {
        v: r,
        flags: szp(r, size) | bit(cf, CF) | bit(of, OF),
        affected,
    })
}

/// Flags of mul/imul: CF = OF = `overflow`; SF ZF PF from the low half, AF clear.
pub(crate) fn mul_flags(low: u64, overflow: bool, size: u32) -> u64 {
    szp(low, size) | bit(overflow, CF | OF)
}

/// Signed product of two `size`-byte values: (low, high) halves, each masked.
pub(crate) fn imul_wide(a: u64, b: u64, size: u32) -> (u64, u64, bool) {
    let p = i128::from(sext(a, size)) * i128::from(sext(b, size));
    let m = mask(size);
    let low = p as u64 & m;
    let high = (p >> (size * 8)) as u64 & m;
    let overflow = i128::from(sext(low, size)) != p;
    (low, high, overflow)
}

/// Unsigned product: (low, high, high != 0).
pub(crate) fn mul_wide(a: u64, b: u64, size: u32) -> (u64, u64, bool) {
    let m = mask(size);
    let p = u128::from(a & m) * u128::from(b & m);
    let low = p as u64 & m;
    let high = (p >> (size * 8)) as u64 & m;
    (low, high, high != 0)
}

/// Unsigned division of high:low by `d`: (quotient, remainder), None on #DE.
pub(crate) fn div_wide(high: u64, low: u64, d: u64, size: u32) -> Option<(u64, u64)> {
    let m = mask(size);
    let d = u128::from(d & m);
    if d == 0 {
        return None;
    }
    let n = (u128::from(high & m) << (size * 8)) | u128::from(low & m);
    let q = n / d;
    (q <= u128::from(m)).then(|| (q as u64, (n % d) as u64))
}

/// Signed division of high:low by `d`: (quotient, remainder) masked, None on #DE.
pub(crate) fn idiv_wide(high: u64, low: u64, d: u64, size: u32) -> Option<(u64, u64)> {
    let m = mask(size);
    let bits = size * 8;
    let d = i128::from(sext(d, size));
    if d == 0 {
        return None;
    }
    let unsigned = (u128::from(high & m) << bits) | u128::from(low & m);
    // Sign-extend the 2*bits-wide dividend.
    let shift = 128 - 2 * bits;
    let n = ((unsigned << shift) as i128) >> shift;
    let q = n.checked_div(d)?;
    let r = n.checked_rem(d)?;
    let min = -(1i128 << (bits - 1));
    let max = (1i128 << (bits - 1)) - 1;
    (min..=max)
        .contains(&q)
        .then_some((q as u64 & m, r as u64 & m))
}
