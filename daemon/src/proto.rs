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
use tenure_format::{LeaseRef, LockspaceSpec, Name, ResourceSpec, RindexSpec};

use crate::host::command::{Command, Holder, Leases, RindexCommand};
use crate::host::reply::{Done, LeaseView, Reply as HostReply, RindexDone};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request frame (what the daemon accepts from a client).
pub const FRAME_MAX_BYTES: usize = 64 * 1024;

/// Largest reply frame (what a client accepts from the daemon): `status` and `metrics` of a
/// host with a hundred lockspaces are hundreds of KiB.
pub const REPLY_MAX_BYTES: usize = 16 << 20;

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
    /// The metrics in Prometheus' text exposition format (`{"text": ...}`).
    Metrics {},
    /// Hand everything over to a new tenured (the binary at `binary`, or this one's path)
    /// and exit once it took over (docs/operations.md "Upgrading tenured"). The answer comes
    /// from the new process.
    Upgrade {
        /// The new binary (absent: the path this tenured was started from).
        #[serde(default)]
        binary: Option<String>,
    },
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
        /// Keep the leases on disk as orphans when their holder goes (sanlock's
        /// RES_PERSISTENT); released by `release_orphans`, adopted with `adopt_orphan`.
        #[serde(default)]
        persistent: bool,
        /// Adopt an orphan of a resource in the mode asked for (else it is refused with
        /// `orphan`); a resource without an orphan is acquired.
        #[serde(default)]
        adopt_orphan: bool,
    },
    /// Release the orphans of a lockspace (all, or the named resource's); the reply lists
    /// the names whose release started.
    ReleaseOrphans {
        /// Lockspace name.
        lockspace: String,
        /// Only this resource's orphan.
        #[serde(default)]
        resource: Option<String>,
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

impl Request {
    /// The request's name, as its `op` tag spells it (metrics' `kind` label).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Status { .. } => "status",
            Request::Metrics { .. } => "metrics",
            Request::Upgrade { .. } => "upgrade",
            Request::LockspaceAdd { .. } => "lockspace_add",
            Request::LockspaceRemove { .. } => "lockspace_remove",
            Request::LockspaceConfig { .. } => "lockspace_config",
            Request::Rindex { .. } => "rindex",
            Request::LockspaceList { .. } => "lockspace_list",
            Request::Hosts { .. } => "hosts",
            Request::Acquire { .. } => "acquire",
            Request::ReleaseOrphans { .. } => "release_orphans",
            Request::Release { .. } => "release",
            Request::Inquire { .. } => "inquire",
            Request::Owners { .. } => "owners",
            Request::LvbGet { .. } => "lvb_get",
            Request::LvbSet { .. } => "lvb_set",
            Request::Convert { .. } => "convert",
            Request::Request { .. } => "request",
            Request::Restrict { .. } => "restrict",
            Request::KillPath { .. } => "kill_path",
        }
    }
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
    /// An orphan of the resource exists (a persistent lease whose holder went): adopt it
    /// in its mode, or release it first (sanlock: −EUCLEAN).
    Orphan,
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
    /// Structured details (owner host id and generation, fault, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// Details of an error reply; each field only where it applies. Unknown fields are accepted
/// (a newer daemon may add some).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    // Fields in alphabetical order: the order version 1 always wrote them in.
    /// Who is at fault: contention, storage, damaged, configuration, misuse, internal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<tenure_core::paxos::Fault>,
    /// The generation of the host holding the lease (contention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The host holding the lease (contention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<u64>,
    /// The result sanlock gives for this failure (resource index operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanlock_result: Option<i32>,
}

impl std::fmt::Display for Details {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
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
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream failed or ended.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is not the expected JSON.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes one request frame (at most [`FRAME_MAX_BYTES`]).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_within(msg, FRAME_MAX_BYTES)
}

/// Encodes one reply frame (at most [`REPLY_MAX_BYTES`]).
pub fn encode_reply<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_within(msg, REPLY_MAX_BYTES)
}

fn encode_within<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > limit {
        return Err(FrameError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    // body.len() <= REPLY_MAX_BYTES fits u32.
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

/// Blocking read of one request-sized frame (at most [`FRAME_MAX_BYTES`]).
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    read_frame_within(r, FRAME_MAX_BYTES)
}

/// Blocking read of one reply (clients; at most [`REPLY_MAX_BYTES`]).
pub fn read_reply<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    read_frame_within(r, REPLY_MAX_BYTES)
}

fn read_frame_within<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
    limit: usize,
) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
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
            persistent: false,
            adopt_orphan: false,
        };
        let bytes = encode(&req).expect("encode");
        assert_eq!(split_frame(&bytes[..3]), Split::Incomplete);
        assert_eq!(split_frame(&bytes[..bytes.len() - 1]), Split::Incomplete);
        assert_eq!(split_frame(&bytes), Split::Frame(bytes.len() - 4));
        let back: Request = read_frame(&mut &bytes[..]).expect("decode");
        assert_eq!(back, req);
        let huge = (u32::MAX).to_le_bytes();
        assert_eq!(split_frame(&huge), Split::TooLarge(u32::MAX as usize));
        // Replies may be larger than requests: a 1 MiB reply goes out and is read back by a
        // client, which a request-sized read refuses.
        let big = Reply::Ok(serde_json::json!({"text": "x".repeat(1 << 20)}));
        assert!(matches!(
            encode(&big),
            Err(FrameError::TooLarge {
                limit: FRAME_MAX_BYTES,
                ..
            })
        ));
        let bytes = encode_reply(&big).expect("a reply of 1 MiB");
        let back: Reply = read_reply(&mut &bytes[..]).expect("read back");
        assert_eq!(back, big);
        assert!(matches!(
            read_frame::<Reply>(&mut &bytes[..]),
            Err(FrameError::TooLarge {
                limit: FRAME_MAX_BYTES,
                ..
            })
        ));
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

/// A native request, decoded: a command for the host, or one the front end answers itself
/// (hello, status and listings, the resource index, owners and requests).
#[derive(Debug)]
pub enum Decoded {
    /// For [`crate::host::Host::execute`].
    Host(Command),
    /// A resource index request (carried out by the front end).
    Rindex(RindexCommand),
    /// Answered by the front end.
    Front(Request),
    /// Malformed (`bad_request`).
    Refused(ErrorReply),
}

fn bad(message: String) -> Decoded {
    Decoded::Refused(ErrorReply::new(ErrorCode::BadRequest, message))
}

impl Request {
    /// Parses the spec strings of a request into the host's typed command (the one place the
    /// native protocol's strings are read).
    pub fn decode(self) -> Decoded {
        let lease = |text: &str| {
            LeaseRef::parse(text)
                .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, format!("{text:?}: {e}")))
        };
        let command = match self {
            Request::LockspaceAdd {
                spec,
                wait,
                io_timeout_s,
            } => match LockspaceSpec::parse(&spec) {
                Ok(spec) => Command::LockspaceAdd {
                    spec,
                    wait,
                    io_timeout_s,
                },
                Err(e) => return bad(format!("lockspace spec: {e}")),
            },
            Request::LockspaceRemove { name, wait } => match Name::new(&name) {
                Ok(name) => Command::LockspaceRemove {
                    name,
                    wait,
                    kill_holders: false,
                },
                Err(e) => return bad(format!("lockspace name {name:?}: {e}")),
            },
            Request::LockspaceConfig {
                name,
                used,
                used_by_orphans,
            } => match Name::new(&name) {
                Ok(name) => Command::LockspaceConfig {
                    name,
                    used,
                    used_by_orphans,
                },
                Err(e) => return bad(format!("lockspace name {name:?}: {e}")),
            },
            Request::Acquire {
                resources,
                no_wait,
                lvb,
                pid,
                persistent,
                adopt_orphan,
            } => {
                let mut specs = Vec::with_capacity(resources.len());
                for r in &resources {
                    match ResourceSpec::parse(r) {
                        Ok(s) => specs.push(s),
                        Err(e) => return bad(format!("resource spec {r:?}: {e}")),
                    }
                }
                Command::Acquire {
                    persistent: vec![persistent; specs.len()],
                    resources: specs,
                    no_wait,
                    lvb,
                    holder: Holder::of_pid(pid),
                    adopt_orphan,
                }
            }
            Request::ReleaseOrphans {
                lockspace,
                resource,
            } => {
                let space = match Name::new(&lockspace) {
                    Ok(n) => n,
                    Err(e) => return bad(format!("lockspace name {lockspace:?}: {e}")),
                };
                let name = match resource.as_deref().map(Name::new).transpose() {
                    Ok(n) => n,
                    Err(e) => return bad(format!("resource name {resource:?}: {e}")),
                };
                Command::Release {
                    leases: Leases::Orphans { space, name },
                    holder: Holder::Me,
                    lvb: None,
                }
            }
            Request::Release {
                resources,
                all,
                pid,
                lvb_hex,
            } => {
                if all != resources.is_empty() {
                    return bad("give either resources or all".into());
                }
                let leases = if all {
                    Leases::All
                } else {
                    match resources.iter().map(|r| lease(r)).collect() {
                        Ok(v) => Leases::These(v),
                        Err(e) => return Decoded::Refused(e),
                    }
                };
                let lvb = match lvb_hex.as_deref().map(crate::host::unhex).transpose() {
                    Ok(v) => v,
                    Err(e) => return bad(format!("lvb_hex: {e}")),
                };
                Command::Release {
                    leases,
                    holder: Holder::of_pid(pid),
                    lvb,
                }
            }
            Request::Inquire { pid } => Command::Inquire {
                holder: Holder::of_pid(pid),
            },
            Request::Convert {
                resource,
                shared,
                pid,
                no_wait,
            } => match lease(&resource) {
                Ok(lease) => Command::Convert {
                    lease,
                    shared,
                    holder: Holder::of_pid(pid),
                    no_wait,
                },
                Err(e) => return Decoded::Refused(e),
            },
            Request::LvbGet { resource, pid } => match lease(&resource) {
                Ok(lease) => Command::LvbGet {
                    lease,
                    holder: Holder::of_pid(pid),
                },
                Err(e) => return Decoded::Refused(e),
            },
            Request::LvbSet { resource, hex, pid } => {
                let lease = match lease(&resource) {
                    Ok(l) => l,
                    Err(e) => return Decoded::Refused(e),
                };
                match crate::host::unhex(&hex) {
                    Ok(value) => Command::LvbSet {
                        lease,
                        value,
                        holder: Holder::of_pid(pid),
                    },
                    Err(e) => return bad(format!("lvb: {e}")),
                }
            }
            Request::Restrict {
                all,
                no_sigkill,
                no_sigterm,
            } => {
                use crate::sanlock_wire::flags::{
                    RESTRICT_ALL, RESTRICT_SIGKILL, RESTRICT_SIGTERM,
                };
                let bit = |on: bool, b: u32| if on { b } else { 0 };
                Command::Restrict {
                    bits: bit(all, RESTRICT_ALL)
                        | bit(no_sigkill, RESTRICT_SIGKILL)
                        | bit(no_sigterm, RESTRICT_SIGTERM),
                }
            }
            Request::KillPath { path, args } => Command::KillPath { path, args },
            Request::Request { resource, force } => match ResourceSpec::parse(&resource) {
                Ok(resource) => Command::Request {
                    resource,
                    lver: None,
                    force_mode: if force {
                        crate::host::requests::FORCE
                    } else {
                        crate::host::requests::GRACEFUL
                    },
                },
                Err(e) => return bad(format!("resource spec: {e}")),
            },
            Request::Rindex {
                rindex,
                action,
                name,
                offset,
                num_hosts,
                max_resources,
                sector_size,
                align_mb,
                no_lockspace,
            } => {
                let spec = match RindexSpec::parse(&rindex) {
                    Ok(s) => s,
                    Err(e) => return bad(format!("rindex: {e}")),
                };
                let name = match name.as_deref().filter(|n| !n.is_empty()).map(Name::new) {
                    None => None,
                    Some(Ok(n)) => Some(n),
                    Some(Err(e)) => return bad(format!("name: {e}")),
                };
                return Decoded::Rindex(RindexCommand {
                    spec,
                    action,
                    name,
                    offset: offset.unwrap_or(0),
                    num_hosts: num_hosts.unwrap_or(0),
                    max_resources: max_resources.unwrap_or(0),
                    sector_size,
                    align_mb,
                    no_lockspace,
                });
            }
            front @ (Request::Hello { .. }
            | Request::Status {}
            | Request::Metrics {}
            | Request::Upgrade { .. }
            | Request::LockspaceList {}
            | Request::Hosts { .. }
            | Request::Owners { .. }) => return Decoded::Front(front),
        };
        Decoded::Host(command)
    }
}

impl From<HostReply> for Reply {
    /// The native encoding of the host's answers (the bytes protocol version 1 defines:
    /// docs/protocol.md).
    fn from(r: HostReply) -> Self {
        match r {
            HostReply::Done(d) => Reply::Ok(done_json(d)),
            HostReply::Error(e) => Reply::Error(e),
        }
    }
}

fn done_json(d: Done) -> serde_json::Value {
    use serde_json::json;
    let view = |v: &LeaseView| serde_json::to_value(v).unwrap_or_default();
    match d {
        Done::Nothing => json!({}),
        Done::Joining { lockspace } => json!({"lockspace": lockspace, "state": "joining"}),
        Done::Joined {
            lockspace,
            generation,
        } => json!({"lockspace": lockspace, "generation": generation}),
        Done::Leaving { lockspace } => json!({"lockspace": lockspace, "state": "leaving"}),
        Done::Left { lockspace } => json!({"lockspace": lockspace, "left": true}),
        Done::Config {
            lockspace,
            used,
            used_by_orphans,
        } => json!({"lockspace": lockspace, "used": used, "used_by_orphans": used_by_orphans}),
        Done::Acquired(leases) => {
            json!({"leases": leases.iter().map(view).collect::<Vec<_>>()})
        }
        Done::Released(names) => json!({ "released": names }),
        Done::OrphansReleased(names) => json!({ "orphans_released": names }),
        Done::Converted {
            resource,
            shared,
            warning,
        } => match warning {
            Some(w) => json!({"resource": resource, "shared": shared, "warning": w}),
            None => json!({"resource": resource, "shared": shared}),
        },
        Done::Leases { leases, state } => {
            json!({"leases": leases.iter().map(view).collect::<Vec<_>>(), "state": state})
        }
        Done::Lvb { resource, value } => {
            json!({"resource": resource, "lvb_hex": crate::host::hex(&value)})
        }
        Done::LvbSet { resource } => json!({"resource": resource, "written_at_release": true}),
        Done::Requested { owner } => json!({"owner": owner, "written": owner.is_some()}),
        Done::Rindex(r) => match r {
            RindexDone::Formatted(g) => json!({"formatted": true, "geometry": g}),
            RindexDone::Entry { name, offset } => json!({"name": name, "offset": offset}),
            RindexDone::Removed(offset) => json!({ "removed": offset }),
            RindexDone::Created { name, offset } => json!({"name": name, "offset": offset}),
            RindexDone::Deleted { name, offset } => json!({"deleted": name, "offset": offset}),
            RindexDone::Rebuilt(n) => json!({ "entries": n }),
        },
        Done::View(v) => v,
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    fn host(r: Request) -> Command {
        match r.decode() {
            Decoded::Host(c) => c,
            other => panic!("not a host command: {other:?}"),
        }
    }

    #[test]
    fn lease_names_are_unescaped_once_and_bad_specs_are_refused() {
        let c = host(Request::Convert {
            resource: r"L\:S:R".into(),
            shared: true,
            pid: None,
            no_wait: false,
        });
        let Command::Convert { lease, holder, .. } = c else {
            panic!("{c:?}")
        };
        assert_eq!(lease.lockspace.as_bytes(), b"L:S");
        assert_eq!(lease.name.as_bytes(), b"R");
        assert_eq!(holder, Holder::Me);
        for bad in [
            Request::Release {
                resources: vec!["LS:R".into()],
                all: true,
                pid: None,
                lvb_hex: None,
            },
            Request::Release {
                resources: vec!["LS".into()],
                all: false,
                pid: None,
                lvb_hex: None,
            },
            Request::Acquire {
                resources: vec!["LS:R:/dev/x".into()],
                no_wait: false,
                lvb: false,
                pid: Some(7),
                persistent: false,
                adopt_orphan: false,
            },
            Request::LvbSet {
                resource: "LS:R".into(),
                hex: "abc".into(),
                pid: None,
            },
        ] {
            match bad.clone().decode() {
                Decoded::Refused(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}"),
                other => panic!("{bad:?} decoded as {other:?}"),
            }
        }
        let Command::Acquire {
            resources, holder, ..
        } = host(Request::Acquire {
            resources: vec!["LS:R:/dev/x:1M:SH".into()],
            no_wait: false,
            lvb: false,
            pid: Some(7),
            persistent: false,
            adopt_orphan: false,
        })
        else {
            panic!()
        };
        assert_eq!(holder, Holder::Pid(7));
        assert_eq!(resources[0].mode, tenure_format::ResourceMode::Shared);
        assert_eq!(resources[0].disks[0].offset, 1 << 20);
    }

    #[test]
    fn typed_replies_encode_as_version_1_did() {
        let lease = LeaseView {
            lockspace: "LS".into(),
            resource: "R".into(),
            path: "/dev/x".into(),
            offset: 1048576,
            lver: 3,
            shared: false,
            pid: 42,
            client: "c".into(),
            owner: "connection",
            persistent: false,
            acquired_unix_ms: 5,
            state: "LS:R:/dev/x:1048576:3".into(),
            lvb_hex: None,
        };
        let wire = |d: Done| serde_json::to_string(&Reply::from(HostReply::Done(d))).expect("json");
        assert_eq!(
            wire(Done::Acquired(vec![lease])),
            r#"{"ok":{"leases":[{"acquired_unix_ms":5,"client":"c","lockspace":"LS","lver":3,"offset":1048576,"owner":"connection","path":"/dev/x","persistent":false,"pid":42,"resource":"R","shared":false,"state":"LS:R:/dev/x:1048576:3"}]}}"#
        );
        assert_eq!(
            wire(Done::Joining {
                lockspace: "LS".into()
            }),
            r#"{"ok":{"lockspace":"LS","state":"joining"}}"#
        );
        assert_eq!(
            wire(Done::Converted {
                resource: "R".into(),
                shared: true,
                warning: None
            }),
            r#"{"ok":{"resource":"R","shared":true}}"#
        );
        assert_eq!(wire(Done::Nothing), r#"{"ok":{}}"#);
    }
}
