//! Reading and checking the raw `.BTF` section: the header, the string
//! table, and every type record, before any query trusts them.

use crate::*;

/// A record header read from `words`.
#[derive(Clone, Copy)]
pub(crate) struct Hdr {
    pub(crate) name: u32,
    pub(crate) kind: Kind,
    pub(crate) vlen: usize,
    pub(crate) kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    pub(crate) st: u32,
    /// Word index of the kind-specific data that follows the header.
    pub(crate) extra: usize,
}

/// Words of kind-specific data after the header.
pub(crate) fn extra_words(kind: Kind, vlen: usize) -> usize {
    use Kind::*;
    match kind {
        Int | Var | DeclTag => 1,
        Array => 3,
        Struct | Union | Datasec | Enum64 => 3 * vlen,
        Enum | FuncProto => 2 * vlen,
        _ => 0,
    }
}

impl Btf {
    /// Parses and checks raw `.BTF` section bytes (either byte order).
    pub fn parse(bytes: &[u8]) -> Result<Btf, Error> {
        if bytes.len() < 8 {
            return Err(Error::Truncated("shorter than the BTF header"));
        }
        let big = match u16::from_le_bytes([bytes[0], bytes[1]]) {
            MAGIC => false,
            m if m.swap_bytes() == MAGIC => true,
            m => return Err(Error::BadMagic(m)),
        };
        let rd = |o: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(o..o.checked_add(4)?)?.try_into().ok()?;
            Some(if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            })
        };
        if bytes[2] != 1 {
            return Err(Error::Version(bytes[2]));
        }
        let hdr_len = rd(4).ok_or(Error::Truncated("header"))? as usize;
        if hdr_len < HEADER_LEN {
            return Err(Error::Header("header shorter than 24 bytes"));
        }
        if hdr_len > bytes.len() {
            return Err(Error::Truncated("header longer than the data"));
        }
        let field = |o| rd(o).map(|v| v as usize).ok_or(Error::Truncated("header"));
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let body = &bytes[hdr_len..];
        let section = |off: usize, len: usize, what| {
            off.checked_add(len)
                .and_then(|end| body.get(off..end))
                .ok_or(Error::Truncated(what))
        };
        let types = section(type_off, type_len, "type section past the end")?;
        let strs = section(str_off, str_len, "string section past the end")?;
        if type_len % 4 != 0 {
            return Err(Error::Header("type section length not a multiple of 4"));
        }
        if str_len == 0 || strs[0] != 0 || strs[str_len - 1] != 0 {
            return Err(Error::Strings("must start and end with NUL"));
        }
        let strings = String::from_utf8(strs.to_vec()).map_err(|_| Error::Strings("not UTF-8"))?;
        let words: Vec<u32> = types
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big {
                    u32::from_be_bytes(b)
                } else {
                    u32::from_le_bytes(b)
                }
            })
            .collect();

        // Pass 1: record boundaries, kinds and names.
        let mut starts = vec![0u32];
        let mut pos = 0usize;
        while pos < words.len() {
            let id = starts.len() as TypeId;
            let bad = |what| Error::BadType { id, what };
            if words.len() - pos < 3 {
                return Err(bad("record past the end of the type section"));
            }
            let info = words[pos + 1];
            let kind = Kind::from_raw((info >> 24) & 0x1f).ok_or(bad("unknown kind"))?;
            let vlen = (info & 0xffff) as usize;
            let end = pos + 3 + extra_words(kind, vlen);
            if end > words.len() {
                return Err(bad("record past the end of the type section"));
            }
            starts.push(pos as u32);
            pos = end;
        }
        let mut btf = Btf {
            words,
            starts,
            strings,
            by_name: Vec::new(),
        };
        // Pass 2: names and type references.
        for id in 1..btf.starts.len() as TypeId {
            btf.check(id)?;
        }
        // Each name is found once here, not at every comparison.
        let mut named: Vec<(&str, TypeId)> = (1..btf.starts.len() as TypeId)
            .map(|id| (btf.name_or_empty(id), id))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        named.sort_unstable();
        let by_name = named.into_iter().map(|(_, id)| id).collect();
        btf.by_name = by_name;
        Ok(btf)
    }

    pub(crate) fn check(&self, id: TypeId) -> Result<(), Error> {
        let bad = |what| Error::BadType { id, what };
        let h = self.hdr(id)?;
        self.str_at(h.name)
            .ok_or(bad("name outside the string section"))?;
        let n = self.starts.len() as u64;
        let ty_ok = |t: u32| (t as u64) < n;
        let w = |i: usize| self.words.get(h.extra + i).copied().unwrap_or(0);
        use Kind::*;
        match h.kind {
            Void => {}
            Ptr | Typedef | Volatile | Const | Restrict | TypeTag | Var | DeclTag => {
                if !ty_ok(h.st) {
                    return Err(bad("refers to a type id past the end"));
                }
            }
            Func => {
                if !ty_ok(h.st) || self.kind(h.st)? != FuncProto {
                    return Err(bad("FUNC does not refer to a FUNC_PROTO"));
                }
            }
            FuncProto => {
                if !ty_ok(h.st) {
                    return Err(bad("return type id past the end"));
                }
                for i in 0..h.vlen {
                    self.str_at(w(2 * i))
                        .ok_or(bad("parameter name outside the string section"))?;
                    if !ty_ok(w(2 * i + 1)) {
                        return Err(bad("parameter type id past the end"));
                    }
                }
            }
            Array => {
                if !ty_ok(w(0)) || !ty_ok(w(1)) {
                    return Err(bad("array element or index type id past the end"));
                }
            }
            Struct | Union => {
                for i in 0..h.vlen {
                    self.str_at(w(3 * i))
                        .ok_or(bad("member name outside the string section"))?;
                    if !ty_ok(w(3 * i + 1)) {
                        return Err(bad("member type id past the end"));
                    }
                }
            }
            Enum | Enum64 => {
                let step = if h.kind == Enum { 2 } else { 3 };
                for i in 0..h.vlen {
                    self.str_at(w(step * i))
                        .ok_or(bad("enumerator name outside the string section"))?;
                }
            }
            Datasec => {
                for i in 0..h.vlen {
                    if !ty_ok(w(3 * i)) {
                        return Err(bad("section variable type id past the end"));
                    }
                }
            }
            Int | Fwd | Float => {}
        }
        Ok(())
    }

    pub(crate) fn hdr(&self, id: TypeId) -> Result<Hdr, Error> {
        if id == 0 {
            return Ok(Hdr {
                name: 0,
                kind: Kind::Void,
                vlen: 0,
                kind_flag: false,
                st: 0,
                extra: 0,
            });
        }
        let start = *self.starts.get(id as usize).ok_or(Error::NoType(id))? as usize;
        let (Some(&name), Some(&info), Some(&st)) = (
            self.words.get(start),
            self.words.get(start + 1),
            self.words.get(start + 2),
        ) else {
            return Err(Error::NoType(id));
        };
        Ok(Hdr {
            name,
            kind: Kind::from_raw((info >> 24) & 0x1f).ok_or(Error::BadType {
                id,
                what: "unknown kind",
            })?,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            st,
            extra: start + 3,
        })
    }

    /// Word `i` of a record's kind-specific data (checked at parse time to exist).
    pub(crate) fn extra(&self, h: &Hdr, i: usize) -> u32 {
        self.words.get(h.extra + i).copied().unwrap_or(0)
    }

    /// The NUL-terminated string at `off`.
    pub(crate) fn str_at(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        Some(&rest[..rest.find('\0')?])
    }

    pub(crate) fn name_or_empty(&self, id: TypeId) -> &str {
        self.hdr(id)
            .ok()
            .and_then(|h| self.str_at(h.name))
            .unwrap_or("")
    }
}
