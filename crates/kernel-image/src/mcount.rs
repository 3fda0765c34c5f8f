//! The functions ftrace can trace: the kernel's mcount location table, as
//! the guest's `available_filter_functions` lists it.
//!
//! The build records every `call __fentry__` site in `__mcount_loc`, which
//! the linker script places in `.init.data` between the symbols
//! `__start_mcount_loc` and `__stop_mcount_loc` (little-endian u64
//! link-time addresses). At boot the kernel drops the sites in init text
//! (freed after boot) and names a site more than `FTRACE_MCOUNT_MAX_OFFSET`
//! bytes into its symbol `__ftrace_invalid_address___N` (the left-over body
//! of a weak function another definition replaced): neither is a function
//! a user can name.

use crate::{KernelSections, KernelSymbols, Symbol};

/// How far into its symbol a site may be: 0, or past an `endbr64` (4
/// bytes) where the kernel is built with IBT.
const MAX_SITE_OFFSET: u64 = 4;

/// The sections [`traceable`] reads.
pub const SECTIONS: [&str; 1] = [".init.data"];

/// The traceable functions, in address order, one per site (a name can
/// appear more than once, as static functions of different files do);
/// `None` when the image has no mcount table where this looks for it.
pub fn traceable<'s>(
    sections: &KernelSections,
    symbols: &'s KernelSymbols,
) -> Option<Vec<&'s Symbol>> {
    let data = sections.get(".init.data")?;
    let start = symbols.lookup("__start_mcount_loc")?.addr;
    let stop = symbols.lookup("__stop_mcount_loc")?.addr;
    let from = usize::try_from(start.checked_sub(data.addr)?).ok()?;
    let to = usize::try_from(stop.checked_sub(data.addr)?).ok()?;
    let table = data.data.get(from..to)?;
    let init = match (symbols.lookup("_sinittext"), symbols.lookup("_einittext")) {
        (Some(a), Some(b)) => a.addr..b.addr,
        _ => 0..0,
    };
    let mut out: Vec<&Symbol> = table
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .filter(|site| *site != 0 && !init.contains(site))
        .filter_map(|site| symbols.symbolize(site))
        .filter(|(_, offset)| *offset <= MAX_SITE_OFFSET)
        .map(|(sym, _)| sym)
        .collect();
    out.sort_by_key(|s| s.addr);
    out.dedup_by_key(|s| s.addr);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Section;

    fn sym(name: &str, addr: u64) -> Symbol {
        Symbol {
            name: name.into(),
            addr,
            kind: 't',
        }
    }

    #[test]
    fn sites_in_init_text_or_deep_in_a_symbol_are_not_traceable() {
        let base = 0xffff_ffff_8300_0000u64;
        let symbols = KernelSymbols::from_symbols(vec![
            sym("_stext", 0x1000),
            sym("vfs_read", 0x1000),
            sym("weak_leftover_host", 0x2000),
            sym("endbr_fn", 0x3000),
            sym("_sinittext", 0x4000),
            sym("start_kernel", 0x4000),
            sym("_einittext", 0x5000),
            Symbol {
                name: "__start_mcount_loc".into(),
                addr: base + 16,
                kind: 'D',
            },
            Symbol {
                name: "__stop_mcount_loc".into(),
                addr: base + 16 + 5 * 8,
                kind: 'D',
            },
        ]);
        let mut data = vec![0xaa; 16];
        for site in [0x1000u64, 0x2040, 0x3004, 0x4000, 0] {
            data.extend_from_slice(&site.to_le_bytes());
        }
        data.extend_from_slice(&[0xbb; 8]);
        let sections = KernelSections::from_sections(vec![(
            ".init.data".into(),
            Some(Section { addr: base, data }),
        )]);
        let names: Vec<&str> = traceable(&sections, &symbols)
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        // `_stext` and `vfs_read` share an address: the first alias, as
        // the kernel names it.
        assert_eq!(names, ["_stext", "endbr_fn"]);
        // No table: None, not an empty list.
        let none = KernelSections::from_sections(Vec::new());
        assert!(traceable(&none, &symbols).is_none());
    }
}
