//! Reading and writing registers.

use super::*;

impl Client {
    pub fn read_registers(&mut self, thread: ThreadId) -> Result<Registers, Error> {
        let mut r = Registers::new(self.regmap.clone());
        self.read_registers_into(thread, &mut r)?;
        Ok(r)
    }

    /// Like [`Client::read_registers`], reusing `regs`' buffer.
    pub fn read_registers_into(
        &mut self,
        thread: ThreadId,
        regs: &mut Registers,
    ) -> Result<(), Error> {
        self.select_thread(b'g', thread)?;
        self.cmd.clear();
        self.cmd.push(b'g');
        self.exchange()?;
        self.check_error()?;
        let p = &self.dec.payload;
        if p.is_empty() || !p.len().is_multiple_of(2) {
            return Err(self.unexpected("hex register contents"));
        }
        if !Arc::ptr_eq(&regs.map, &self.regmap) {
            regs.map = self.regmap.clone();
        }
        regs.bytes.clear();
        regs.bytes.resize(p.len() / 2, 0);
        decode_hex_into(p, &mut regs.bytes).ok_or_else(|| Error::Malformed {
            packet: show(p),
            reason: "bad hex in `g` reply".into(),
        })
    }

    /// Reads one register (at most 64 bits, little-endian) with `p`, falling
    /// back to `g` if the stub does not implement `p`.
    pub fn read_register(&mut self, thread: ThreadId, name: &str) -> Result<u64, Error> {
        let info = self.regmap.lookup(name).ok_or_else(|| Error::Unsupported {
            feature: format!("register `{name}` (not in the target description)"),
        })?;
        if info.bitsize > 64 {
            return Err(Error::Unsupported {
                feature: format!("reading {}-bit register `{name}` as u64", info.bitsize),
            });
        }
        let regnum = info.regnum;
        if self.p_supported {
            let raw = self.read_register_raw_num(thread, regnum)?;
            if let Some(raw) = raw {
                return Ok(le_u64(raw));
            }
        }
        let regs = self.read_registers(thread)?;
        regs.get(name).ok_or_else(|| Error::Unexpected {
            packet: format!("`g` reply of {} bytes", regs.bytes.len()),
            expected: format!("register `{name}` in the `g` reply"),
        })
    }

    /// Reads a register's raw bytes (target order) with `p`; `Ok(None)` if
    /// `p` is unsupported.
    pub(super) fn read_register_raw_num(
        &mut self,
        thread: ThreadId,
        regnum: u32,
    ) -> Result<Option<&[u8]>, Error> {
        self.select_thread(b'g', thread)?;
        self.cmd.clear();
        let _ = write!(self.cmd, "p{regnum:x}");
        self.exchange()?;
        if self.dec.payload.is_empty() {
            self.p_supported = false;
            return Ok(None);
        }
        self.check_error()?;
        let p = &mut self.dec.payload;
        if !p.len().is_multiple_of(2) {
            return Err(Error::Malformed {
                packet: show(p),
                reason: "odd-length `p` reply".into(),
            });
        }
        // Decode in place: byte i comes from hex digits 2i, 2i+1 (>= i).
        let n = p.len() / 2;
        for i in 0..n {
            let pair = [p[2 * i], p[2 * i + 1]];
            let mut b = [0u8];
            if decode_hex_into(&pair, &mut b).is_none() {
                return Err(Error::Malformed {
                    packet: show(p),
                    reason: "bad hex in `p` reply".into(),
                });
            }
            p[i] = b[0];
        }
        Ok(Some(&self.dec.payload[..n]))
    }

    /// Raw bytes of a register via `p` (falls back to `g`), any width.
    pub fn read_register_raw(&mut self, thread: ThreadId, name: &str) -> Result<Vec<u8>, Error> {
        let regnum = self
            .regmap
            .lookup(name)
            .ok_or_else(|| Error::Unsupported {
                feature: format!("register `{name}` (not in the target description)"),
            })?
            .regnum;
        if self.p_supported
            && let Some(raw) = self.read_register_raw_num(thread, regnum)?
        {
            return Ok(raw.to_vec());
        }
        let regs = self.read_registers(thread)?;
        regs.raw(name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Unexpected {
                packet: format!("`g` reply of {} bytes", regs.bytes.len()),
                expected: format!("register `{name}` in the `g` reply"),
            })
    }

    /// Writes a register (`P`), value little-endian, truncated to its size.
    pub fn write_register(
        &mut self,
        thread: ThreadId,
        name: &str,
        value: u64,
    ) -> Result<(), Error> {
        self.encode_register_write(thread, name, value)?;
        self.exchange()?;
        self.expect_ok(|| "P (register write)".into())
    }

    /// Selects `thread` for `g`/`P` and puts the `P` packet into `self.cmd`.
    pub(super) fn encode_register_write(
        &mut self,
        thread: ThreadId,
        name: &str,
        value: u64,
    ) -> Result<(), Error> {
        let info = self.regmap.lookup(name).ok_or_else(|| Error::Unsupported {
            feature: format!("register `{name}` (not in the target description)"),
        })?;
        let (regnum, size) = (info.regnum, info.size());
        self.select_thread(b'g', thread)?;
        self.cmd.clear();
        let _ = write!(self.cmd, "P{regnum:x}=");
        let bytes = value.to_le_bytes();
        let mut buf = [0u8; 64];
        let size = size.min(buf.len());
        buf[..size.min(8)].copy_from_slice(&bytes[..size.min(8)]);
        push_hex(&mut self.cmd, &buf[..size]);
        Ok(())
    }
}
