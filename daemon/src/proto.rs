//! tenured's native client protocol, version 1 (documented for users in docs/protocol.md).
//!
//! Framing: every message is a 4-byte little-endian length followed by that many bytes of
//! UTF-8 JSON; at most [`FRAME_MAX_BYTES`]. The client sends one request and reads one reply;
//! the first request of a connection must be `hello` with the protocol version. The
//! connection is the registration: when it closes, the daemon releases its leases.
//!
//! Invariants: a frame longer than the limit, invalid JSON or an unknown field is answered
//! with an error reply (`bad_request`) and the connection is closed when the stream can no
//! longer be trusted (bad length); nothing a client sends can affect another client.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame accepted or sent.
pub const FRAME_MAX_BYTES: usize = 64 * 1024;

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First request of a connection.
    Hello {
        /// Protocol version the client speaks.
        version: u32,
        /// A name for this client (shown by `status`).
        #[serde(default)]
        name: Option<String>,
    },
    /// Lockspaces, leases, watchdog and clients. (Variants without fields are written `{}`
    /// so that unknown fields are refused for them too.)
    Status {},
    /// Join a lockspace: `NAME:HOST_ID:PATH:OFFSET`. With `wait`, the reply comes when the
    /// join ended; otherwise at once (follow it with `lockspace_list`).
    LockspaceAdd {
        /// Lockspace spec.
        spec: String,
        /// Reply when joined (or failed).
        #[serde(default)]
        wait: bool,
        /// This lockspace's io_timeout T in seconds (absent: the daemon's).
        #[serde(default)]
        io_timeout_s: Option<u64>,
    },
    /// Leave a lockspace (refused while leases are held in it).
    LockspaceRemove {
        /// Lockspace name.
        name: String,
        /// Reply when left.
        #[serde(default)]
        wait: bool,
    },
    /// Mark a lockspace used (sanlock's SET_CONFIG): while used, it cannot be removed, and if
    /// it is lost it is never cleared — the watchdog resets the host as if an unkillable
    /// process held a lease in it. `used_by_orphans`: the same while orphan leases exist.
    LockspaceConfig {
        /// Lockspace name.
        name: String,
        /// Set or clear "used".
        #[serde(default)]
        used: Option<bool>,
        /// Set or clear "used while orphans exist".
        #[serde(default)]
        used_by_orphans: Option<bool>,
    },
    /// A resource index operation (sanlock's rindex; docs/protocol.md). `create`, `delete`
    /// and `rebuild` hold the index's private lease through the joined lockspace (unless
    /// `no_lockspace`); the others are plain disk operations.
    Rindex {
        /// `LOCKSPACE:PATH:OFFSET`.
        rindex: String,
        /// What to do.
        action: RindexAction,
        /// Resource name (lookup, add, create, delete).
        #[serde(default)]
        name: Option<String>,
        /// Lease offset (lookup, add, remove).
        #[serde(default)]
        offset: Option<u64>,
        /// num_hosts of a created lease (0 or absent: the geometry's maximum).
        #[serde(default)]
        num_hosts: Option<u64>,
        /// Entries of a formatted index (absent: 4096).
        #[serde(default)]
        max_resources: Option<u32>,
        /// Sector size for format (absent: the device's).
        #[serde(default)]
        sector_size: Option<u32>,
        /// Align size in MiB for format (1, 2, 4, 8; absent: the sector size's default).
        #[serde(default)]
        align_mb: Option<u32>,
        /// Create / delete / rebuild without the private lease (no joined lockspace needed;
        /// the caller serialises).
        #[serde(default)]
        no_lockspace: bool,
    },
    /// Lockspaces and where they stand.
    LockspaceList {},
    /// The host table of a lockspace.
    Hosts {
        /// Lockspace name.
        lockspace: String,
    },
    /// Acquire one or more resources (`LS:NAME:PATH:OFFSET[:LVER|:SH]`), all or nothing.
    Acquire {
        /// Resource specs.
        resources: Vec<String>,
        /// Fail at once when an owner is not yet dead instead of waiting.
        #[serde(default)]
        no_wait: bool,
        /// Return the lock value blocks.
        #[serde(default)]
        lvb: bool,
        /// Acquire for this pid (privileged clients only; the lease lives until that pid
        /// exits or releases it).
        #[serde(default)]
        pid: Option<i32>,
    },
    /// Release resources (by `LS:NAME`), or all of this client's (or pid's) leases.
    Release {
        /// `LS:NAME` of each lease; empty with `all`.
        #[serde(default)]
        resources: Vec<String>,
        /// Release every lease.
        #[serde(default)]
        all: bool,
        /// Leases of this pid (privileged clients only).
        #[serde(default)]
        pid: Option<i32>,
        /// Lock value block to write first (hex), for a single resource.
        #[serde(default)]
        lvb_hex: Option<String>,
    },
    /// Leases of this client (or of a pid) with their state strings.
    Inquire {
        /// Leases of this pid (privileged clients only).
        #[serde(default)]
        pid: Option<i32>,
    },
    /// Who holds a resource (`LS:NAME:PATH:OFFSET`), read from disk without acquiring it; each
    /// owner's liveness as this host sees it when the lockspace is joined here.
    Owners {
        /// Resource spec.
        resource: String,
    },
    /// The lock value block read when the lease was acquired (acquire with `lvb`).
    LvbGet {
        /// `LS:NAME` of a lease of this client (or of `pid`).
        resource: String,
        /// Lease of this pid (privileged clients only).
        #[serde(default)]
        pid: Option<i32>,
    },
    /// Sets the lock value block written when the lease is released.
    LvbSet {
        /// `LS:NAME` of a lease of this client (or of `pid`).
        resource: String,
        /// The value (hex, at most one sector).
        hex: String,
        /// Lease of this pid (privileged clients only).
        #[serde(default)]
        pid: Option<i32>,
    },
    /// Convert a lease of this client (or of `pid`) from exclusive to shared (`shared: true`).
    /// Shared → exclusive is refused (not offered: release and acquire exclusively).
    Convert {
        /// `LS:NAME` of the lease.
        resource: String,
        /// The mode wanted.
        shared: bool,
        /// Lease of this pid (privileged clients only).
        #[serde(default)]
        pid: Option<i32>,
        /// To exclusive: fail at once (`owned_retry`) instead of waiting for a silent owner of
        /// the leader to be declared dead.
        #[serde(default)]
        no_wait: bool,
    },
    /// Ask the host holding a resource to give it up: writes the request record and sets the
    /// owner's bit in our bitmap for 6T; the owner SIGKILLs (force) or SIGTERMs / runs the kill
    /// path of (graceful) its holder.
    Request {
        /// Resource spec (`LS:NAME:PATH:OFFSET`).
        resource: String,
        /// FORCE (SIGKILL) instead of GRACEFUL.
        #[serde(default)]
        force: bool,
    },
    /// Restrictions this client puts on itself (sanlock's RESTRICT): `all` refuses every further
    /// request on this connection (its leases stay held); `no_sigkill` / `no_sigterm` make the
    /// daemon send the other signal when it would send that one.
    Restrict {
        /// Refuse every further request on this connection.
        #[serde(default)]
        all: bool,
        /// Never SIGKILL this client (SIGTERM instead).
        #[serde(default)]
        no_sigkill: bool,
        /// Never SIGTERM this client (SIGKILL instead).
        #[serde(default)]
        no_sigterm: bool,
    },
    /// A program run instead of SIGTERM when this client's leases are lost.
    KillPath {
        /// Program (absolute path).
        path: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
}

/// A reply: `{"ok": ...}` or `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Success, with a request-specific value.
    Ok(serde_json::Value),
    /// Failure.
    Error(ErrorReply),
}

/// Error codes (stable; scripts match on them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed, oversized or unknown request.
    BadRequest,
    /// Protocol version not supported, or `hello` missing.
    Version,
    /// The client may not do this (SO_PEERCRED).
    Permission,
    /// No such lockspace or lease.
    NotFound,
    /// Already exists / already held.
    Exists,
    /// Another request of this client is still running, the lockspace is in use, or another
    /// operation of this host works on the resource (an acquire or a conversion).
    Busy,
    /// Another client of this host is releasing the resource: try again.
    Releasing,
    /// A limit was reached.
    Full,
    /// The lease is held by a live host.
    OwnerAlive,
    /// The lease's owner is not yet dead (no_wait).
    OwnedRetry,
    /// The lease is not at the expected lver.
    LverMismatch,
    /// The lease is held shared by a live host.
    SharedBusy,
    /// Lockspace not joined (yet).
    NotJoined,
    /// The lockspace was lost.
    LockspaceLost,
    /// Storage I/O failed.
    Io,
    /// A record on disk is damaged or foreign.
    Corrupt,
    /// Anything else.
    Failed,
}

/// Resource index actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RindexAction {
    /// Write an empty index and its private lease.
    Format,
    /// Offset of a name; name at an offset; or the next free slot.
    Lookup,
    /// Write the entry an offset maps to.
    Add,
    /// Clear the entry an offset maps to.
    Remove,
    /// Write a new lease in the first free slot and its entry.
    Create,
    /// Clear a named lease and its entry.
    Delete,
    /// Rebuild the entries from the leases on disk.
    Rebuild,
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// One sentence for humans.
    pub message: String,
    /// Structured details (owner host id and generation, lver, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorReply {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            details: None,
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame above the limit.
    #[error("frame of {0} bytes exceeds the {FRAME_MAX_BYTES}-byte limit")]
    TooLarge(usize),
    /// The stream failed or ended.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is not the expected JSON.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > FRAME_MAX_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    // body.len() <= FRAME_MAX_BYTES fits u32.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// What [`split_frame`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Split {
    /// Not a whole frame yet.
    Incomplete,
    /// A whole frame: its body is `buf[4..4 + len]`.
    Frame(usize),
    /// The length prefix exceeds the limit: the stream cannot be resynchronised.
    TooLarge(usize),
}

/// Looks for a whole frame at the start of `buf`.
pub fn split_frame(buf: &[u8]) -> Split {
    let Some(prefix) = buf.get(..4) else {
        return Split::Incomplete;
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > FRAME_MAX_BYTES {
        return Split::TooLarge(len);
    }
    if buf.len() < 4 + len {
        Split::Incomplete
    } else {
        Split::Frame(len)
    }
}

/// Blocking write of one frame (clients).
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Blocking read of one frame (clients).
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let len = u32::from_le_bytes(prefix) as usize;
    if len > FRAME_MAX_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let req = Request::Acquire {
            resources: vec!["LS:r:/dev/x:1M".into()],
            no_wait: false,
            lvb: false,
            pid: None,
        };
        let bytes = encode(&req).expect("encode");
        assert_eq!(split_frame(&bytes[..3]), Split::Incomplete);
        assert_eq!(split_frame(&bytes[..bytes.len() - 1]), Split::Incomplete);
        assert_eq!(split_frame(&bytes), Split::Frame(bytes.len() - 4));
        let back: Request = read_frame(&mut &bytes[..]).expect("decode");
        assert_eq!(back, req);
        let huge = (u32::MAX).to_le_bytes();
        assert_eq!(split_frame(&huge), Split::TooLarge(u32::MAX as usize));
        // Unknown fields and ops are refused, not ignored.
        assert!(serde_json::from_str::<Request>(r#"{"op":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        let r = Reply::Error(ErrorReply::new(ErrorCode::OwnerAlive, "held"));
        let j = serde_json::to_string(&r).expect("json");
        assert_eq!(j, r#"{"error":{"code":"owner_alive","message":"held"}}"#);
    }

    proptest::proptest! {
        /// Any bytes: framing and request decoding never panic; a frame is never longer than
        /// the buffer or the limit.
        #[test]
        fn frames_and_requests_from_any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            match split_frame(&bytes) {
                Split::Frame(n) => {
                    proptest::prop_assert!(n + 4 <= bytes.len() && n <= FRAME_MAX_BYTES);
                    let _ = serde_json::from_slice::<Request>(&bytes[4..4 + n]);
                }
                Split::TooLarge(n) => proptest::prop_assert!(n > FRAME_MAX_BYTES),
                Split::Incomplete => {}
            }
            let _ = serde_json::from_slice::<Request>(&bytes);
        }
    }
}
