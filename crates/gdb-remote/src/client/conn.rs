//! The connection, packet framing, acks, and one request and its reply.

use super::*;

pub(super) enum Conn {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Conn {
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.read(buf),
        }
    }
    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.write(buf),
        }
    }

    /// Writes all of `buf` by `deadline`. The socket's write timeout is at
    /// most [`ABORT_POLL`] while there is an abort check, which is looked
    /// at whenever the stub is slow to take the bytes.
    pub(super) fn write_all(
        &mut self,
        mut buf: &[u8],
        deadline: Instant,
        abort: Option<&AbortCheck>,
    ) -> Result<(), SendErr> {
        let total = buf.len();
        while !buf.is_empty() {
            match self.write(buf) {
                Ok(0) => return Err(SendErr::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if abort.is_some_and(|f| f()) {
                        return Err(SendErr::Aborted {
                            partial: buf.len() < total,
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(SendErr::Io(e));
                    }
                }
                Err(e) => return Err(SendErr::Io(e)),
            }
        }
        Ok(())
    }
    pub(super) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            #[cfg(unix)]
            Conn::Unix(s) => s.set_read_timeout(t),
        }
    }
    pub(super) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(t),
            #[cfg(unix)]
            Conn::Unix(s) => s.set_write_timeout(t),
        }
    }
}

pub(super) enum RecvErr {
    Timeout,
    /// A stall policy's limit passed with no reply.
    Stalled(Duration),
    Closed,
    Aborted,
    Io(io::Error),
    Malformed {
        packet: String,
        reason: String,
    },
    /// Writing a `-` or a retransmission failed.
    Send(Error),
}

pub(super) enum SendErr {
    /// `partial`: part of the bytes went out, so the stream is out of step.
    Aborted {
        partial: bool,
    },
    Io(io::Error),
}

impl From<io::Error> for RecvErr {
    fn from(e: io::Error) -> Self {
        RecvErr::Io(e)
    }
}

impl Client {
    /// Sets the socket read timeout for a read that must return by
    /// `deadline`, skipping the syscall when the current setting is close.
    pub(super) fn arm_read_timeout(&mut self, deadline: Option<Instant>) -> Result<(), RecvErr> {
        let want = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(RecvErr::Timeout);
                }
                Some((d - now).max(Duration::from_millis(1)))
            }
        };
        let ok = match (self.sock_timeout, want) {
            (None, None) => true,
            (Some(cur), Some(w)) => cur <= w + Duration::from_millis(10) && cur * 2 >= w,
            _ => false,
        };
        if !ok {
            self.conn.set_read_timeout(want)?;
            self.sock_timeout = want;
        }
        Ok(())
    }

    pub(super) fn fill(&mut self, deadline: Option<Instant>) -> Result<(), RecvErr> {
        // With an abort check, each read blocks for at most ABORT_POLL.
        let slice = match self.abort {
            None => deadline,
            Some(_) => {
                if self.aborted() {
                    return Err(RecvErr::Aborted);
                }
                let poll = Instant::now() + ABORT_POLL;
                Some(deadline.map_or(poll, |d| d.min(poll)))
            }
        };
        self.arm_read_timeout(slice)?;
        match self.conn.read(&mut self.rbuf) {
            Ok(0) => Err(RecvErr::Closed),
            Ok(n) => {
                self.rpos = 0;
                self.rlen = n;
                self.since_packet = self.since_packet.saturating_add(n);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                match deadline {
                    Some(d) if Instant::now() >= d => Err(RecvErr::Timeout),
                    _ => Ok(()),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Err(RecvErr::Closed)
            }
            Err(e) => Err(RecvErr::Io(e)),
        }
    }

    /// Receives the next packet into `self.dec.payload`.
    pub(super) fn recv(&mut self, deadline: Option<Instant>) -> Result<(), RecvErr> {
        let mut naks = 0;
        let mut bad = 0;
        loop {
            while self.rpos < self.rlen {
                let (n, ev) = self.dec.feed(&self.rbuf[self.rpos..self.rlen]);
                self.rpos += n;
                if ev.is_some() {
                    self.since_packet = self.rlen - self.rpos;
                }
                match ev {
                    None | Some(Event::Ack) | Some(Event::Notification) => {}
                    Some(Event::Packet) => {
                        self.pending_ack = self.ack_mode;
                        return Ok(());
                    }
                    Some(Event::Nak) => {
                        if self.ack_mode && naks < 5 && self.wbuf.len() > self.wstart {
                            naks += 1;
                            let range = self.wstart..self.wbuf.len();
                            self.write_wbuf(range, |_| "a retransmission".into())
                                .map_err(RecvErr::Send)?;
                        }
                    }
                    Some(Event::BadChecksum { expected, computed }) => {
                        if self.ack_mode && bad < 3 {
                            bad += 1;
                            self.write_bytes(b"-").map_err(RecvErr::Send)?;
                        } else {
                            return Err(RecvErr::Malformed {
                                packet: show(&self.dec.payload),
                                reason: format!(
                                    "checksum mismatch: packet says {expected:02x}, computed {computed:02x}"
                                ),
                            });
                        }
                    }
                    Some(Event::Malformed(reason)) => {
                        return Err(RecvErr::Malformed {
                            packet: show(&self.dec.payload),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
            self.fill(deadline)?;
        }
    }

    /// Receives the next packet of a reply the stub owes: by `timeout`
    /// after it was asked for or, under a stall policy that is not
    /// deferred, by the policy's limit, reporting the stall as it goes.
    pub(super) fn recv_owed(&mut self, owed: &mut Owed, timeout: Duration) -> Result<(), RecvErr> {
        let (limit, notice, abortable) = match &self.stall {
            Some(p) if !self.stalls_deferred => (p.limit, p.notice.min(p.limit), p.abort.is_some()),
            _ => return self.recv(Some(owed.asked + timeout)),
        };
        loop {
            let now = Instant::now();
            let mut until = owed.asked + if owed.reported { limit } else { notice };
            if abortable {
                let grace = owed.asked + STALL_ABORT_GRACE;
                until = until.min(if now >= grace {
                    now + ABORT_POLL
                } else {
                    grace
                });
            }
            match self.recv(Some(until)) {
                Err(RecvErr::Timeout) => {}
                done => return done,
            }
            let late = owed.asked.elapsed();
            let policy = self.stall.as_mut().expect("matched above");
            if late >= STALL_ABORT_GRACE && policy.abort.as_ref().is_some_and(|f| f()) {
                return Err(RecvErr::Aborted);
            }
            if late >= limit {
                (policy.report)(Stall::GaveUp { waited: late });
                return Err(RecvErr::Stalled(late));
            }
            if !owed.reported && late >= notice {
                (policy.report)(Stall::Silent {
                    waited: notice,
                    limit,
                });
                owed.reported = true;
            }
        }
    }

    /// The reply `owed` was for came: says so if it was reported late.
    pub(super) fn answered(&mut self, owed: &Owed) {
        if owed.reported
            && let Some(p) = self.stall.as_mut()
        {
            (p.report)(Stall::Answered {
                after: owed.asked.elapsed(),
            });
        }
    }

    /// Takes the reply to a request that failed before it came (aborted,
    /// or late under a stall policy), if it comes.
    pub(super) fn take_unanswered(&mut self) -> Result<(), Error> {
        if !self.unanswered {
            return Ok(());
        }
        let mut owed = Owed::now();
        if let Some(asked) = self.unanswered_asked {
            owed.asked = asked;
        }
        let timeout = self.timeout;
        let got = self.recv_owed(&mut owed, timeout);
        if let Err(RecvErr::Stalled(_)) = got {
            self.unanswered_asked = None;
        }
        got.map_err(|e| self.recv_err(e, || "the reply to an earlier request".into()))?;
        self.answered(&owed);
        self.unanswered = false;
        Ok(())
    }

    pub(super) fn cmd_text(&self) -> String {
        format!("`{}`", show(&self.cmd))
    }

    /// The error for `e` while waiting for `what` (a reply, a stop reply).
    pub(super) fn recv_err(&self, e: RecvErr, what: impl FnOnce() -> String) -> Error {
        let e = match e {
            // Silence, noise and a trickle all end at the timeout; which
            // one it was is told by what came.
            RecvErr::Timeout => Error::Timeout {
                waiting_for: match self.since_packet {
                    0 => what(),
                    1 => format!("{} (1 byte received, not a whole packet)", what()),
                    n => format!("{} ({n} bytes received, not one whole packet)", what()),
                },
            },
            RecvErr::Stalled(waited) => Error::Stalled {
                waited,
                waiting_for: what(),
            },
            RecvErr::Closed => Error::Closed {
                during: format!("waiting for {}", what()),
            },
            RecvErr::Aborted => Error::Aborted,
            RecvErr::Io(e) => Error::Io(e),
            RecvErr::Malformed { packet, reason } => Error::Malformed { packet, reason },
            RecvErr::Send(e) => e,
        };
        self.note_lost(&e);
        e
    }

    /// Remembers the first error after which the stream cannot be trusted:
    /// a closed connection, a socket error, or bytes that do not frame as
    /// packets (called for errors of the connection itself, so `Malformed`
    /// here is the decoder's, not a reply whose payload did not parse).
    fn note_lost(&self, e: &Error) {
        if matches!(
            e,
            Error::Closed { .. } | Error::Io(_) | Error::Malformed { .. }
        ) {
            let _ = self.lost.set(e.to_string());
        }
    }

    pub(super) fn not_running(&self) -> Result<(), Error> {
        if self.running {
            return Err(Error::Unexpected {
                packet: show(&self.cmd),
                expected: "a stopped target: it is running; interrupt() and wait_stop() first \
                           (any byte sent to QEMU while running stops it)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Sends a pending ack now (where a stub may wait for it).
    pub(super) fn flush_ack(&mut self) -> Result<(), Error> {
        if self.pending_ack {
            self.pending_ack = false;
            self.write_bytes(b"+")?;
        }
        Ok(())
    }

    /// Writes `self.wbuf[range]`; `what` names it in errors.
    pub(super) fn write_wbuf(
        &mut self,
        range: std::ops::Range<usize>,
        what: impl FnOnce(&Self) -> String,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let sent = match self.broken {
            true => Err(SendErr::Aborted { partial: true }),
            false => (self.conn).write_all(&self.wbuf[range], deadline, self.abort.as_ref()),
        };
        self.sent(sent, what)
    }

    /// Writes a few bytes of their own (an ack, a nak, an interrupt).
    pub(super) fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let sent = match self.broken {
            true => Err(SendErr::Aborted { partial: true }),
            false => (self.conn).write_all(bytes, deadline, self.abort.as_ref()),
        };
        self.sent(sent, |_| format!("`{}`", show(bytes)))
    }

    pub(super) fn sent(
        &mut self,
        sent: Result<(), SendErr>,
        what: impl FnOnce(&Self) -> String,
    ) -> Result<(), Error> {
        let e = match sent {
            Ok(()) => return Ok(()),
            Err(SendErr::Aborted { partial }) => {
                self.broken |= partial;
                Error::Aborted
            }
            Err(SendErr::Io(e)) => match e.kind() {
                io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted => Error::Closed {
                    during: format!("sending {}", what(self)),
                },
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                    waiting_for: format!("the stub to accept {}", what(self)),
                },
                _ => Error::Io(e),
            },
        };
        self.note_lost(&e);
        Err(e)
    }

    /// Encodes `self.cmd` (after a pending `+`) and writes it in one write.
    pub(super) fn send_cmd(&mut self) -> Result<(), Error> {
        self.wbuf.clear();
        if std::mem::take(&mut self.pending_ack) {
            self.wbuf.push(b'+');
        }
        self.wstart = self.wbuf.len();
        packet::encode(&mut self.wbuf, &self.cmd);
        self.write_wbuf(0..self.wbuf.len(), Self::cmd_text)
    }

    /// Sends `self.cmd` and receives the reply into `self.dec.payload`.
    pub(super) fn exchange(&mut self) -> Result<(), Error> {
        self.not_running()?;
        // The reply to an aborted (or late) request comes first, if at all.
        self.take_unanswered()?;
        self.send_cmd()?;
        self.round_trips += 1;
        // A stop reply answers only `?`. One arriving for any other request
        // is unsolicited: QEMU sends one when a new debugger connects to a
        // VM that an earlier one detached from (it stops the VM). Taking it
        // as this request's reply would shift every later reply by one.
        // Console output answers only `qRcmd`; elsewhere it is a running
        // target's, kept as `wait_stop` keeps it.
        let expects_stop = self.cmd.first() == Some(&b'?');
        let expects_console = self.cmd.starts_with(b"qRcmd,");
        let mut owed = Owed::now();
        let timeout = self.timeout;
        loop {
            match self.recv_owed(&mut owed, timeout) {
                Ok(()) => {}
                Err(RecvErr::Aborted) => {
                    self.unanswered = true;
                    self.unanswered_asked = None;
                    return Err(Error::Aborted);
                }
                Err(e) => {
                    // Under a stall policy the reply may still come late.
                    if self.stall.is_some() && matches!(e, RecvErr::Timeout | RecvErr::Stalled(_)) {
                        self.unanswered = true;
                        self.unanswered_asked =
                            (!matches!(e, RecvErr::Stalled(_))).then_some(owed.asked);
                    }
                    return Err(self.recv_err(e, || format!("reply to {}", self.cmd_text())));
                }
            }
            let p = &self.dec.payload;
            if is_console(p) && !expects_console {
                self.keep_console();
            } else if expects_stop || !looks_like_stop_reply(p) {
                self.answered(&owed);
                return Ok(());
            }
            // A stub may wait for the ack of what it sent unasked.
            self.flush_ack()?;
        }
    }

    /// Keeps the output of the `O` packet just received, up to
    /// [`MAX_CONSOLE`] bytes in all (more is dropped).
    pub(super) fn keep_console(&mut self) {
        let p = &self.dec.payload;
        if self.console.len() + p.len() / 2 <= MAX_CONSOLE {
            let start = self.console.len();
            self.console.resize(start + p.len() / 2, 0);
            let _ = decode_hex_into(&p[1..], &mut self.console[start..]);
        }
    }

    pub(super) fn request_str(&mut self, s: &str) -> Result<(), Error> {
        self.cmd.clear();
        self.cmd.extend_from_slice(s.as_bytes());
        self.exchange()
    }

    pub(super) fn reply_is_error(&self) -> Option<String> {
        let p = &self.dec.payload;
        if p.len() == 3 && p[0] == b'E' && p[1].is_ascii_hexdigit() && p[2].is_ascii_hexdigit() {
            return Some(show(&p[1..]));
        }
        if let Some(text) = p.strip_prefix(b"E.") {
            return Some(show(text));
        }
        None
    }

    pub(super) fn check_error(&self) -> Result<(), Error> {
        match self.reply_is_error() {
            Some(code) => Err(Error::ErrorReply {
                command: show(&self.cmd),
                code,
            }),
            None => Ok(()),
        }
    }

    pub(super) fn unexpected(&self, expected: &str) -> Error {
        Error::Unexpected {
            packet: show(&self.dec.payload),
            expected: format!("{expected} in reply to {}", self.cmd_text()),
        }
    }

    /// Checks for `OK`; empty means unsupported (`feature`).
    pub(super) fn expect_ok(&self, feature: impl FnOnce() -> String) -> Result<(), Error> {
        match &self.dec.payload[..] {
            b"OK" => Ok(()),
            b"" => Err(Error::Unsupported { feature: feature() }),
            _ => {
                self.check_error()?;
                Err(self.unexpected("OK"))
            }
        }
    }

    pub(super) fn push_tid(&mut self, t: ThreadId) {
        let t = if self.features.multiprocess {
            t
        } else {
            ThreadId { pid: None, ..t }
        };
        let _ = write!(self.cmd, "{t}");
    }

    /// Sends an arbitrary request payload (escaped and framed by the client)
    /// and returns the decoded reply payload. Error replies are returned as
    /// [`Error::ErrorReply`].
    pub fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        self.cmd.clear();
        self.cmd.extend_from_slice(payload);
        self.exchange()?;
        self.check_error()?;
        Ok(self.dec.payload.clone())
    }
}

/// `O` + hex console output (but not `OK`).
pub(super) fn is_console(p: &[u8]) -> bool {
    p.len() >= 3
        && p[0] == b'O'
        && !p.len().is_multiple_of(2)
        && p[1..].iter().all(u8::is_ascii_hexdigit)
}

/// `Sxx`, `Txx...`, `Wxx`, `Xxx`: the shapes of a stop reply. No other reply
/// starts with one of these letters followed by two hex digits.
pub(super) fn looks_like_stop_reply(p: &[u8]) -> bool {
    p.len() >= 3
        && matches!(p[0], b'S' | b'T' | b'W' | b'X')
        && p[1].is_ascii_hexdigit()
        && p[2].is_ascii_hexdigit()
}
