//! Queries (`qXfer`, thread lists), thread selection and monitor commands.

use super::*;

impl Client {
    pub(super) fn xfer_read_string(&mut self, object: &str, annex: &str) -> Result<String, Error> {
        let data = self.xfer_read(object, annex)?;
        String::from_utf8(data).map_err(|_| Error::Malformed {
            packet: format!("qXfer:{object}:read:{annex}"),
            reason: "not UTF-8".into(),
        })
    }

    /// Reads a whole `qXfer` object (chunked `m`/`l` replies).
    pub fn xfer_read(&mut self, object: &str, annex: &str) -> Result<Vec<u8>, Error> {
        let chunk = self.features.packet_size.saturating_sub(5).max(16);
        let mut out = Vec::new();
        loop {
            self.cmd.clear();
            let _ = write!(
                self.cmd,
                "qXfer:{object}:read:{annex}:{:x},{chunk:x}",
                out.len()
            );
            self.exchange()?;
            self.check_error()?;
            let p = &self.dec.payload;
            let (&kind, data) = match p.split_first() {
                Some(x) => x,
                None => {
                    return Err(Error::Unsupported {
                        feature: format!("qXfer:{object}:read ({annex})"),
                    });
                }
            };
            if out.len() + data.len() > MAX_XFER {
                return Err(Error::Malformed {
                    packet: format!("qXfer:{object}:read:{annex}"),
                    reason: "object larger than 1 MiB".into(),
                });
            }
            out.extend_from_slice(data);
            match kind {
                b'l' => return Ok(out),
                b'm' if !data.is_empty() => {}
                b'm' => return Err(self.unexpected("a non-empty `m` chunk")),
                _ => return Err(self.unexpected("`m` or `l` followed by data")),
            }
        }
    }

    // ----- threads and registers ----------------------------------------

    /// Lists threads (vCPUs) with `qfThreadInfo`/`qsThreadInfo`.
    pub fn threads(&mut self) -> Result<Vec<ThreadId>, Error> {
        let mut out = Vec::new();
        self.request_str("qfThreadInfo")?;
        loop {
            self.check_error()?;
            let p = &self.dec.payload;
            match p.split_first() {
                Some((b'l', _)) => return Ok(out),
                Some((b'm', list)) => {
                    for t in list.split(|&b| b == b',').filter(|t| !t.is_empty()) {
                        let t = ThreadId::parse(t).ok_or_else(|| Error::Malformed {
                            packet: show(p),
                            reason: "bad thread id".into(),
                        })?;
                        if let Some(pid) = t.pid.filter(|&p| p != u64::MAX) {
                            self.pid = Some(pid);
                        }
                        out.push(t);
                    }
                    if out.len() > 65536 {
                        return Err(Error::Malformed {
                            packet: show(p),
                            reason: "too many threads".into(),
                        });
                    }
                }
                None => {
                    return Err(Error::Unsupported {
                        feature: "qfThreadInfo".into(),
                    });
                }
                _ => return Err(self.unexpected("`m` thread list or `l`")),
            }
            self.request_str("qsThreadInfo")?;
        }
    }

    pub(super) fn select_thread(&mut self, op: u8, t: ThreadId) -> Result<(), Error> {
        let cached = if op == b'g' {
            self.selected_g
        } else {
            self.selected_c
        };
        if cached == Some(t) {
            return Ok(());
        }
        self.cmd.clear();
        self.cmd.push(b'H');
        self.cmd.push(op);
        self.push_tid(t);
        self.exchange()?;
        self.expect_ok(|| format!("H{} (thread selection)", op as char))?;
        if op == b'g' {
            self.selected_g = Some(t);
        } else {
            self.selected_c = Some(t);
        }
        Ok(())
    }

    /// `qRcmd`: runs a monitor command (QEMU: HMP), returning its output.
    pub fn monitor(&mut self, command: &str) -> Result<String, Error> {
        self.cmd.clear();
        self.cmd.extend_from_slice(b"qRcmd,");
        push_hex(&mut self.cmd, command.as_bytes());
        self.exchange()?;
        let deadline = Instant::now() + self.timeout;
        let mut out = Vec::new();
        loop {
            if is_console(&self.dec.payload) {
                self.flush_ack()?;
                let p = &self.dec.payload;
                if out.len() + p.len() / 2 > MAX_CONSOLE {
                    return Err(Error::Malformed {
                        packet: show(p),
                        reason: "monitor output larger than 1 MiB".into(),
                    });
                }
                let start = out.len();
                out.resize(start + p.len() / 2, 0);
                let _ = decode_hex_into(&p[1..], &mut out[start..]);
            } else if self.dec.payload.is_empty() {
                return Err(Error::Unsupported {
                    feature: "qRcmd (monitor commands)".into(),
                });
            } else {
                self.check_error()?;
                let p = &self.dec.payload;
                if p == b"OK" {
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                // Some stubs send the output hex-encoded as the final reply.
                let mut buf = vec![0u8; p.len() / 2];
                if decode_hex_into(p, &mut buf).is_some() {
                    out.extend_from_slice(&buf);
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                return Err(self.unexpected("`O` output packets then `OK`"));
            }
            self.recv(Some(deadline))
                .map_err(|e| self.recv_err(e, || format!("reply to {}", self.cmd_text())))?;
        }
    }
}
