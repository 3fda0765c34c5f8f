//! Breakpoints, resuming, stepping, stops, interrupt, detach and kill.

use super::*;

impl Client {
    pub(super) fn z_packet(
        &mut self,
        op: u8,
        kind: BreakpointKind,
        addr: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.cmd.clear();
        let _ = write!(self.cmd, "{}{},{addr:x},{len:x}", op as char, kind.z_type());
        self.exchange()?;
        self.expect_ok(|| format!("{}{} ({kind:?} breakpoints)", op as char, kind.z_type()))
    }

    /// `Z0`-`Z4`. `len` is the kind/length field (1 for x86 breakpoints).
    pub fn insert_breakpoint(
        &mut self,
        kind: BreakpointKind,
        addr: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.z_packet(b'Z', kind, addr, len)
    }

    /// `z0`-`z4`.
    pub fn remove_breakpoint(
        &mut self,
        kind: BreakpointKind,
        addr: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.z_packet(b'z', kind, addr, len)
    }

    // ----- execution control --------------------------------------------

    /// Resumes: `(Some(t), a)` applies `a` to thread `t`, `(None, a)` is the
    /// default for all other threads (threads without an action stay
    /// stopped). An empty slice continues all threads. Sends `vCont` (or, if
    /// unsupported, `c`/`s`, preceded by `Hc` for a single thread); no reply
    /// is expected: the target is running until [`Client::wait_stop`]
    /// returns a stop.
    pub fn resume(&mut self, actions: &[(Option<ThreadId>, ResumeAction)]) -> Result<(), Error> {
        self.not_running()?;
        self.take_unanswered()?;
        self.encode_resume(actions)?;
        self.send_cmd()?;
        self.round_trips += 1;
        self.now_running();
        Ok(())
    }

    /// Writes a register of `thread` (`P`) and resumes (`vCont`) in one
    /// write, then reads the `P` reply. This saves waiting a round trip for
    /// `OK` before resuming, the common case at a probe hit (move the pc
    /// past an instruction, continue). Stubs handle packets in order, so the
    /// `P` reply always arrives before any stop reply. If `P` fails the
    /// target is running anyway and the error is returned. In ack mode this
    /// needs [`Client::set_stub_ignores_acks`]; otherwise it is two exchanges.
    pub fn write_register_and_resume(
        &mut self,
        thread: ThreadId,
        name: &str,
        value: u64,
        actions: &[(Option<ThreadId>, ResumeAction)],
    ) -> Result<(), Error> {
        self.not_running()?;
        self.take_unanswered()?;
        if self.ack_mode && !self.stub_ignores_acks {
            self.write_register(thread, name, value)?;
            return self.resume(actions);
        }
        self.encode_register_write(thread, name, value)?;
        let write_cmd = std::mem::take(&mut self.cmd);
        self.encode_resume(actions)?;
        let resume_cmd = std::mem::replace(&mut self.cmd, write_cmd);
        self.wbuf.clear();
        if std::mem::take(&mut self.pending_ack) {
            self.wbuf.push(b'+');
        }
        self.wstart = self.wbuf.len();
        packet::encode(&mut self.wbuf, &self.cmd);
        packet::encode(&mut self.wbuf, &resume_cmd);
        self.write_wbuf(0..self.wbuf.len(), Self::cmd_text)?;
        self.round_trips += 1;
        let mut owed = Owed::now();
        let timeout = self.timeout;
        self.recv_owed(&mut owed, timeout)
            .map_err(|e| self.recv_err(e, || format!("reply to {}", self.cmd_text())))?;
        self.answered(&owed);
        // The reply is never acked: the stub took the resume packet's `$` as
        // the end of it, and an ack now would reach a running target, which
        // QEMU 8.1+ takes as an interrupt that sends no stop reply.
        self.pending_ack = false;
        self.now_running();
        self.expect_ok(|| "P (register write)".into())
    }

    pub(super) fn now_running(&mut self) {
        self.running = true;
        self.selected_g = None;
        self.selected_c = None;
    }

    /// Puts the resume packet for `actions` into `self.cmd` (`vCont`, or
    /// `c`/`s` after an `Hc` exchange when the stub lacks `vCont`).
    pub(super) fn encode_resume(
        &mut self,
        actions: &[(Option<ThreadId>, ResumeAction)],
    ) -> Result<(), Error> {
        const ALL_CONTINUE: &[(Option<ThreadId>, ResumeAction)] = &[(None, ResumeAction::Continue)];
        let actions = if actions.is_empty() {
            ALL_CONTINUE
        } else {
            actions
        };
        let defaults = actions.iter().filter(|(t, _)| t.is_none()).count();
        if defaults > 1 {
            return Err(Error::Unsupported {
                feature: "more than one default resume action".into(),
            });
        }
        let letter = |a: ResumeAction| match a {
            ResumeAction::Continue => b'c',
            ResumeAction::Step => b's',
        };
        let vcont_ok = self.features.vcont.is_some_and(|v| {
            actions.iter().all(|(_, a)| match a {
                ResumeAction::Continue => v.cont,
                ResumeAction::Step => v.step,
            })
        });
        if vcont_ok {
            self.cmd.clear();
            self.cmd.extend_from_slice(b"vCont");
            for &(t, a) in actions {
                if let Some(t) = t {
                    self.cmd.push(b';');
                    self.cmd.push(letter(a));
                    self.cmd.push(b':');
                    self.push_tid(t);
                }
            }
            // The default action must come last (leftmost match wins).
            if let Some(&(_, a)) = actions.iter().find(|(t, _)| t.is_none()) {
                self.cmd.push(b';');
                self.cmd.push(letter(a));
            }
        } else {
            let threads: Vec<_> = actions
                .iter()
                .filter_map(|(t, a)| t.map(|t| (t, *a)))
                .collect();
            let action = match (
                threads.as_slice(),
                actions.iter().find(|(t, _)| t.is_none()),
            ) {
                ([], Some(&(_, a))) => a,
                ([(t, a)], _) => {
                    let (t, a) = (*t, *a);
                    self.select_thread(b'c', t)?;
                    a
                }
                _ => {
                    return Err(Error::Unsupported {
                        feature: "vCont (needed for different resume actions per thread)".into(),
                    });
                }
            };
            self.cmd.clear();
            self.cmd.push(letter(action));
        }
        Ok(())
    }

    /// Single-steps one thread (`vCont;s:TID`; other threads stay stopped)
    /// and waits (up to the reply timeout) for its stop reply.
    pub fn step_thread(&mut self, thread: ThreadId) -> Result<StopReply, Error> {
        self.resume(&[(Some(thread), ResumeAction::Step)])?;
        let t = self.timeout;
        self.wait_stop_owed(t, || {
            format!("the stop reply after single-stepping thread {thread}")
        })
    }

    /// Waits for a stop reply the stub owes (after [`Client::interrupt`]
    /// or a step), where silence is a stall: up to `timeout`, or under a
    /// stall policy up to its limit ([`Client::set_stall_policy`]). `what`
    /// names the reply in errors. Console output is collected and skipped.
    pub fn wait_stop_owed(
        &mut self,
        timeout: Duration,
        what: impl Fn() -> String,
    ) -> Result<StopReply, Error> {
        let mut owed = Owed::now();
        loop {
            self.recv_owed(&mut owed, timeout)
                .map_err(|e| self.recv_err(e, &what))?;
            if is_console(&self.dec.payload) {
                self.flush_ack()?;
                self.keep_console();
                continue;
            }
            self.answered(&owed);
            let p = &self.dec.payload;
            return match StopReply::parse(p) {
                Ok(stop) => {
                    self.on_stop(&stop);
                    Ok(stop)
                }
                Err(reason) => Err(Error::Unexpected {
                    packet: show(p),
                    expected: format!("a stop reply ({reason})"),
                }),
            };
        }
    }

    /// Waits for a stop reply. `Ok(None)` on timeout (the target is still
    /// running; a partially received packet is kept for the next call).
    /// `None` waits forever. `O` console packets are collected (see
    /// [`Client::take_console_output`]) and skipped.
    pub fn wait_stop(&mut self, timeout: Option<Duration>) -> Result<Option<StopReply>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.recv(deadline) {
                Ok(()) => {}
                Err(RecvErr::Timeout) => return Ok(None),
                Err(e) => return Err(self.recv_err(e, || "a stop reply".into())),
            }
            if is_console(&self.dec.payload) {
                // A stub may wait for the ack before sending more.
                self.flush_ack()?;
                self.keep_console();
                continue;
            }
            let p = &self.dec.payload;
            return match StopReply::parse(p) {
                Ok(stop) => {
                    self.on_stop(&stop);
                    Ok(Some(stop))
                }
                Err(reason) => Err(Error::Unexpected {
                    packet: show(p),
                    expected: format!("a stop reply ({reason})"),
                }),
            };
        }
    }

    pub(super) fn on_stop(&mut self, stop: &StopReply) {
        self.running = false;
        if let Some(pid) = stop.thread().and_then(|t| t.pid).filter(|&p| p != u64::MAX) {
            self.pid = Some(pid);
        }
        self.selected_c = None;
        self.selected_g = if self.trust_stop_thread {
            stop.thread()
        } else {
            None
        };
    }

    /// Sends the raw interrupt byte `0x03`. The caller then `wait_stop`s.
    /// To a running target that byte alone: QEMU 8.1+ stops the VM at any
    /// other byte without a stop reply, then drops the `0x03` as garbage.
    pub fn interrupt(&mut self) -> Result<(), Error> {
        if !self.running {
            self.flush_ack()?;
        }
        self.write_bytes(&[0x03])
    }

    /// `?`: why the target is stopped.
    pub fn halt_reason(&mut self) -> Result<StopReply, Error> {
        self.request_str("?")?;
        self.check_error()?;
        let stop = StopReply::parse(&self.dec.payload)
            .map_err(|r| self.unexpected(&format!("a stop reply ({r})")))?;
        self.on_stop(&stop);
        Ok(stop)
    }

    /// `D` (multiprocess: `D;PID`, which QEMU requires, with the pid last
    /// seen in a thread id, default 1): detaches; QEMU removes breakpoints
    /// and resumes the VM.
    pub fn detach(&mut self) -> Result<(), Error> {
        self.cmd.clear();
        self.cmd.push(b'D');
        if self.features.multiprocess {
            let _ = write!(self.cmd, ";{:x}", self.pid.unwrap_or(1));
        }
        self.exchange()?;
        self.flush_ack()?;
        self.expect_ok(|| "D (detach)".into())
    }

    /// `k`: kills the target (QEMU exits). No reply is awaited.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.cmd.clear();
        self.cmd.push(b'k');
        self.send_cmd()?;
        self.round_trips += 1;
        Ok(())
    }
}
