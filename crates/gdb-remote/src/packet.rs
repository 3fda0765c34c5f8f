//! Packet framing: incremental decoder (`$data#cs`, `}` escapes, `*` run-length
//! encoding, `%` notifications, acks) and the encoder, plus hex helpers.

/// Largest decoded packet payload accepted from a stub.
pub(crate) const MAX_PACKET: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Data,
    Escape,
    Rle,
    Cs1,
    Cs2(u8),
}

/// Something the decoder noticed in the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A complete packet with a good checksum; payload in [`Decoder::payload`].
    Packet,
    /// A complete `%` notification packet (ignored by the client).
    Notification,
    Ack,
    Nak,
    BadChecksum {
        expected: u8,
        computed: u8,
    },
    Malformed(&'static str),
}

/// Incremental packet decoder. State survives across reads, so a packet split
/// over several reads (or several `wait_stop` calls) is never lost.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    /// Decoded payload of the current / last packet.
    pub(crate) payload: Vec<u8>,
    sum: u8,
    notification: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Idle,
            payload: Vec::with_capacity(4096),
            sum: 0,
            notification: false,
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Decoder {
    fn start(&mut self, notification: bool) {
        self.payload.clear();
        self.sum = 0;
        self.notification = notification;
        self.state = State::Data;
    }

    /// True if the decoder is in the middle of a packet.
    #[cfg(test)]
    pub(crate) fn in_packet(&self) -> bool {
        self.state != State::Idle
    }

    fn fail(&mut self, why: &'static str) -> Option<Event> {
        self.state = State::Idle;
        Some(Event::Malformed(why))
    }

    /// Feeds bytes. Returns how many bytes were consumed and the event that
    /// stopped consumption, if any (`None` means all bytes were consumed).
    pub(crate) fn feed(&mut self, data: &[u8]) -> (usize, Option<Event>) {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Data => {
                    let rest = &data[i..];
                    let n = rest
                        .iter()
                        .position(|&b| matches!(b, b'#' | b'}' | b'*' | b'$'))
                        .unwrap_or(rest.len());
                    if n > 0 {
                        let room = MAX_PACKET - self.payload.len();
                        if n > room {
                            // Kept up to the limit, so the error shows 1 MiB
                            // of it, not whatever the last read left.
                            self.payload.extend_from_slice(&rest[..room]);
                            return (i + n, self.fail("packet larger than 1 MiB"));
                        }
                        let chunk = &rest[..n];
                        self.payload.extend_from_slice(chunk);
                        self.sum = chunk.iter().fold(self.sum, |s, &b| s.wrapping_add(b));
                        i += n;
                        continue;
                    }
                    let b = rest[0];
                    i += 1;
                    match b {
                        b'#' => self.state = State::Cs1,
                        b'}' => {
                            self.sum = self.sum.wrapping_add(b);
                            self.state = State::Escape;
                        }
                        b'*' => {
                            self.sum = self.sum.wrapping_add(b);
                            self.state = State::Rle;
                        }
                        // A new packet start in the middle of a packet: the
                        // old one was truncated; resynchronise on the new one.
                        _ => self.start(false),
                    }
                }
                State::Escape => {
                    let b = data[i];
                    i += 1;
                    if self.payload.len() >= MAX_PACKET {
                        return (i, self.fail("packet larger than 1 MiB"));
                    }
                    self.sum = self.sum.wrapping_add(b);
                    self.payload.push(b ^ 0x20);
                    self.state = State::Data;
                }
                State::Rle => {
                    let b = data[i];
                    i += 1;
                    self.sum = self.sum.wrapping_add(b);
                    let Some(&prev) = self.payload.last() else {
                        return (i, self.fail("run-length marker without a preceding byte"));
                    };
                    let count = i32::from(b) - 29;
                    if count < 1 {
                        return (i, self.fail("invalid run-length count"));
                    }
                    let count = count as usize;
                    if self.payload.len() + count > MAX_PACKET {
                        return (i, self.fail("packet larger than 1 MiB"));
                    }
                    self.payload.resize(self.payload.len() + count, prev);
                    self.state = State::Data;
                }
                State::Cs1 => {
                    let b = data[i];
                    i += 1;
                    match hex_val(b) {
                        Some(h) => self.state = State::Cs2(h),
                        None => return (i, self.fail("bad checksum digits")),
                    }
                }
                State::Cs2(h) => {
                    let b = data[i];
                    i += 1;
                    self.state = State::Idle;
                    let Some(l) = hex_val(b) else {
                        return (i, self.fail("bad checksum digits"));
                    };
                    let expected = (h << 4) | l;
                    let ev = if expected != self.sum {
                        Event::BadChecksum {
                            expected,
                            computed: self.sum,
                        }
                    } else if self.notification {
                        Event::Notification
                    } else {
                        Event::Packet
                    };
                    return (i, Some(ev));
                }
                State::Idle => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'$' => self.start(false),
                        b'%' => self.start(true),
                        b'+' => return (i, Some(Event::Ack)),
                        b'-' => return (i, Some(Event::Nak)),
                        _ => {} // line noise between packets: skip
                    }
                }
            }
        }
        (data.len(), None)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `payload` encoded as `$payload#cs` to `out`, escaping `#$}*`.
pub(crate) fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    out.reserve(payload.len() + 4);
    out.push(b'$');
    let mut sum = 0u8;
    for &b in payload {
        if matches!(b, b'#' | b'$' | b'}' | b'*') {
            out.push(b'}');
            out.push(b ^ 0x20);
            sum = sum.wrapping_add(b'}').wrapping_add(b ^ 0x20);
        } else {
            out.push(b);
            sum = sum.wrapping_add(b);
        }
    }
    out.push(b'#');
    out.push(HEX[usize::from(sum >> 4)]);
    out.push(HEX[usize::from(sum & 15)]);
}

/// Appends the lower-case hex encoding of `bytes` to `out`.
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Parses a hex number (at most 16 significant digits). Empty input is `None`.
pub(crate) fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = hex_val(b)?;
        v = v.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Decodes hex pairs from `hex` into `out`. `x`/`X` digits (unavailable
/// register contents) decode as zero. Returns `None` on odd length or a bad
/// digit.
pub(crate) fn decode_hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let d = |b: u8| match b {
            b'x' | b'X' => Some(0),
            _ => hex_val(b),
        };
        *o = (d(pair[0])? << 4) | d(pair[1])?;
    }
    Some(())
}

/// Renders packet bytes as a single printable line of at most about 200
/// characters (binary bytes take four each, as `\xff`).
pub(crate) fn show(bytes: &[u8]) -> String {
    const LIMIT: usize = 200;
    let mut s = String::new();
    for &b in bytes {
        let escaped = std::ascii::escape_default(b);
        if s.len() + escaped.len() > LIMIT {
            s.push_str(&format!("... ({} bytes)", bytes.len()));
            break;
        }
        s.extend(escaped.map(char::from));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Vec<(Option<Event>, Vec<u8>)> {
        let mut d = Decoder::default();
        let mut out = vec![];
        let mut rest = input;
        while !rest.is_empty() {
            let (n, ev) = d.feed(rest);
            rest = &rest[n..];
            if ev.is_some() {
                out.push((ev, d.payload.clone()));
            }
        }
        out
    }

    #[test]
    fn roundtrip_with_escapes() {
        let payload = b"a#b$c}d*e";
        let mut enc = vec![];
        encode(&mut enc, payload);
        let r = decode_all(&enc);
        assert_eq!(r, vec![(Some(Event::Packet), payload.to_vec())]);
    }

    #[test]
    fn known_checksum() {
        let mut enc = vec![];
        encode(&mut enc, b"OK");
        assert_eq!(enc, b"$OK#9a");
    }

    #[test]
    fn rle_and_bytewise_feed() {
        // "0* " = '0' + 3 repeats
        let mut sum = 0u8;
        for &b in b"0* " {
            sum = sum.wrapping_add(b);
        }
        let pkt = format!("$0* #{sum:02x}");
        let mut d = Decoder::default();
        let mut got = None;
        for b in pkt.as_bytes() {
            let (_, ev) = d.feed(std::slice::from_ref(b));
            if ev.is_some() {
                got = ev;
            }
        }
        assert_eq!(got, Some(Event::Packet));
        assert_eq!(d.payload, b"0000");
    }

    #[test]
    fn garbage_bad_rle_and_checksum() {
        let r = decode_all(b"\x00\xffzz+-$*!#00$OK#00");
        assert_eq!(r[0].0, Some(Event::Ack));
        assert_eq!(r[1].0, Some(Event::Nak));
        assert!(matches!(r[2].0, Some(Event::Malformed(_))));
        assert!(matches!(r[3].0, Some(Event::BadChecksum { .. })));
    }

    #[test]
    fn oversized() {
        let mut big = vec![b'$'];
        big.resize(MAX_PACKET + 10, b'a');
        let r = decode_all(&big);
        assert_eq!(r.len(), 1);
        assert!(matches!(r[0].0, Some(Event::Malformed(_))));
        // What the error shows is the limit's worth of it.
        assert_eq!(r[0].1.len(), MAX_PACKET);
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(parse_hex_u64(b"fffffff0"), Some(0xffff_fff0));
        assert_eq!(parse_hex_u64(b""), None);
        assert_eq!(parse_hex_u64(b"1ffffffffffffffff"), None);
        let mut o = [0u8; 2];
        assert!(decode_hex_into(b"e0xx", &mut o).is_some());
        assert_eq!(o, [0xe0, 0]);
        assert!(decode_hex_into(b"e0x", &mut o).is_none());
        assert_eq!(show(b"a\nb"), "a\\nb");
        assert_eq!(show(&[b'a'; 200]), "a".repeat(200));
        assert_eq!(
            show(&[b'a'; 201]),
            format!("{}... (201 bytes)", "a".repeat(200))
        );
        // Escapes count as what they take on the line.
        let binary = show(&[0xff; 1000]);
        assert_eq!(binary, format!("{}... (1000 bytes)", "\\xff".repeat(50)));
    }

    /// Random byte soup (biased towards protocol characters) never panics
    /// the decoder or the reply parsers.
    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const ALPHABET: &[u8] = b"$#}*%+-:;.,pPTSWXOlmE0123456789abcdefx";
        let mut d = Decoder::default();
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        r as u8
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let (n, _) = d.feed(rest);
                assert!(n > 0 && n <= rest.len());
                rest = &rest[n..];
            }
            let _ = crate::StopReply::parse(&buf);
            let _ = crate::ThreadId::parse(&buf);
            let _ = crate::VContSupport::parse(&buf);
            let _ = crate::Features::parse_qsupported(&buf);
            let _ = parse_hex_u64(&buf);
            let mut out = vec![0u8; buf.len() / 2];
            let _ = decode_hex_into(&buf, &mut out);
            let _ = show(&buf);
        }
    }
}
