//! The private write overlay: bytes the emulated code wrote, by 4 KiB page with a bit per
//! byte, and scratch regions that are never read from guest memory.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::Memory;

const PAGE: u64 = 4096;

#[derive(Clone)]
struct Page {
    data: [u8; PAGE as usize],
    /// One bit per byte: written.
    valid: [u64; PAGE as usize / 64],
}

impl Page {
    fn is_valid(&self, off: usize) -> bool {
        self.valid[off / 64] & (1 << (off % 64)) != 0
    }
}

/// Page numbers hash by one multiplication: SipHash's DoS resistance buys nothing here, and
/// every memory operand looks a page up.
#[derive(Default, Clone, Copy)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Clone, Default)]
pub(crate) struct Overlay {
    pages: HashMap<u64, Box<Page>, BuildHasherDefault<PageHasher>>,
    /// (start, end exclusive) of scratch regions.
    scratch: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("pages", &self.pages.len())
            .field("scratch", &self.scratch)
            .finish()
    }
}

impl Overlay {
    /// Forgets every write and scratch region.
    pub(crate) fn clear(&mut self) {
        self.pages.clear();
        self.scratch.clear();
    }

    pub(crate) fn add_scratch(&mut self, base: u64, len: u64) {
        if len > 0 {
            self.scratch.push((base, base.saturating_add(len)));
        }
    }

    fn in_scratch(&self, addr: u64) -> bool {
        self.scratch.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    fn touches_scratch(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        self.scratch.iter().any(|&(s, e)| start < e && s < end)
    }

    /// Fills `buf` from `addr`: overlay bytes, scratch zeroes, the rest from `mem`.
    /// On failure, the address `mem` could not read.
    pub(crate) fn read(&self, mem: &mut dyn Memory, addr: u64, buf: &mut [u8]) -> Result<(), u64> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let in_page = (PAGE - (a % PAGE)) as usize;
            let n = in_page.min(buf.len() - done);
            self.read_in_page(mem, a, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// `buf` lies within one page.
    fn read_in_page(&self, mem: &mut dyn Memory, addr: u64, buf: &mut [u8]) -> Result<(), u64> {
        let page = self.pages.get(&(addr / PAGE));
        let scratch = self.touches_scratch(addr, buf.len() as u64);
        if page.is_none() && !scratch {
            return mem.read(addr, buf).map_err(|_| addr);
        }
        let off = (addr % PAGE) as usize;
        // Bytes neither written nor scratch come from memory, one run at a time.
        let mut i = 0;
        while i < buf.len() {
            let covered = |j: usize| {
                page.is_some_and(|p| p.is_valid(off + j))
                    || (scratch && self.in_scratch(addr + j as u64))
            };
            if covered(i) {
                buf[i] = page
                    .filter(|p| p.is_valid(off + i))
                    .map_or(0, |p| p.data[off + i]);
                i += 1;
                continue;
            }
            let start = i;
            while i < buf.len() && !covered(i) {
                i += 1;
            }
            let a = addr + start as u64;
            mem.read(a, &mut buf[start..i]).map_err(|_| a)?;
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, addr: u64, bytes: &[u8]) {
        let mut done = 0usize;
        while done < bytes.len() {
            let a = addr.wrapping_add(done as u64);
            let off = (a % PAGE) as usize;
            let n = (PAGE as usize - off).min(bytes.len() - done);
            let page = self.pages.entry(a / PAGE).or_insert_with(|| {
                Box::new(Page {
                    data: [0; PAGE as usize],
                    valid: [0; PAGE as usize / 64],
                })
            });
            page.data[off..off + n].copy_from_slice(&bytes[done..done + n]);
            for o in off..off + n {
                page.valid[o / 64] |= 1 << (o % 64);
            }
            done += n;
        }
    }
}
