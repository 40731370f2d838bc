//! frame.rs — framing over the byte stream: the 24-byte header, the two
//! CRCs, frame sealing, and the streaming [`Decoder`] with resynchronisation.
//!
//! This layer knows nothing about opcodes' payloads; `message.rs` does.
//! The layout is described in docs/abi.md, "Frames"; the header layout and
//! the resync rule are the same in every ABI version.

use core::fmt;

use crate::crc32::crc32;
use crate::error::EncodeError;

/// The four bytes every frame starts with: ASCII "LPHC".
pub const MAGIC: [u8; 4] = *b"LPHC";
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 24;
/// Largest payload any frame may carry.
pub const MAX_PAYLOAD: usize = 8192;
/// Largest frame: header plus largest payload.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;
/// Zero bytes a sender writes before its first frame after it (re)starts
/// (guest: before HELLO; lparhv: after attaching to a channel). They push
/// any half-written frame from before the restart out of the peer's
/// decoder, so the next frame is not held back behind it.
pub const SYNC_PREAMBLE_LEN: usize = MAX_FRAME;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Guest → lparhv call; request id ≠ 0.
    Request = 1,
    /// lparhv → guest answer; carries the request's id and opcode.
    Response = 2,
    /// lparhv → guest notification; request id = 0.
    Event = 3,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Request),
            2 => Some(Kind::Response),
            3 => Some(Kind::Event),
            _ => None,
        }
    }
}

/// A decoded, checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// ABI version the payload is encoded in (never 0).
    pub version: u8,
    pub kind: Kind,
    /// Request opcode, or event code for events.
    pub opcode: u16,
    pub request_id: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = self.version;
        h[5] = self.kind as u8;
        h[6..8].copy_from_slice(&self.opcode.to_le_bytes());
        h[8..12].copy_from_slice(&self.request_id.to_le_bytes());
        h[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let hc = crc32(&h[0..20]);
        h[20..24].copy_from_slice(&hc.to_le_bytes());
        h
    }

    /// Parses and checks a header. `b` must hold at least [`HEADER_LEN`]
    /// bytes starting with [`MAGIC`].
    fn parse(b: &[u8]) -> Result<Header, FrameError> {
        let rd32 = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if rd32(20) != crc32(&b[0..20]) {
            return Err(FrameError::HeaderCrc);
        }
        let version = b[4];
        let opcode = u16::from_le_bytes([b[6], b[7]]);
        let request_id = rd32(8);
        let payload_len = rd32(12);
        let kind = match Kind::from_u8(b[5]) {
            Some(k) => k,
            None => return Err(FrameError::BadKind { kind: b[5], opcode, request_id }),
        };
        if version == 0 {
            return Err(FrameError::BadVersion { kind, opcode, request_id });
        }
        if payload_len as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLong { kind, opcode, request_id, len: payload_len });
        }
        Ok(Header { version, kind, opcode, request_id, payload_len, payload_crc: rd32(16) })
    }
}

/// A complete, checked frame borrowed from a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Malformed input seen by the decoder. Each error has already been
/// skipped over; decoding continues with the bytes that follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Bytes that cannot start a frame were discarded.
    Garbage { skipped: usize },
    /// The magic was found but the header CRC is wrong.
    HeaderCrc,
    /// Header CRC good, kind byte unknown.
    BadKind { kind: u8, opcode: u16, request_id: u32 },
    /// Header CRC good, version byte 0.
    BadVersion { kind: Kind, opcode: u16, request_id: u32 },
    /// Header CRC good, payload length above [`MAX_PAYLOAD`].
    TooLong { kind: Kind, opcode: u16, request_id: u32, len: u32 },
    /// Header good, payload CRC wrong.
    PayloadCrc { kind: Kind, opcode: u16, request_id: u32 },
    /// A frame that never completed: the receiver gave up waiting for the
    /// rest of it ([`Decoder::abandon_partial`]); `held` bytes were buffered.
    Truncated { held: usize },
}

impl FrameError {
    /// For a broken request whose header could still be trusted: the
    /// (request id, opcode) an error response (H_PARAMETER) should carry.
    pub fn reply_target(&self) -> Option<(u32, u16)> {
        match *self {
            FrameError::BadVersion { kind: Kind::Request, opcode, request_id }
            | FrameError::TooLong { kind: Kind::Request, opcode, request_id, .. }
            | FrameError::PayloadCrc { kind: Kind::Request, opcode, request_id }
                if request_id != 0 =>
            {
                Some((request_id, opcode))
            }
            _ => None,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Garbage { skipped } => write!(f, "skipped {skipped} garbage bytes"),
            FrameError::HeaderCrc => f.write_str("header CRC mismatch"),
            FrameError::BadKind { kind, .. } => write!(f, "unknown frame kind {kind}"),
            FrameError::BadVersion { .. } => f.write_str("frame version 0"),
            FrameError::TooLong { len, .. } => {
                write!(f, "payload length {len} above maximum {MAX_PAYLOAD}")
            }
            FrameError::PayloadCrc { request_id, opcode, .. } => {
                write!(f, "payload CRC mismatch (request id {request_id}, opcode {opcode:#06x})")
            }
            FrameError::Truncated { held } => write!(f, "incomplete frame abandoned ({held} bytes held)"),
        }
    }
}

/// Writes the header of a frame whose payload the caller already placed at
/// `out[HEADER_LEN..HEADER_LEN + payload_len]`. Returns the frame length.
pub fn seal_frame(out: &mut [u8], version: u8, kind: Kind, opcode: u16, request_id: u32, payload_len: usize) -> Result<usize, EncodeError> {
    if version == 0 {
        return Err(EncodeError::Invalid("version"));
    }
    if payload_len > MAX_PAYLOAD {
        return Err(EncodeError::Invalid("payload length"));
    }
    let total = HEADER_LEN + payload_len;
    if out.len() < total {
        return Err(EncodeError::BufferTooSmall);
    }
    let header = Header { version, kind, opcode, request_id, payload_len: payload_len as u32, payload_crc: crc32(&out[HEADER_LEN..total]) };
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(total)
}

/// Writes a whole frame (header and a copy of `payload`) into `out`.
pub fn encode_frame(out: &mut [u8], version: u8, kind: Kind, opcode: u16, request_id: u32, payload: &[u8]) -> Result<usize, EncodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::Invalid("payload length"));
    }
    if out.len() < HEADER_LEN + payload.len() {
        return Err(EncodeError::BufferTooSmall);
    }
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    seal_frame(out, version, kind, opcode, request_id, payload.len())
}

/// Length of the longest suffix of `b` that is a proper prefix of MAGIC.
fn partial_magic_suffix(b: &[u8]) -> usize {
    (1..MAGIC.len()).rev().find(|&k| b.len() >= k && b[b.len() - k..] == MAGIC[..k]).unwrap_or(0)
}

/// First offset below `limit` where `b` holds [`MAGIC`], or a prefix of it
/// that runs to the end of `b` (the rest may still arrive).
fn first_magic_start(b: &[u8], limit: usize) -> Option<usize> {
    (0..limit.min(b.len())).find(|&i| {
        let here = &b[i..b.len().min(i + MAGIC.len())];
        *here == MAGIC[..here.len()]
    })
}

fn find_magic(b: &[u8]) -> Option<usize> {
    b.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// Streaming frame decoder with resynchronisation.
///
/// Feed it byte chunks of any size (one byte, half a frame, many frames);
/// it yields complete frames in order and reports malformed input as
/// [`FrameError`]s, which never stop the frames that follow. Memory use is
/// fixed ([`MAX_FRAME`] bytes of buffer, no allocation), so a guest can
/// keep one in a `static`.
///
/// Resync rule: zero bytes between frames are idle fill and skipped
/// silently; otherwise scan for [`MAGIC`]; bytes before it are garbage. A header
/// whose CRC or fields are bad, or a frame whose payload CRC is bad, costs
/// exactly one byte (the first magic byte) and scanning restarts right
/// after it, so a valid frame hidden behind a broken one is still found.
///
/// Overlap rule: a frame cut short can be completed by the first bytes of
/// the frame that follows, when they equal its lost tail. So after a frame
/// is delivered its bytes (after the first) stay buffered as a *shadow*: a
/// frame that starts inside the shadow and ends beyond it is still
/// delivered. Candidates that end inside the shadow (frames embedded in a
/// good payload) or fail their checks are dropped without an error, since
/// those bytes already belonged to a good frame.
///
/// Time-limit rule: the decoder has no clock. A header that promises more
/// bytes than ever come would hold back every frame behind it until enough
/// bytes arrive; the receiver therefore calls [`Decoder::abandon_partial`]
/// when the stream has been quiet for its frame time limit while bytes are
/// held, which treats the incomplete frame like a broken one (one byte
/// dropped, scanning restarts).
pub struct Decoder {
    buf: [u8; MAX_FRAME],
    start: usize,
    end: usize,
    /// Length of the frame handed out by the last `next_frame`, dropped at
    /// the start of the next call (the frame borrowed the buffer until then).
    pending_consume: usize,
    /// Bytes from `start` on that belong to the last delivered frame; only
    /// frames that begin here and end past them are accepted (overlap rule).
    shadow: usize,
}

/// What the overlap check made of a frame start inside the shadow.
enum Overlap {
    /// More bytes are needed to decide.
    NeedMore,
    /// Not a frame that ends past the shadow; skip this byte.
    Reject,
    /// A complete frame of this many bytes that ends past the shadow.
    Accept(Header, usize),
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder").field("buffered", &self.buffered()).finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub const fn new() -> Decoder {
        Decoder { buf: [0; MAX_FRAME], start: 0, end: 0, pending_consume: 0, shadow: 0 }
    }

    /// Forgets all buffered bytes (e.g. after the channel reconnected).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.pending_consume = 0;
        self.shadow = 0;
    }

    /// Bytes buffered and not yet returned as a frame or error.
    pub fn buffered(&self) -> usize {
        self.end - self.start - self.pending_consume - self.shadow
    }

    /// Drops the frame handed out last, except for the bytes after its
    /// first one, which become the shadow (see the overlap rule).
    fn apply_consume(&mut self) {
        if self.pending_consume > 0 {
            self.start += 1;
            self.shadow = self.pending_consume - 1;
        }
        self.pending_consume = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Copies as much of `input` as fits into the buffer and returns how
    /// many bytes were taken. Call [`Decoder::next_frame`] until it returns
    /// `None`, then feed the rest; after that drain there is always room
    /// for at least one more byte. [`Decoder::push`] does this loop for you.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        self.apply_consume();
        if MAX_FRAME - self.end < input.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = input.len().min(MAX_FRAME - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&input[..n]);
        self.end += n;
        n
    }

    /// The next complete frame or error from the buffered bytes, or `None`
    /// if more input is needed.
    pub fn next_frame(&mut self) -> Option<Result<FrameRef<'_>, FrameError>> {
        self.apply_consume();
        while self.shadow > 0 {
            let avail = &self.buf[self.start..self.end];
            let Some(i) = first_magic_start(avail, self.shadow) else {
                self.start += self.shadow;
                self.shadow = 0;
                break;
            };
            self.start += i;
            self.shadow -= i;
            match self.check_overlap() {
                Overlap::NeedMore => return None,
                Overlap::Reject => {
                    self.start += 1;
                    self.shadow -= 1;
                }
                Overlap::Accept(header, total) => return Some(Ok(self.deliver(header, total))),
            }
        }
        // Zero bytes between frames are idle fill (the sync preamble) and
        // are skipped without an error.
        while self.start < self.end && self.buf[self.start] == 0 {
            self.start += 1;
        }
        let avail = &self.buf[self.start..self.end];
        match find_magic(avail) {
            Some(0) => {}
            Some(i) => {
                self.start += i;
                return Some(Err(FrameError::Garbage { skipped: i }));
            }
            None => {
                let skip = avail.len() - partial_magic_suffix(avail);
                if skip == 0 {
                    return None;
                }
                self.start += skip;
                return Some(Err(FrameError::Garbage { skipped: skip }));
            }
        }
        if avail.len() < HEADER_LEN {
            return None;
        }
        let header = match Header::parse(&avail[..HEADER_LEN]) {
            Ok(h) => h,
            Err(e) => {
                self.start += 1;
                return Some(Err(e));
            }
        };
        let total = HEADER_LEN + header.payload_len as usize;
        if avail.len() < total {
            return None;
        }
        if crc32(&avail[HEADER_LEN..total]) != header.payload_crc {
            self.start += 1;
            return Some(Err(FrameError::PayloadCrc { kind: header.kind, opcode: header.opcode, request_id: header.request_id }));
        }
        Some(Ok(self.deliver(header, total)))
    }

    /// Hands out the checked frame of `total` bytes at `start`; its bytes
    /// are dropped (all but the shadow) at the next call.
    fn deliver(&mut self, header: Header, total: usize) -> FrameRef<'_> {
        self.shadow = 0;
        self.pending_consume = total;
        let s = self.start;
        FrameRef { header, payload: &self.buf[s + HEADER_LEN..s + total] }
    }

    /// Checks the possible frame start at `start`, which lies inside the
    /// shadow: only a complete frame that ends past the shadow counts.
    fn check_overlap(&self) -> Overlap {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Overlap::NeedMore;
        }
        let Ok(header) = Header::parse(&avail[..HEADER_LEN]) else {
            return Overlap::Reject;
        };
        let total = HEADER_LEN + header.payload_len as usize;
        if total <= self.shadow {
            return Overlap::Reject;
        }
        if avail.len() < total {
            return Overlap::NeedMore;
        }
        if crc32(&avail[HEADER_LEN..total]) != header.payload_crc {
            return Overlap::Reject;
        }
        Overlap::Accept(header, total)
    }

    /// Whether bytes are held after [`Decoder::next_frame`] returned `None`:
    /// the start of a frame that is not complete yet.
    pub fn holds_partial(&self) -> bool {
        self.end - self.start > self.pending_consume
    }

    /// Gives up on the incomplete frame the decoder is waiting for (call it
    /// after [`Decoder::next_frame`] returned `None`, when no byte has come
    /// for the receiver's frame time limit): its first byte is dropped, as
    /// for a broken frame, and [`Decoder::next_frame`] then delivers what
    /// follows it. Returns the error to report, or `None` if nothing was
    /// held. Each call drops at least one byte, so calling it until it
    /// returns `None` (draining between calls) empties the buffer.
    pub fn abandon_partial(&mut self) -> Option<FrameError> {
        self.apply_consume();
        let held = self.end - self.start;
        if held == 0 {
            return None;
        }
        self.start += 1;
        self.shadow = self.shadow.saturating_sub(1);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Some(FrameError::Truncated { held })
    }

    /// Feeds all of `input` and calls `on_item` for every frame or error
    /// that becomes complete, in stream order.
    pub fn push<F>(&mut self, mut input: &[u8], mut on_item: F)
    where
        F: FnMut(Result<FrameRef<'_>, FrameError>),
    {
        loop {
            let n = self.feed(input);
            input = &input[n..];
            while let Some(item) = self.next_frame() {
                on_item(item);
            }
            if input.is_empty() {
                break;
            }
        }
    }
}

/// Decodes one frame from the start of `bytes` (which must hold the whole
/// frame; trailing bytes are allowed and ignored). Returns the frame and
/// its length. For a byte stream use [`Decoder`] instead.
pub fn parse_frame(bytes: &[u8]) -> Result<(FrameRef<'_>, usize), FrameError> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return Err(FrameError::Garbage { skipped: bytes.len().min(1) });
    }
    let header = Header::parse(&bytes[..HEADER_LEN])?;
    let total = HEADER_LEN + header.payload_len as usize;
    if bytes.len() < total || crc32(&bytes[HEADER_LEN..total]) != header.payload_crc {
        return Err(FrameError::PayloadCrc { kind: header.kind, opcode: header.opcode, request_id: header.request_id });
    }
    Ok((FrameRef { header, payload: &bytes[HEADER_LEN..total] }, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn frame(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; MAX_FRAME];
        let n = encode_frame(&mut out, 1, Kind::Request, 0x0002, id, payload).unwrap();
        out.truncate(n);
        out
    }

    fn decode_all(dec: &mut Decoder, input: &[u8]) -> (Vec<(u32, Vec<u8>)>, Vec<FrameError>) {
        let mut frames = Vec::new();
        let mut errors = Vec::new();
        dec.push(input, |item| match item {
            Ok(f) => frames.push((f.header.request_id, f.payload.to_vec())),
            Err(e) => errors.push(e),
        });
        (frames, errors)
    }

    #[test]
    fn header_layout() {
        let f = frame(0x0403_0201, b"hi");
        assert_eq!(f.len(), HEADER_LEN + 2);
        assert_eq!(&f[0..4], b"LPHC");
        assert_eq!(f[4], 1);
        assert_eq!(f[5], 1);
        assert_eq!(&f[6..8], &[2, 0]);
        assert_eq!(&f[8..12], &[1, 2, 3, 4]);
        assert_eq!(&f[12..16], &[2, 0, 0, 0]);
        assert_eq!(&f[16..20], &crc32(b"hi").to_le_bytes());
        assert_eq!(&f[20..24], &crc32(&f[0..20]).to_le_bytes());
        assert_eq!(&f[24..], b"hi");
    }

    #[test]
    fn parse_whole_frame() {
        let f = frame(7, b"abc");
        let (fr, n) = parse_frame(&f).unwrap();
        assert_eq!(n, f.len());
        assert_eq!(fr.payload, b"abc");
        assert_eq!(fr.header.request_id, 7);
        assert_eq!(fr.header.kind, Kind::Request);
    }

    #[test]
    fn byte_at_a_time() {
        let mut dec = Decoder::new();
        let mut stream = frame(1, b"one");
        stream.extend(frame(2, b""));
        stream.extend(frame(3, &[0xAA; MAX_PAYLOAD]));
        let mut got = Vec::new();
        for b in &stream {
            let (f, e) = decode_all(&mut dec, core::slice::from_ref(b));
            assert!(e.is_empty(), "{e:?}");
            got.extend(f);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (1, b"one".to_vec()));
        assert_eq!(got[1], (2, Vec::new()));
        assert_eq!(got[2].1.len(), MAX_PAYLOAD);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn garbage_then_frames() {
        let mut dec = Decoder::new();
        let mut stream = b"xxLPHyyLP".to_vec();
        stream.extend(frame(1, b"a"));
        stream.extend(b"LPHC garbage that has the magic");
        stream.extend(frame(2, b"b"));
        let (f, e) = decode_all(&mut dec, &stream);
        assert_eq!(f, [(1, b"a".to_vec()), (2, b"b".to_vec())]);
        assert!(e.contains(&FrameError::Garbage { skipped: 9 }), "{e:?}");
        assert!(e.contains(&FrameError::HeaderCrc), "{e:?}");
    }

    #[test]
    fn trailing_partial_magic_is_kept() {
        let mut dec = Decoder::new();
        let f = frame(5, b"z");
        let mut first = b"junkLP".to_vec();
        first.extend(&f[2..3]); // "LPH"
        let (fr, e) = decode_all(&mut dec, &first);
        assert!(fr.is_empty());
        assert_eq!(e, [FrameError::Garbage { skipped: 4 }]);
        let (fr, e) = decode_all(&mut dec, &f[3..]);
        assert!(e.is_empty());
        assert_eq!(fr, [(5, b"z".to_vec())]);
    }

    #[test]
    fn corrupt_payload_is_reported_and_next_frame_survives() {
        let mut dec = Decoder::new();
        let mut bad = frame(9, b"payload");
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let mut stream = bad;
        stream.extend(frame(10, b"ok"));
        let (f, e) = decode_all(&mut dec, &stream);
        assert_eq!(f, [(10, b"ok".to_vec())]);
        assert_eq!(e[0], FrameError::PayloadCrc { kind: Kind::Request, opcode: 2, request_id: 9 });
        assert_eq!(e[0].reply_target(), Some((9, 2)));
    }

    #[test]
    fn truncated_frame_does_not_swallow_the_next() {
        // A frame cut short (peer restarted mid-write) is followed by whole
        // frames: they are delivered once the decoder gives up on the first.
        let mut dec = Decoder::new();
        let big = frame(1, &[7u8; 4000]);
        let mut stream = big[..100].to_vec();
        for id in 2..=4 {
            stream.extend(frame(id, &[id as u8; 1500]));
        }
        // Enough filler for the broken frame's claimed length to be reached.
        stream.extend(std::vec![0u8; 4000]);
        let (f, e) = decode_all(&mut dec, &stream);
        let ids: Vec<u32> = f.iter().map(|x| x.0).collect();
        assert_eq!(ids, [2, 3, 4]);
        assert!(matches!(e[0], FrameError::PayloadCrc { request_id: 1, .. }));
    }

    #[test]
    fn a_frame_that_never_completes_is_abandoned_and_the_next_delivered() {
        // A header that promises 4000 bytes, 100 of them sent, then a whole
        // small frame, then silence: the small frame is held back until the
        // receiver's time limit makes it abandon the incomplete one.
        let mut dec = Decoder::new();
        let big = frame(1, &[7u8; 4000]);
        let mut stream = big[..100].to_vec();
        stream.extend(frame(2, b"behind it"));
        let (f, e) = decode_all(&mut dec, &stream);
        assert!(f.is_empty() && e.is_empty(), "{f:?} {e:?}");
        assert!(dec.holds_partial());
        let mut got = Vec::new();
        let mut errors = Vec::new();
        while let Some(err) = dec.abandon_partial() {
            errors.push(err);
            while let Some(item) = dec.next_frame() {
                match item {
                    Ok(fr) => got.push((fr.header.request_id, fr.payload.to_vec())),
                    Err(e) => errors.push(e),
                }
            }
        }
        assert_eq!(got, [(2, b"behind it".to_vec())]);
        assert_eq!(errors[0], FrameError::Truncated { held: stream.len() });
        assert!(!dec.holds_partial() && dec.buffered() == 0);
        // Decoding goes on normally afterwards.
        let (f, e) = decode_all(&mut dec, &frame(3, b"next"));
        assert_eq!(f, [(3, b"next".to_vec())]);
        assert!(e.is_empty());
    }

    #[test]
    fn abandon_partial_holds_nothing_back_after_whole_frames() {
        let mut dec = Decoder::new();
        let (f, _) = decode_all(&mut dec, &frame(1, b"whole"));
        assert_eq!(f.len(), 1);
        assert!(!dec.holds_partial(), "a delivered frame is not a partial one");
        assert_eq!(dec.abandon_partial(), None);
        // A half header (fewer than 24 bytes) is partial too.
        let (_, e) = decode_all(&mut dec, &frame(2, b"x")[..10]);
        assert!(e.is_empty());
        assert!(dec.holds_partial());
        assert_eq!(dec.abandon_partial(), Some(FrameError::Truncated { held: 10 }));
    }

    /// A frame cut short whose lost tail equals the first `tail_len`
    /// bytes of the next frame, followed directly by that next frame.
    fn cut_frame_then_next(next: &[u8], tail_len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut payload = b"body".to_vec();
        payload.extend(&next[..tail_len]);
        let whole = frame(1, &payload);
        let mut stream = whole[..whole.len() - tail_len].to_vec();
        stream.extend(next);
        (stream, payload)
    }

    #[test]
    fn frame_after_cut_frame_completed_by_its_first_byte_survives() {
        // The shape the property test found: header intact, one payload
        // byte missing, and the next frame's first byte (`L`) supplies it.
        let next = frame(2, b"next");
        let (stream, cut_payload) = cut_frame_then_next(&next, 1);
        let (f, e) = decode_all(&mut Decoder::new(), &stream);
        assert_eq!(f, [(1, cut_payload.clone()), (2, b"next".to_vec())]);
        assert!(e.is_empty(), "{e:?}");
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            got.extend(decode_all(&mut dec, core::slice::from_ref(b)).0);
        }
        assert_eq!(got, [(1, cut_payload), (2, b"next".to_vec())]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn frame_after_cut_frame_completed_by_its_header_survives() {
        for tail_len in [3, 4, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 2] {
            let next = frame(2, b"next");
            let (stream, _) = cut_frame_then_next(&next, tail_len);
            let (f, _) = decode_all(&mut Decoder::new(), &stream);
            assert_eq!(f.last(), Some(&(2, b"next".to_vec())), "tail {tail_len}");
        }
    }

    #[test]
    fn overlap_does_not_depend_on_chunking() {
        let next = frame(2, b"next");
        for tail_len in [1, 2, 3, 4, HEADER_LEN + 2] {
            let (mut stream, _) = cut_frame_then_next(&next, tail_len);
            stream.extend(frame(3, b"last"));
            let whole = decode_all(&mut Decoder::new(), &stream);
            for split in 1..stream.len() {
                let mut dec = Decoder::new();
                let (mut f, mut e) = decode_all(&mut dec, &stream[..split]);
                let (f2, e2) = decode_all(&mut dec, &stream[split..]);
                f.extend(f2);
                e.extend(e2);
                assert_eq!((f, e), whole, "tail {tail_len}, split at {split}");
            }
        }
    }

    #[test]
    fn frame_embedded_in_a_payload_is_not_delivered() {
        let mut stream = frame(1, &frame(5, b"inner"));
        stream.extend(frame(2, b"after"));
        let (f, e) = decode_all(&mut Decoder::new(), &stream);
        assert_eq!(f, [(1, frame(5, b"inner")), (2, b"after".to_vec())]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn header_in_a_payload_tail_does_not_swallow_the_next_frame() {
        // The last bytes of a good payload look like the start of a frame
        // that runs on into the next one; its payload CRC fails there.
        let inner = frame(5, b"inner");
        let mut stream = frame(1, &inner[..inner.len() - 2]);
        stream.extend(frame(2, b"after"));
        let (f, e) = decode_all(&mut Decoder::new(), &stream);
        assert_eq!(f, [(1, inner[..inner.len() - 2].to_vec()), (2, b"after".to_vec())]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn oversized_length_with_valid_header_crc_is_rejected() {
        let mut h = frame(3, b"")[..HEADER_LEN].to_vec();
        h[12..16].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        let c = crc32(&h[0..20]);
        h[20..24].copy_from_slice(&c.to_le_bytes());
        let mut dec = Decoder::new();
        h.extend(frame(4, b"after"));
        let (f, e) = decode_all(&mut dec, &h);
        assert_eq!(f, [(4, b"after".to_vec())]);
        assert!(matches!(e[0], FrameError::TooLong { request_id: 3, .. }));
        assert_eq!(e[0].reply_target(), Some((3, 2)));
    }

    #[test]
    fn bad_kind_and_version_zero() {
        for (off, val) in [(5usize, 9u8), (4, 0)] {
            let mut f = frame(3, b"q");
            f[off] = val;
            let c = crc32(&f[0..20]);
            f[20..24].copy_from_slice(&c.to_le_bytes());
            let mut dec = Decoder::new();
            let (fr, e) = decode_all(&mut dec, &f);
            assert!(fr.is_empty());
            assert!(matches!(e[0], FrameError::BadKind { kind: 9, .. } | FrameError::BadVersion { .. }), "{e:?}");
        }
    }

    #[test]
    fn encode_limits() {
        let mut small = [0u8; 10];
        assert_eq!(encode_frame(&mut small, 1, Kind::Event, 1, 0, b""), Err(EncodeError::BufferTooSmall));
        let mut out = std::vec![0u8; MAX_FRAME + 10];
        assert_eq!(encode_frame(&mut out, 1, Kind::Event, 1, 0, &[0; MAX_PAYLOAD + 1]), Err(EncodeError::Invalid("payload length")));
        assert_eq!(encode_frame(&mut out, 0, Kind::Event, 1, 0, b""), Err(EncodeError::Invalid("version")));
    }

    #[test]
    fn sync_preamble_flushes_a_half_written_frame() {
        let mut dec = Decoder::new();
        let big = frame(1, &[7u8; 3000]);
        let mut stream = big[..500].to_vec();
        stream.extend(std::vec![0u8; SYNC_PREAMBLE_LEN]);
        stream.extend(frame(2, b"hello"));
        let (f, e) = decode_all(&mut dec, &stream);
        assert_eq!(f, [(2, b"hello".to_vec())]);
        // One error for the broken frame; the zero fill itself is silent
        // apart from whatever of the broken frame's bytes is rescanned.
        assert!(matches!(e[0], FrameError::PayloadCrc { request_id: 1, .. }));
        assert_eq!(dec.buffered(), 0);
        let (f, e) = decode_all(&mut dec, &[0u8; 100]);
        assert!(f.is_empty() && e.is_empty());
    }

    #[test]
    fn reset_drops_partial_input() {
        let mut dec = Decoder::new();
        let f = frame(1, b"abc");
        let (fr, _) = decode_all(&mut dec, &f[..10]);
        assert!(fr.is_empty());
        dec.reset();
        assert_eq!(dec.buffered(), 0);
        let (fr, e) = decode_all(&mut dec, &f);
        assert_eq!(fr.len(), 1);
        assert!(e.is_empty());
    }
}
