//! cgroup v2 paths, found as the kernel's `kernfs_find_and_get_node_by_id()`
//! finds them: the default hierarchy's id table, then the kernfs parents.

use crate::layout::CgroupPathLayout;
use crate::*;

/// Deepest cgroup nesting `cgroup_path()` follows: a deeper chain of
/// parents is taken for a corrupt (cyclic) one.
const MAX_CGROUP_DEPTH: usize = 128;
/// Longest kernfs node name read (the kernel's NAME_MAX).
const MAX_KERNFS_NAME: usize = 255;
/// Radix tree levels: 6 bits each, so 11 cover a 64-bit index.
const MAX_RADIX_LEVELS: usize = 11;

/// [`GuestKernel::cgroup_path`] over any memory, with the kernel's layout
/// and KASLR slide.
pub(crate) fn cgroup_path_in<M: GuestMemory + ?Sized>(
    client: &mut M,
    l: &CgroupPathLayout,
    slide: u64,
    id: u64,
) -> Result<Option<String>, GuestError> {
    let kf_root = read_u64(
        client,
        l.dfl_root.wrapping_add(slide).wrapping_add(l.root_kf_root),
    )?;
    let idr = kf_root.wrapping_add(l.kf_root_ino_idr);
    let base = u64::from(read_u32(client, idr.wrapping_add(l.idr_base))?);
    // `idr_find(&root->ino_idr, (u32)id)`: the low 32 bits are the inode
    // number; the whole id is checked against the node found.
    let Some(index) = (id & 0xffff_ffff).checked_sub(base) else {
        return Ok(None);
    };
    let head = read_u64(client, idr.wrapping_add(l.idr_rt).wrapping_add(l.xa_head))?;
    let Some(kn) = radix_lookup(client, l, head, index)? else {
        return Ok(None);
    };
    if read_u64(client, kn.wrapping_add(l.kn_id))? != id {
        return Ok(None);
    }
    let mut names = Vec::new();
    let mut node = kn;
    loop {
        let parent = read_u64(client, node.wrapping_add(l.kn_parent))?;
        if parent == 0 {
            break;
        }
        if names.len() == MAX_CGROUP_DEPTH {
            return Err(GuestError::Corrupt(format!(
                "cgroup {id}: more than {MAX_CGROUP_DEPTH} parents (a cycle?)"
            )));
        }
        let name = read_u64(client, node.wrapping_add(l.kn_name))?;
        names.push(read_cstr(client, name, MAX_KERNFS_NAME)?);
        node = parent;
    }
    names.reverse();
    Ok(Some(format!("/{}", names.join("/"))))
}

/// The radix tree (xarray) lookup of `radix_tree_lookup()`: an internal
/// entry (low bits `10`) is a node, whose `shift` says which 6 bits of
/// the index pick the next slot; any other entry is the value.
pub(crate) fn radix_lookup<M: GuestMemory + ?Sized>(
    client: &mut M,
    l: &CgroupPathLayout,
    head: u64,
    index: u64,
) -> Result<Option<u64>, GuestError> {
    const INTERNAL: u64 = 2;
    // Internal entries below this are retry and sibling markers, not
    // nodes.
    const FIRST_NODE: u64 = 4096;
    let is_internal = |e: u64| e & 3 == INTERNAL;
    let mut entry = head;
    if !is_internal(entry) {
        // A lone entry at the head holds index 0 only.
        return Ok((index == 0 && entry != 0).then_some(entry));
    }
    for level in 0..MAX_RADIX_LEVELS {
        if entry <= FIRST_NODE {
            return Ok(None);
        }
        let node = entry - INTERNAL;
        let mut shift = [0u8];
        client.read(node.wrapping_add(l.node_shift), &mut shift)?;
        let shift = u32::from(shift[0]);
        if shift >= 64 || (level == 0 && shift + 6 < 64 && index >> (shift + 6) != 0) {
            // Past the tree's largest index (or not a radix node).
            return Ok(None);
        }
        let slot = (index >> shift) & 63;
        entry = read_u64(
            client,
            node.wrapping_add(l.node_slots).wrapping_add(8 * slot),
        )?;
        if shift == 0 {
            return Ok((!is_internal(entry) && entry != 0).then_some(entry));
        }
        if !is_internal(entry) {
            return Ok(None);
        }
    }
    Err(GuestError::Corrupt(format!(
        "cgroup id table deeper than {MAX_RADIX_LEVELS} levels"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Guest memory of a few hand-placed values: the pages they are on read
    /// as zeros elsewhere; other pages are unmapped.
    #[derive(Default)]
    struct FakeMemory(BTreeMap<u64, u8>);

    impl FakeMemory {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn mapped(&self, addr: u64) -> bool {
            let page = addr & !0xfff;
            self.0.range(page..page + 0x1000).next().is_some()
        }
        fn put_u64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    impl GuestMemory for FakeMemory {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
            for (i, b) in buf.iter_mut().enumerate() {
                let at = addr.wrapping_add(i as u64);
                if !self.mapped(at) {
                    return Err(GuestError::Memory {
                        addr: at,
                        reason: "unmapped".into(),
                    });
                }
                *b = self.0.get(&at).copied().unwrap_or(0);
            }
            Ok(())
        }
    }

    const LAYOUT: CgroupPathLayout = CgroupPathLayout {
        dfl_root: 0x1000,
        root_kf_root: 0x8,
        kf_root_ino_idr: 0x10,
        idr_rt: 0,
        idr_base: 0x10,
        xa_head: 0x8,
        node_shift: 0,
        node_slots: 0x28,
        kn_id: 0x60,
        kn_parent: 0x10,
        kn_name: 0x18,
    };
    const KF_ROOT: u64 = 0x2000;
    const IDR: u64 = KF_ROOT + 0x10;
    const INTERNAL: u64 = 2;

    /// A kernfs node at `at` named `name`, with `id` and `parent`.
    fn node(m: &mut FakeMemory, at: u64, id: u64, parent: u64, name: &str) {
        m.put_u64(at + LAYOUT.kn_id, id);
        m.put_u64(at + LAYOUT.kn_parent, parent);
        m.put_u64(at + LAYOUT.kn_name, at + 0x200);
        m.put(at + 0x200, name.as_bytes());
        m.put(at + 0x200 + name.len() as u64, &[0]);
    }

    /// A radix node at `at` with `shift` and the given slots (others empty).
    fn radix_node(m: &mut FakeMemory, at: u64, shift: u8, slots: &[(u64, u64)]) {
        m.put(at + LAYOUT.node_shift, &[shift]);
        for slot in 0..64 {
            m.put_u64(at + LAYOUT.node_slots + 8 * slot, 0);
        }
        for &(slot, entry) in slots {
            m.put_u64(at + LAYOUT.node_slots + 8 * slot, entry);
        }
    }

    /// A hierarchy `/` (id 1) > `probed` (id 5) > `inner` (id 67), its id
    /// table two levels deep (67 = slot 1, then slot 3).
    fn hierarchy() -> FakeMemory {
        let mut m = FakeMemory::default();
        m.put_u64(LAYOUT.dfl_root + LAYOUT.root_kf_root, KF_ROOT);
        m.put(IDR + LAYOUT.idr_base, &0u32.to_le_bytes());
        let (root, probed, inner) = (0x10_0000, 0x11_0000, 0x12_0000);
        node(&mut m, root, 1, 0, "");
        node(&mut m, probed, 5, root, "probed");
        node(&mut m, inner, 67, probed, "inner");
        let (top, low0, low1) = (0x20_0000, 0x21_0000, 0x22_0000);
        m.put_u64(IDR + LAYOUT.idr_rt + LAYOUT.xa_head, top + INTERNAL);
        radix_node(
            &mut m,
            top,
            6,
            &[(0, low0 + INTERNAL), (1, low1 + INTERNAL)],
        );
        radix_node(&mut m, low0, 0, &[(1, root), (5, probed)]);
        radix_node(&mut m, low1, 0, &[(3, inner)]);
        m
    }

    fn path(m: &mut FakeMemory, id: u64) -> Result<Option<String>, GuestError> {
        cgroup_path_in(m, &LAYOUT, 0, id)
    }

    #[test]
    fn cgroup_ids_resolve_to_paths_through_the_id_table() {
        let mut m = hierarchy();
        assert_eq!(path(&mut m, 1).unwrap().as_deref(), Some("/"));
        assert_eq!(path(&mut m, 5).unwrap().as_deref(), Some("/probed"));
        assert_eq!(path(&mut m, 67).unwrap().as_deref(), Some("/probed/inner"));
        // An empty slot, an index past the tree, a node whose id differs in
        // its high bits (a reused inode number).
        assert_eq!(path(&mut m, 6).unwrap(), None);
        assert_eq!(path(&mut m, 64 * 64).unwrap(), None);
        assert_eq!(path(&mut m, (1 << 32) | 5).unwrap(), None);
    }

    #[test]
    fn a_lone_head_entry_holds_index_zero_only() {
        let mut m = hierarchy();
        m.put_u64(IDR + LAYOUT.idr_base, 5);
        m.put_u64(IDR + LAYOUT.idr_rt + LAYOUT.xa_head, 0x11_0000);
        assert_eq!(path(&mut m, 5).unwrap().as_deref(), Some("/probed"));
        assert_eq!(path(&mut m, 6).unwrap(), None);
        assert_eq!(path(&mut m, 4).unwrap(), None);
    }

    #[test]
    fn a_cyclic_parent_chain_is_an_error_not_a_hang() {
        let mut m = hierarchy();
        // `inner`'s parent is itself.
        m.put_u64(0x12_0000 + LAYOUT.kn_parent, 0x12_0000);
        let err = path(&mut m, 67).unwrap_err().to_string();
        assert!(err.contains("more than 128 parents"), "{err}");
    }

    #[test]
    fn a_cyclic_id_table_is_an_error_not_a_hang() {
        let mut m = hierarchy();
        // The top node's slot 1 points back at the top node.
        m.put_u64(0x20_0000 + LAYOUT.node_slots + 8, 0x20_0000 + INTERNAL);
        let err = path(&mut m, 67).unwrap_err().to_string();
        assert!(err.contains("deeper than 11 levels"), "{err}");
    }

    #[test]
    fn wild_pointers_and_endless_names_are_bounded() {
        let mut m = hierarchy();
        // `probed`'s name runs on for a page and more without a NUL: cut at
        // 255 bytes.
        let name = 0x11_0000 + 0x200;
        m.put(name, &[b'x'; 5000]);
        let long = path(&mut m, 5).unwrap().unwrap();
        assert_eq!(long.len(), 1 + MAX_KERNFS_NAME);
        // `inner`'s parent is a wild pointer: a read error naming it.
        m.put_u64(0x12_0000 + LAYOUT.kn_parent, 0xdead_0000_beef);
        let err = path(&mut m, 67).unwrap_err().to_string();
        assert!(err.contains("0xdead0000"), "{err}");
    }
}
