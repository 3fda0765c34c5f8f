//! Virtual and physical memory.

use super::*;

impl Client {
    pub(super) fn mem_chunk(&self) -> usize {
        (self.features.packet_size.saturating_sub(4) / 2).max(1)
    }

    /// Reads target memory with `m`, split so each reply fits `PacketSize`.
    /// Addresses are virtual, in the selected vCPU's current address space.
    pub fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.ensure_virtual_mode()?;
        self.read_memory_raw(addr, buf)
    }

    /// `m` reads in whatever mode the stub is in.
    pub(super) fn read_memory_raw(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let chunk = self.mem_chunk();
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(chunk);
            let a = addr.wrapping_add(done as u64);
            self.cmd.clear();
            let _ = write!(self.cmd, "m{a:x},{len:x}");
            self.exchange()?;
            self.check_error()?;
            let p = &self.dec.payload;
            let n = p.len() / 2;
            if !p.len().is_multiple_of(2) || n == 0 || n > len {
                return Err(self.unexpected(&format!("{len} bytes of hex memory contents")));
            }
            if decode_hex_into(p, &mut buf[done..done + n]).is_none() {
                return Err(Error::Malformed {
                    packet: show(p),
                    reason: "bad hex in `m` reply".into(),
                });
            }
            done += n;
        }
        Ok(())
    }

    /// Writes target memory with `M`, split by `PacketSize` (virtual
    /// addresses).
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.ensure_virtual_mode()?;
        let chunk = (self.features.packet_size.saturating_sub(32) / 2).max(1);
        for (i, part) in data.chunks(chunk).enumerate() {
            let a = addr.wrapping_add((i * chunk) as u64);
            self.cmd.clear();
            let _ = write!(self.cmd, "M{a:x},{:x}:", part.len());
            push_hex(&mut self.cmd, part);
            self.exchange()?;
            self.expect_ok(|| "M (memory write)".into())?;
        }
        Ok(())
    }

    /// Reads guest-physical memory: switches the stub to physical mode,
    /// reads, and switches back (also when the read failed). For several
    /// reads in a row, [`Client::with_physical`] switches once.
    pub fn read_physical(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.with_physical(|m| m.read(addr, buf))?
    }

    /// Runs `f` with the stub in physical-memory mode (QEMU:
    /// `Qqemu.PhyMemMode:1`, where `m` reads guest-physical addresses) and
    /// switches back to virtual mode afterwards, whatever `f` returned.
    /// `Err` only if the mode could not be switched; `f`'s own result is
    /// returned inside `Ok`. If switching back fails, the client remembers
    /// and switches back before its next virtual read or write.
    pub fn with_physical<R>(
        &mut self,
        f: impl FnOnce(&mut PhysicalMemory<'_>) -> R,
    ) -> Result<R, Error> {
        self.not_running()?;
        if self.phys_supported == Some(false) {
            return Err(phys_unsupported());
        }
        self.set_phys_mode(true)?;
        let r = f(&mut PhysicalMemory { client: self });
        self.set_phys_mode(false)?;
        Ok(r)
    }

    /// Whether the stub reads physical memory ([`Client::with_physical`]);
    /// asked once (`qqemu.PhyMemMode`), during the handshake.
    pub fn has_physical_mode(&mut self) -> Result<bool, Error> {
        if let Some(s) = self.phys_supported {
            return Ok(s);
        }
        self.request_str("qqemu.PhyMemMode")?;
        let s = matches!(&self.dec.payload[..], b"0" | b"1");
        // A stub left in physical mode (a client that died in it) is put
        // back, so virtual reads mean what they say.
        if self.dec.payload == b"1" {
            self.phys_mode = true;
        }
        self.phys_supported = Some(s);
        Ok(s)
    }

    pub(super) fn ensure_virtual_mode(&mut self) -> Result<(), Error> {
        if self.phys_mode {
            self.set_phys_mode(false)?;
        }
        Ok(())
    }

    pub(super) fn set_phys_mode(&mut self, on: bool) -> Result<(), Error> {
        self.cmd.clear();
        let _ = write!(self.cmd, "Qqemu.PhyMemMode:{}", on as u8);
        self.exchange()?;
        if self.dec.payload.is_empty() {
            self.phys_supported = Some(false);
            return Err(phys_unsupported());
        }
        match self.expect_ok(|| "Qqemu.PhyMemMode".into()) {
            Ok(()) => {
                self.phys_supported = Some(true);
                self.phys_mode = on;
                Ok(())
            }
            Err(e) => {
                // Unknown state: assume the worst, so the next virtual
                // access tries to switch back first.
                if !on {
                    self.phys_mode = true;
                }
                Err(e)
            }
        }
    }
}

/// Guest-physical memory, while the stub is in physical mode (see
/// [`Client::with_physical`]).
pub struct PhysicalMemory<'a> {
    client: &'a mut Client,
}

impl PhysicalMemory<'_> {
    /// Reads guest-physical memory at `addr` (split by `PacketSize`).
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.client.read_memory_raw(addr, buf)
    }
}

pub(super) fn phys_unsupported() -> Error {
    Error::Unsupported {
        feature: "physical memory reads (Qqemu.PhyMemMode)".into(),
    }
}
