//! Register map from the target description (`target.xml` + `xi:include`s)
//! and decoded register sets.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Error;

/// One register of the target description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterInfo {
    pub name: String,
    /// Number used by `p`/`P`.
    pub regnum: u32,
    pub bitsize: u32,
    /// Byte offset in the `g` reply.
    pub offset: usize,
    /// `group` attribute, if any (e.g. `general`, `float`, `vector`, `system`).
    pub group: Option<String>,
    /// `type` attribute (`int` when absent), e.g. `int64`, `code_ptr`.
    pub reg_type: String,
    /// Name of the enclosing `<feature>`, e.g. `org.gnu.gdb.i386.core`.
    pub feature: String,
}

impl RegisterInfo {
    /// Size in bytes (bitsize rounded up).
    pub fn size(&self) -> usize {
        (self.bitsize as usize).div_ceil(8)
    }
}

/// Registers ordered by `regnum`, with offsets into the `g` packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterMap {
    regs: Vec<RegisterInfo>,
    by_name: HashMap<String, usize>,
    /// Total size of all registers in bytes (the full `g` size).
    total: usize,
}

const MAX_INCLUDE_DEPTH: usize = 8;
const MAX_DOCUMENTS: usize = 64;
const MAX_REGS: usize = 8192;

impl RegisterMap {
    /// Looks a register up by name (as in the target description).
    pub fn lookup(&self, name: &str) -> Option<&RegisterInfo> {
        self.by_name.get(name).map(|&i| &self.regs[i])
    }

    /// Index of a register for [`Registers::get_index`] (skips the name hash
    /// on hot paths).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn by_regnum(&self, regnum: u32) -> Option<&RegisterInfo> {
        self.regs
            .binary_search_by_key(&regnum, |r| r.regnum)
            .ok()
            .map(|i| &self.regs[i])
    }

    /// Registers in `regnum` (= `g` packet) order.
    pub fn iter(&self) -> std::slice::Iter<'_, RegisterInfo> {
        self.regs.iter()
    }

    pub fn len(&self) -> usize {
        self.regs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// Size in bytes of a full `g` reply according to the map.
    pub fn g_size(&self) -> usize {
        self.total
    }

    /// Builds the map from a target description. `fetch(annex)` returns the
    /// text of an included document (the client reads it with
    /// `qXfer:features:read:ANNEX`).
    pub fn from_target_xml(
        root: &str,
        fetch: &mut dyn FnMut(&str) -> Result<String, Error>,
    ) -> Result<RegisterMap, Error> {
        let mut b = Builder {
            regs: Vec::new(),
            next_regnum: 0,
            documents: 1,
        };
        b.document("target.xml", root, "", 0, fetch)?;
        let mut regs = b.regs;
        regs.sort_by_key(|r| r.regnum);
        let mut offset = 0;
        let mut by_name = HashMap::with_capacity(regs.len());
        for (i, r) in regs.iter_mut().enumerate() {
            r.offset = offset;
            offset += r.size();
            by_name.entry(r.name.clone()).or_insert(i);
        }
        Ok(RegisterMap {
            regs,
            by_name,
            total: offset,
        })
    }
}

struct Builder {
    regs: Vec<RegisterInfo>,
    next_regnum: u32,
    documents: usize,
}

fn malformed(annex: &str, reason: impl std::fmt::Display) -> Error {
    Error::Malformed {
        packet: format!("target description {annex}"),
        reason: reason.to_string(),
    }
}

impl Builder {
    fn document(
        &mut self,
        annex: &str,
        text: &str,
        feature: &str,
        depth: usize,
        fetch: &mut dyn FnMut(&str) -> Result<String, Error>,
    ) -> Result<(), Error> {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let text = declare_xi(text);
        let doc = roxmltree::Document::parse_with_options(&text, opts)
            .map_err(|e| malformed(annex, e))?;
        self.node(annex, doc.root_element(), feature, depth, fetch)
    }

    fn node(
        &mut self,
        annex: &str,
        node: roxmltree::Node<'_, '_>,
        feature: &str,
        depth: usize,
        fetch: &mut dyn FnMut(&str) -> Result<String, Error>,
    ) -> Result<(), Error> {
        match node.tag_name().name() {
            "reg" => {
                if self.regs.len() >= MAX_REGS {
                    return Err(malformed(annex, "too many registers"));
                }
                let name = node
                    .attribute("name")
                    .ok_or_else(|| malformed(annex, "<reg> without name"))?;
                let bitsize: u32 = node
                    .attribute("bitsize")
                    .and_then(|b| b.trim().parse().ok())
                    .filter(|&b| b > 0 && b <= 65536)
                    .ok_or_else(|| {
                        malformed(annex, format!("<reg {name}> without valid bitsize"))
                    })?;
                let regnum = match node.attribute("regnum") {
                    Some(n) => n
                        .trim()
                        .parse()
                        .map_err(|_| malformed(annex, format!("<reg {name}> bad regnum")))?,
                    None => self.next_regnum,
                };
                self.next_regnum = regnum.saturating_add(1);
                self.regs.push(RegisterInfo {
                    name: name.to_string(),
                    regnum,
                    bitsize,
                    offset: 0,
                    group: node.attribute("group").map(str::to_string),
                    reg_type: node.attribute("type").unwrap_or("int").to_string(),
                    feature: feature.to_string(),
                });
            }
            "include" => {
                let href = node
                    .attribute("href")
                    .ok_or_else(|| malformed(annex, "<xi:include> without href"))?;
                if depth >= MAX_INCLUDE_DEPTH || self.documents >= MAX_DOCUMENTS {
                    return Err(malformed(annex, "xi:include nesting too deep"));
                }
                self.documents += 1;
                let text = fetch(href)?;
                self.document(href, &text, feature, depth + 1, fetch)?;
            }
            "feature" => {
                let name = node.attribute("name").unwrap_or("");
                for c in node.children().filter(|c| c.is_element()) {
                    self.node(annex, c, name, depth, fetch)?;
                }
            }
            // Type definitions carry no registers.
            "flags" | "vector" | "union" | "struct" | "enum" => {}
            _ => {
                for c in node.children().filter(|c| c.is_element()) {
                    self.node(annex, c, feature, depth, fetch)?;
                }
            }
        }
        Ok(())
    }
}

/// Stubs (QEMU among them) use `<xi:include>` without declaring the `xi`
/// prefix, which a namespace-aware parser rejects: declare it on the root
/// element when missing.
fn declare_xi(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("xi:") || text.contains("xmlns:xi") {
        return text.into();
    }
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find('<') {
        let at = i + p;
        if b.get(at + 1)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            let name_end = text[at + 1..]
                .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                .map_or(text.len(), |e| at + 1 + e);
            let mut s = String::with_capacity(text.len() + 48);
            s.push_str(&text[..name_end]);
            s.push_str(" xmlns:xi=\"http://www.w3.org/2001/XInclude\"");
            s.push_str(&text[name_end..]);
            return s.into();
        }
        i = at + 1;
    }
    text.into()
}

/// A decoded `g` reply: raw bytes in target order plus the register map.
#[derive(Clone, Debug)]
pub struct Registers {
    pub(crate) bytes: Vec<u8>,
    pub(crate) map: Arc<RegisterMap>,
}

impl Registers {
    /// An empty register set for [`crate::Client::read_registers_into`].
    pub fn new(map: Arc<RegisterMap>) -> Registers {
        Registers {
            bytes: Vec::new(),
            map,
        }
    }

    /// Value of a register of at most 64 bits, little-endian. `None` if the
    /// name is unknown, the register is wider than 64 bits, or the `g` reply
    /// was too short to contain it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.get_index(self.map.index_of(name)?)
    }

    /// Like [`Registers::get`] by [`RegisterMap::index_of`] index.
    pub fn get_index(&self, index: usize) -> Option<u64> {
        let info = self.map.regs.get(index)?;
        if info.bitsize > 64 {
            return None;
        }
        let raw = self.bytes.get(info.offset..info.offset + info.size())?;
        Some(le_u64(raw))
    }

    /// Raw bytes of a register (target byte order).
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        let info = self.map.lookup(name)?;
        self.bytes.get(info.offset..info.offset + info.size())
    }

    /// The whole decoded `g` reply.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn map(&self) -> &RegisterMap {
        &self.map
    }
}

pub(crate) fn le_u64(raw: &[u8]) -> u64 {
    raw.iter()
        .take(8)
        .rev()
        .fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target><architecture>i386:x86-64</architecture><xi:include href="core.xml"/><xi:include href="extra.xml"/></target>"#;
    const CORE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE feature SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.i386.core">
  <flags id="f" size="4"><field name="CF" start="0" end="0"/></flags>
  <reg name="rax" bitsize="64" type="int64" regnum="0"/>
  <reg name="rbx" bitsize="64"/>
  <reg name="eflags" bitsize="32" type="f"/>
  <reg name="st0" bitsize="80" type="i387_ext"/>
</feature>"#;
    const EXTRA: &str = r#"<feature name="x"><reg name="xmm0" bitsize="128" group="vector" regnum="10"/><reg name="cr3" bitsize="64"/></feature>"#;

    fn map() -> RegisterMap {
        let mut fetched = vec![];
        let m = RegisterMap::from_target_xml(TARGET, &mut |h| {
            fetched.push(h.to_string());
            match h {
                "core.xml" => Ok(CORE.into()),
                "extra.xml" => Ok(EXTRA.into()),
                _ => panic!(),
            }
        })
        .unwrap();
        assert_eq!(fetched, ["core.xml", "extra.xml"]);
        m
    }

    #[test]
    fn parses_includes_and_offsets() {
        let m = map();
        let names: Vec<_> = m
            .iter()
            .map(|r| (r.name.as_str(), r.regnum, r.offset))
            .collect();
        assert_eq!(
            names,
            [
                ("rax", 0, 0),
                ("rbx", 1, 8),
                ("eflags", 2, 16),
                ("st0", 3, 20),
                ("xmm0", 10, 30),
                ("cr3", 11, 46)
            ]
        );
        assert_eq!(m.g_size(), 54);
        let x = m.lookup("xmm0").unwrap();
        assert_eq!(x.group.as_deref(), Some("vector"));
        assert_eq!(x.feature, "x");
        assert_eq!(m.lookup("rbx").unwrap().reg_type, "int");
        assert_eq!(m.by_regnum(11).unwrap().name, "cr3");

        let mut bytes = vec![0u8; 54];
        bytes[16..20].copy_from_slice(&0x246u32.to_le_bytes());
        bytes[46..54].copy_from_slice(&0x1000u64.to_le_bytes());
        let r = Registers {
            bytes,
            map: Arc::new(m),
        };
        assert_eq!(r.get("eflags"), Some(0x246));
        assert_eq!(r.get("cr3"), Some(0x1000));
        assert_eq!(r.get("xmm0"), None);
        assert_eq!(r.raw("xmm0").unwrap().len(), 16);
        assert_eq!(r.get("nope"), None);
    }

    #[test]
    fn bad_xml_is_error() {
        for bad in [
            "<target",
            "<feature><reg bitsize=\"8\"/></feature>",
            "<feature><reg name=\"a\"/></feature>",
        ] {
            assert!(RegisterMap::from_target_xml(bad, &mut |_| Ok(String::new())).is_err());
        }
        // Self-including document: bounded.
        let looped = r#"<target><xi:include href="t.xml"/></target>"#;
        let e = RegisterMap::from_target_xml(looped, &mut |_| Ok(looped.into()));
        assert!(matches!(e, Err(Error::Malformed { .. })));
    }
}
