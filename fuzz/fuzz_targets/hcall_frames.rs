//! Fuzz target: the hypercall frame layer (`hypercall_abi::frame`), the
//! first decoder every byte from the other side meets, in both directions.
//!
//! Input: one byte `n`, then `n % 16` chunk sizes, then the byte stream.
//! Checks, for any input:
//! - the streaming `Decoder` never panics and never over-buffers;
//! - resync does not depend on chunking: fed in the fuzzed chunk sizes, one
//!   byte at a time and all at once, it yields the same frames and errors
//!   (garbage counts aside);
//! - `parse_frame` agrees with the decoder on a frame at the stream start;
//! - every frame it yields re-encodes (`encode_frame`) to exactly its bytes;
//! - the time-limit rule (`Decoder::abandon_partial`, docs/abi.md §3): after
//!   the stream, giving up on what is held, again and again, empties the
//!   decoder in at most one step per held byte, and every frame it then
//!   yields is well formed.
//!
//! Then, read from the same bytes with `arbitrary`: a frame built from any
//! version, kind, opcode, request id and payload decodes back to itself.
#![no_main]

use hypercall_abi::{encode_frame, parse_frame, Decoder, Kind, MAGIC, MAX_FRAME, MAX_PAYLOAD};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use lparos_fuzz::{decode_stream, without_garbage, Item};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 16).min(rest.len());
    let (chunk_sizes, stream) = rest.split_at(n);

    let mut decoder = Box::new(Decoder::new());
    let chunked = decode_stream(&mut decoder, stream, chunk_sizes);
    let bytewise = decode_stream(&mut decoder, stream, &[1]);
    let whole = decode_stream(&mut decoder, stream, &[]);
    abandon_until_empty(&mut decoder);
    let chunked = without_garbage(chunked);
    assert_eq!(chunked, without_garbage(bytewise), "chunked vs byte-at-a-time");
    assert_eq!(chunked, without_garbage(whole), "chunked vs all at once");

    if stream.starts_with(&MAGIC) {
        if let Ok((frame, _)) = parse_frame(stream) {
            let first = chunked.first().expect("parse_frame found a frame the decoder missed");
            let expected = Item::Frame { header: frame.header, payload: frame.payload.to_vec() };
            assert_eq!(first, &expected, "parse_frame and Decoder disagree");
        }
    }

    let mut out = vec![0u8; MAX_FRAME];
    for item in &chunked {
        if let Item::Frame { header, payload } = item {
            let len = encode_frame(&mut out, header.version, header.kind, header.opcode, header.request_id, payload)
                .expect("a decoded frame must re-encode");
            let (again, used) = parse_frame(&out[..len]).expect("re-encoded frame must parse");
            assert_eq!(used, len);
            assert_eq!((again.header, again.payload), (*header, payload.as_slice()));
        }
    }

    roundtrip_arbitrary_frame(data, &mut out);
});

/// Applies the time-limit rule to whatever the decoder still holds.
fn abandon_until_empty(decoder: &mut Decoder) {
    let mut steps = 0;
    let mut held = decoder.holds_partial();
    while let Some(e) = decoder.abandon_partial() {
        assert!(held, "abandoned {e:?} while holding nothing");
        steps += 1;
        assert!(steps <= MAX_FRAME, "abandon_partial does not make progress");
        while let Some(item) = decoder.next_frame() {
            if let Ok(frame) = item {
                assert!(frame.payload.len() <= MAX_PAYLOAD);
            }
        }
        held = decoder.holds_partial();
    }
    assert!(!decoder.holds_partial(), "bytes held after abandoning");
}

/// encode_frame then parse_frame gives back the same fields, for fields
/// drawn from the fuzz input.
fn roundtrip_arbitrary_frame(data: &[u8], out: &mut [u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(version), Ok(kind), Ok(opcode), Ok(request_id)) =
        (u8::arbitrary(&mut u), u.choose(&[Kind::Request, Kind::Response, Kind::Event]), u16::arbitrary(&mut u), u32::arbitrary(&mut u))
    else {
        return;
    };
    let payload = u.take_rest();
    match encode_frame(out, version, *kind, opcode, request_id, payload) {
        Ok(len) => {
            let (frame, used) = parse_frame(&out[..len]).expect("encoded frame must parse");
            assert_eq!(used, len);
            assert_eq!(
                (frame.header.version, frame.header.kind, frame.header.opcode, frame.header.request_id, frame.payload),
                (version, *kind, opcode, request_id, payload)
            );
        }
        Err(_) => assert!(version == 0 || payload.len() > MAX_PAYLOAD, "encode_frame refused a valid frame"),
    }
}
