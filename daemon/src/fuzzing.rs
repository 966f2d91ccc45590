//! What the fuzz targets check (`daemon/fuzz`), and the tests on captured and random inputs
//! (`daemon/tests/fuzz_decoders.rs`): whatever bytes a local client sends, both socket decoders
//! end in a typed outcome, consume only what they were given, make progress, and decode
//! nothing beyond the protocol's limits. A violated check panics (the fuzzer's crash).

use crate::proto::{self, Request, Split};
use crate::sanlock_wire::{self as w, Body, Parsed};

/// The largest message of sanlock's protocol: an ACQUIRE of 8 resources on 4 disks each,
/// with its options.
pub const SANLOCK_MESSAGE_MAX: usize = w::HEADER_LEN
    + w::MAX_RESOURCES as usize * (w::RES_LEN + w::MAX_DISKS as usize * w::DISK_LEN)
    + w::OPTIONS_LEN;

/// A connection's bytes through sanlock's decoder, message after message as the server takes
/// them: every outcome stays within the bytes given and consumes at least a header; a whole
/// message is within [`SANLOCK_MESSAGE_MAX`], its body within the protocol's counts, decided
/// only once all its bytes are there and the same from exactly its bytes.
pub fn sanlock_wire(data: &[u8]) {
    let mut buf = data;
    while !buf.is_empty() {
        let parsed = w::parse(buf);
        let Some(n) = sanlock_outcome(buf, &parsed) else {
            return;
        };
        buf = &buf[n..];
    }
}

/// Checks one outcome of the decoder on `buf` (see [`sanlock_wire`]); the bytes it consumes,
/// or `None` when it waits for more.
pub fn sanlock_outcome(buf: &[u8], parsed: &Parsed) -> Option<usize> {
    let n = match parsed {
        Parsed::NeedMore => {
            assert!(
                buf.len() < SANLOCK_MESSAGE_MAX + w::HEADER_LEN,
                "waits for more than the largest message: {} bytes buffered",
                buf.len()
            );
            return None;
        }
        Parsed::Ignored(n) | Parsed::Invalid(n, ..) => *n,
        Parsed::Message(n, _, body) => {
            assert!(*n <= SANLOCK_MESSAGE_MAX, "a message of {n} bytes");
            assert!(*n <= buf.len(), "consumed {n} of {} bytes", buf.len());
            body_within_limits(body);
            assert_eq!(&w::parse(&buf[..*n]), parsed, "the same from its own bytes");
            assert_eq!(
                w::parse(&buf[..*n - 1]),
                Parsed::NeedMore,
                "decided before its last byte"
            );
            *n
        }
    };
    assert!(
        n >= w::HEADER_LEN && n <= buf.len(),
        "consumed {n} of {} bytes",
        buf.len()
    );
    Some(n)
}

fn body_within_limits(body: &Body) {
    let resources = |r: &[w::Resource]| {
        assert!(
            r.len() <= w::MAX_RESOURCES as usize,
            "{} resources",
            r.len()
        );
        for x in r {
            assert!(
                x.disks.len() <= w::MAX_DISKS as usize,
                "{} disks",
                x.disks.len()
            );
            // 48-byte fields, decoded lossily (a replacement character per bad byte).
            assert!(x.name.chars().count() <= 48 && x.lockspace.chars().count() <= 48);
        }
    };
    match body {
        Body::Acquire(r, owner) => {
            resources(r);
            assert!(owner.chars().count() <= 48);
        }
        Body::Resources(r) => resources(r),
        Body::ResourceWithDisks(r) => resources(std::slice::from_ref(r)),
        Body::SetLvb(r, lvb) => {
            resources(std::slice::from_ref(r));
            assert!(lvb.len() <= 4096, "an LVB of {} bytes", lvb.len());
        }
        Body::KillPath(path, args) => {
            assert!(path.chars().count() <= 1024 && args.chars().count() <= 1024);
        }
        Body::Empty | Body::Lockspace(_) | Body::Event(..) | Body::Rindex(..) => {}
    }
}

/// A connection's bytes through the native protocol's framing and request decoding, frame
/// after frame as the server takes them: a frame is within [`proto::FRAME_MAX_BYTES`] and the
/// bytes given; a length beyond the limit is refused as such; a request that decodes is
/// decided into a command, a front-end request or a typed refusal, and encodes back to a
/// request equal to itself.
pub fn native_frame(data: &[u8]) {
    let mut buf = data;
    loop {
        match proto::split_frame(buf) {
            Split::Incomplete => {
                if let Some(p) = buf.get(..4) {
                    let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    assert!(len <= proto::FRAME_MAX_BYTES && buf.len() < 4 + len);
                }
                return;
            }
            Split::TooLarge(len) => {
                assert!(len > proto::FRAME_MAX_BYTES);
                return;
            }
            Split::Frame(len) => {
                assert!(len <= proto::FRAME_MAX_BYTES && 4 + len <= buf.len());
                native_request(&buf[4..4 + len]);
                buf = &buf[4 + len..];
            }
        }
    }
}

/// One frame's body: JSON that decodes as a request is decided without a panic and
/// round-trips.
pub fn native_request(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<Request>(body) else {
        return;
    };
    let bytes = proto::encode(&req);
    if let Ok(bytes) = bytes {
        let back: Request = proto::read_frame(&mut &bytes[..]).expect("a request re-reads");
        assert_eq!(back, req, "a request encodes back to itself");
    }
    match req.decode() {
        proto::Decoded::Refused(e) => assert!(!e.message.is_empty(), "a refusal says why"),
        proto::Decoded::Host(_) | proto::Decoded::Rindex(_) | proto::Decoded::Front(_) => {}
    }
}
