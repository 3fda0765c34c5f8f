//! The USDT probes of a user ELF: `<sys/sdt.h>`'s `STAP_PROBEn` (and
//! `DTRACE_PROBEn`) leave a `nop` in the code and an ELF note in
//! `.note.stapsdt` (owner "stapsdt", type 3) saying where it is, the
//! address of its semaphore (0: none), and how to find each argument.
//!
//! The note's description is three addresses (the probe's pc, the link-time
//! address of `.stapsdt.base`, the semaphore) then three NUL-terminated
//! strings (provider, name, arguments). SystemTap's
//! UserSpaceProbeImplementation: where a file was prelinked, the
//! `.stapsdt.base` section's address differs from the note's base by how
//! much the code moved, and the pc moves by the same.

use object::read::elf::{ElfFile64, FileHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection};

/// The note type of a USDT probe (`NT_STAPSDT`).
const NT_STAPSDT: u32 = 3;

/// One USDT probe location as its note gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdtProbe {
    pub provider: String,
    pub name: String,
    /// The probe's `nop`, as the ELF's symbols give addresses (adjusted by
    /// `.stapsdt.base`).
    pub pc: u64,
    /// The address of the `unsigned short` counter a probe with a
    /// semaphore is guarded by (`if (PROVIDER_NAME_ENABLED())`); 0: none.
    pub semaphore: u64,
    /// The arguments, `SIZE@OPERAND` separated by spaces (`-4@%edi
    /// 8@-16(%rbp)`); empty for none.
    pub args: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdtError {
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error(".note.stapsdt: {0}")]
    Notes(String),
    #[error(".note.stapsdt note {index}: {len} bytes, fewer than its three 8-byte addresses")]
    Truncated { index: usize, len: usize },
    #[error(".note.stapsdt note {index}: its {field} string has no terminating NUL")]
    Unterminated { index: usize, field: &'static str },
    #[error(".note.stapsdt note {index}: its {field} is not UTF-8")]
    NotUtf8 { index: usize, field: &'static str },
}

/// The USDT probes of the 64-bit ELF `bytes`, in note order; none for a
/// file without `.note.stapsdt`.
pub fn sdt_probes(bytes: &[u8]) -> Result<Vec<SdtProbe>, SdtError> {
    let file =
        ElfFile64::<Endianness>::parse(bytes).map_err(|e| SdtError::NotElf(e.to_string()))?;
    let endian = file.endian();
    let base = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let Some(section) = file.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    let header = section.elf_section_header();
    let Some(mut notes) = header
        .notes(endian, bytes)
        .map_err(|e| SdtError::Notes(e.to_string()))?
    else {
        return Err(SdtError::Notes(
            "the section is not of type SHT_NOTE".into(),
        ));
    };
    let mut probes = Vec::new();
    let mut index = 0;
    while let Some(note) = notes.next().map_err(|e| SdtError::Notes(e.to_string()))? {
        if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
            continue;
        }
        let mut probe = parse_desc(note.desc(), index, file.elf_header().is_little_endian())?;
        if let Some(section_base) = base {
            // pc - note_base + section_base, in wrapping arithmetic: a
            // prelinked file moved both by the same.
            probe.0.pc = probe.0.pc.wrapping_add(section_base.wrapping_sub(probe.1));
        }
        probes.push(probe.0);
        index += 1;
    }
    Ok(probes)
}

/// A note's description: the probe and the note's base address.
fn parse_desc(desc: &[u8], index: usize, little: bool) -> Result<(SdtProbe, u64), SdtError> {
    if desc.len() < 24 {
        return Err(SdtError::Truncated {
            index,
            len: desc.len(),
        });
    }
    let word = |i: usize| {
        let b: [u8; 8] = desc[i * 8..i * 8 + 8].try_into().expect("8 bytes");
        if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    };
    let (pc, base, semaphore) = (word(0), word(1), word(2));
    let mut rest = &desc[24..];
    let mut string = |field: &'static str| -> Result<String, SdtError> {
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(SdtError::Unterminated { index, field })?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| SdtError::NotUtf8 { index, field })?
            .to_string();
        rest = &rest[end + 1..];
        Ok(s)
    };
    let provider = string("provider")?;
    let name = string("name")?;
    let args = string("arguments")?;
    Ok((
        SdtProbe {
            provider,
            name,
            pc,
            semaphore,
            args,
        },
        base,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::Object as WObject;
    use object::{Architecture, BinaryFormat, SectionKind};

    fn desc(pc: u64, base: u64, sem: u64, strings: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        for w in [pc, base, sem] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(strings);
        d
    }

    #[test]
    fn malformed_descriptions_are_typed_errors() {
        let good = desc(0x401000, 0x500000, 0, b"p\0n\0-4@%edi\0");
        let (p, base) = parse_desc(&good, 0, true).unwrap();
        assert_eq!(
            (p.provider.as_str(), p.name.as_str(), p.args.as_str()),
            ("p", "n", "-4@%edi")
        );
        assert_eq!((p.pc, base, p.semaphore), (0x401000, 0x500000, 0));
        for n in 0..good.len() {
            let e = parse_desc(&good[..n], 3, true).unwrap_err();
            let expected = match n {
                0..24 => SdtError::Truncated { index: 3, len: n },
                24..26 => SdtError::Unterminated {
                    index: 3,
                    field: "provider",
                },
                26..28 => SdtError::Unterminated {
                    index: 3,
                    field: "name",
                },
                _ => SdtError::Unterminated {
                    index: 3,
                    field: "arguments",
                },
            };
            assert_eq!(e, expected, "{n} bytes");
        }
        let e = parse_desc(&desc(0, 0, 0, b"\xff\0n\0\0"), 0, true).unwrap_err();
        assert!(matches!(e, SdtError::NotUtf8 { .. }), "{e}");
    }

    /// An ELF whose `.note.stapsdt` holds `notes` (raw bytes) and whose
    /// `.stapsdt.base` is at its first section address.
    fn with_notes(notes: &[u8]) -> Vec<u8> {
        let mut obj = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let s = obj.add_section(Vec::new(), b".note.stapsdt".to_vec(), SectionKind::Note);
        obj.append_section_data(s, notes, 4);
        obj.write().unwrap()
    }

    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ty.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend_from_slice(desc);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n
    }

    #[test]
    fn notes_of_other_owners_are_skipped_and_bad_ones_are_errors_not_panics() {
        let good = desc(0x10, 0, 0, b"p\0n\0\0");
        let mut notes = note(b"GNU", 3, &[0; 8]);
        notes.extend(note(b"stapsdt", 3, &good));
        let probes = sdt_probes(&with_notes(&notes)).unwrap();
        assert_eq!(probes.len(), 1);
        assert_eq!((probes[0].pc, probes[0].args.as_str()), (0x10, ""));
        let bad = note(b"stapsdt", 3, &desc(0x10, 0, 0, b"p\0n"));
        let e = sdt_probes(&with_notes(&bad)).unwrap_err();
        assert_eq!(
            e,
            SdtError::Unterminated {
                index: 0,
                field: "name"
            }
        );
        let e = sdt_probes(&with_notes(&note(b"stapsdt", 3, &[1; 20]))).unwrap_err();
        assert!(matches!(e, SdtError::Truncated { len: 20, .. }), "{e}");
        // A note header claiming more than the section holds.
        let mut cut = note(b"stapsdt", 3, &good);
        cut[4] = 200;
        assert!(matches!(
            sdt_probes(&with_notes(&cut)).unwrap_err(),
            SdtError::Notes(_)
        ));
        assert!(sdt_probes(b"garbage").is_err());
        let whole = with_notes(&notes);
        for n in 0..whole.len() {
            let _ = sdt_probes(&whole[..n]);
        }
    }

    #[test]
    fn a_program_built_with_sdt_h_has_its_probes_at_nops() {
        // Needs a C compiler and <sys/sdt.h> (systemtap-sdt-dev, as the
        // default guest's usdt program does); skip quietly without.
        let dir = std::env::temp_dir().join(format!("sdt-notes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("t.c");
        let bin = dir.join("t");
        std::fs::write(
            &src,
            "#include <sys/sdt.h>\n\
             int main(int c, char **v) { (void)v; long x = c * 7;\n\
               STAP_PROBE2(prov, two, c, x); DTRACE_PROBE(prov, none); return 0; }\n",
        )
        .unwrap();
        let built = std::process::Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .is_ok_and(|o| o.status.success());
        if !built {
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let bytes = std::fs::read(&bin).unwrap();
        let probes = sdt_probes(&bytes).unwrap();
        let names: Vec<(&str, &str)> = probes
            .iter()
            .map(|p| (p.provider.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(names, [("prov", "two"), ("prov", "none")]);
        assert_eq!(probes[0].args.split(' ').count(), 2, "{:?}", probes[0]);
        assert!(probes[0].args.starts_with("-4@"), "{:?}", probes[0]);
        assert_eq!(probes[1].args, "");
        assert!(probes.iter().all(|p| p.semaphore == 0));
        // Each pc is the probe's nop in the file's code.
        let elf = crate::UserElf::parse(&bin, bytes).unwrap();
        for p in &probes {
            assert_eq!(elf.code(p.pc, 1), Some(&[0x90][..]), "{p:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
