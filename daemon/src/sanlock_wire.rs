//! sanlock 3.8.5's client socket protocol (spec/SANLOCK-WIRE.md): the byte layouts of the
//! header and structures, the command and result numbers, and an incremental parser that
//! reads each command's payload by its fixed structure (never by the header's `length`, which
//! libsanlock gets wrong for some commands).
//!
//! Only layouts and numbers live here; what a command does is the server's business (it maps
//! each one to the same internal operation as the native protocol).
//!
//! Invariants: parsing never panics on any input; a message that sanlock would ignore (bad
//! magic, unsupported major version, unknown command) is reported as [`Parsed::Ignored`] with
//! the bytes to drop, so the connection stays usable.

/// Header magic.
pub const MAGIC: u32 = 0x0428_2010;
/// Protocol version sent in replies.
pub const PROTO: u32 = 0x0000_0001;
/// Header size.
pub const HEADER_LEN: usize = 32;
/// sanlk_disk size.
pub const DISK_LEN: usize = 1040;
/// sanlk_resource size.
pub const RES_LEN: usize = 128;
/// sanlk_lockspace size.
pub const LS_LEN: usize = 1104;
/// sanlk_options size.
pub const OPTIONS_LEN: usize = 56;
/// sanlk_host size.
pub const HOST_LEN: usize = 32;
/// Resources per request.
pub const MAX_RESOURCES: u32 = 8;
/// Disks per resource.
pub const MAX_DISKS: u32 = 4;
/// The version reported by VERSION: 3.8.5, the protocol level tenure speaks.
pub const DAEMON_VERSION: u32 = 0x0308_0500;

/// Command numbers.
#[allow(missing_docs)]
pub mod cmd {
    pub const REGISTER: u32 = 1;
    pub const ADD_LOCKSPACE: u32 = 2;
    pub const REM_LOCKSPACE: u32 = 3;
    pub const SHUTDOWN: u32 = 4;
    pub const STATUS: u32 = 5;
    pub const LOG_DUMP: u32 = 6;
    pub const ACQUIRE: u32 = 7;
    pub const RELEASE: u32 = 8;
    pub const INQUIRE: u32 = 9;
    pub const RESTRICT: u32 = 10;
    pub const REQUEST: u32 = 11;
    pub const ALIGN: u32 = 12;
    pub const EXAMINE_LOCKSPACE: u32 = 13;
    pub const EXAMINE_RESOURCE: u32 = 14;
    pub const HOST_STATUS: u32 = 15;
    pub const INQ_LOCKSPACE: u32 = 16;
    pub const KILLPATH: u32 = 17;
    pub const WRITE_LOCKSPACE: u32 = 18;
    pub const WRITE_RESOURCE: u32 = 19;
    pub const READ_LOCKSPACE: u32 = 20;
    pub const READ_RESOURCE: u32 = 21;
    pub const GET_LOCKSPACES: u32 = 22;
    pub const GET_HOSTS: u32 = 23;
    pub const READ_RESOURCE_OWNERS: u32 = 24;
    pub const SET_LVB: u32 = 25;
    pub const GET_LVB: u32 = 26;
    pub const CONVERT: u32 = 27;
    pub const VERSION: u32 = 28;
    pub const SHUTDOWN_WAIT: u32 = 29;
    pub const REG_EVENT: u32 = 30;
    pub const END_EVENT: u32 = 31;
    pub const SET_EVENT: u32 = 32;
    pub const SET_CONFIG: u32 = 33;
    pub const RENEWAL: u32 = 34;
    pub const FORMAT_RINDEX: u32 = 35;
    pub const UPDATE_RINDEX: u32 = 36;
    pub const LOOKUP_RINDEX: u32 = 37;
    pub const CREATE_RESOURCE: u32 = 38;
    pub const DELETE_RESOURCE: u32 = 39;
    pub const REBUILD_RINDEX: u32 = 40;
}

/// A command's name (metrics' `kind` label): the constant's name in lower case.
pub fn cmd_name(c: u32) -> &'static str {
    match c {
        cmd::REGISTER => "register",
        cmd::ADD_LOCKSPACE => "add_lockspace",
        cmd::REM_LOCKSPACE => "rem_lockspace",
        cmd::SHUTDOWN => "shutdown",
        cmd::STATUS => "status",
        cmd::LOG_DUMP => "log_dump",
        cmd::ACQUIRE => "acquire",
        cmd::RELEASE => "release",
        cmd::INQUIRE => "inquire",
        cmd::RESTRICT => "restrict",
        cmd::REQUEST => "request",
        cmd::ALIGN => "align",
        cmd::EXAMINE_LOCKSPACE => "examine_lockspace",
        cmd::EXAMINE_RESOURCE => "examine_resource",
        cmd::HOST_STATUS => "host_status",
        cmd::INQ_LOCKSPACE => "inq_lockspace",
        cmd::KILLPATH => "killpath",
        cmd::WRITE_LOCKSPACE => "write_lockspace",
        cmd::WRITE_RESOURCE => "write_resource",
        cmd::READ_LOCKSPACE => "read_lockspace",
        cmd::READ_RESOURCE => "read_resource",
        cmd::GET_LOCKSPACES => "get_lockspaces",
        cmd::GET_HOSTS => "get_hosts",
        cmd::READ_RESOURCE_OWNERS => "read_resource_owners",
        cmd::SET_LVB => "set_lvb",
        cmd::GET_LVB => "get_lvb",
        cmd::CONVERT => "convert",
        cmd::VERSION => "version",
        cmd::SHUTDOWN_WAIT => "shutdown_wait",
        cmd::REG_EVENT => "reg_event",
        cmd::END_EVENT => "end_event",
        cmd::SET_EVENT => "set_event",
        cmd::SET_CONFIG => "set_config",
        cmd::RENEWAL => "renewal",
        cmd::FORMAT_RINDEX => "format_rindex",
        cmd::UPDATE_RINDEX => "update_rindex",
        cmd::LOOKUP_RINDEX => "lookup_rindex",
        cmd::CREATE_RESOURCE => "create_resource",
        cmd::DELETE_RESOURCE => "delete_resource",
        cmd::REBUILD_RINDEX => "rebuild_rindex",
        _ => "unknown",
    }
}

/// Flags.
#[allow(missing_docs)]
pub mod flags {
    pub const RES_LVER: u32 = 0x1;
    pub const RES_NUM_HOSTS: u32 = 0x2;
    pub const RES_SHARED: u32 = 0x4;
    pub const RES_PERSISTENT: u32 = 0x8;
    pub const ACQUIRE_LVB: u32 = 0x1;
    pub const ACQUIRE_ORPHAN: u32 = 0x2;
    pub const ACQUIRE_ORPHAN_ONLY: u32 = 0x4;
    pub const ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
    pub const REL_ALL: u32 = 0x1;
    pub const REL_RENAME: u32 = 0x2;
    pub const REL_ORPHAN: u32 = 0x4;
    pub const ADD_ASYNC: u32 = 0x1;
    pub const REM_ASYNC: u32 = 0x1;
    pub const REM_UNUSED: u32 = 0x2;
    pub const INQ_WAIT: u32 = 0x1;
    /// WRITE_RESOURCE header flag: write a cleared lease (`init -z 1`).
    pub const WRITE_CLEAR: u32 = 0x1;
    pub const LSF_ADD: u32 = 0x1;
    pub const LSF_REM: u32 = 0x2;
    pub const RESTRICT_ALL: u32 = 0x1;
    pub const RESTRICT_SIGKILL: u32 = 0x2;
    pub const RESTRICT_SIGTERM: u32 = 0x4;
    pub const HOST_UNKNOWN: u32 = 1;
    pub const HOST_FREE: u32 = 2;
    pub const HOST_LIVE: u32 = 3;
    pub const HOST_FAIL: u32 = 4;
    pub const HOST_DEAD: u32 = 5;
    pub const EVENT_CUR_GENERATION: u32 = 0x1;
    pub const EVENT_CLEAR_HOSTID: u32 = 0x2;
    pub const EVENT_CLEAR_EVENT: u32 = 0x4;
    pub const EVENT_REPLACE_EVENT: u32 = 0x8;
    pub const EVENT_ALL_HOSTS: u32 = 0x10;
    pub const RX_NO_LOCKSPACE: u32 = 0x1;
    pub const RXUP_ADD: u32 = 0x10000;
    pub const RXUP_REM: u32 = 0x20000;
    pub const CONFIG_USED: u32 = 1;
    pub const CONFIG_UNUSED: u32 = 2;
    pub const CONFIG_USED_BY_ORPHANS: u32 = 4;
    pub const CONFIG_UNUSED_BY_ORPHANS: u32 = 8;
}

/// Result codes (negative on the wire).
#[allow(missing_docs)]
pub mod rv {
    pub const EPERM: i32 = -1;
    pub const ENOENT: i32 = -2;
    pub const ESRCH: i32 = -3;
    pub const E2BIG: i32 = -7;
    pub const EAGAIN: i32 = -11;
    pub const EBUSY: i32 = -16;
    pub const EEXIST: i32 = -17;
    pub const ENODEV: i32 = -19;
    pub const EINVAL: i32 = -22;
    pub const ENOSPC: i32 = -28;
    pub const ERANGE: i32 = -34;
    pub const ENOCSI: i32 = -50;
    pub const ENOTCONN: i32 = -107;
    pub const EALREADY: i32 = -114;
    pub const EINPROGRESS: i32 = -115;
    pub const EUCLEAN: i32 = -117;
    pub const SANLK_ERROR: i32 = -201;
    pub const SANLK_AIO_TIMEOUT: i32 = -202;
    pub const SANLK_WD_ERROR: i32 = -203;
    pub const SANLK_LEADER_MAGIC: i32 = -223;
    pub const SANLK_LEADER_LOCKSPACE: i32 = -226;
    pub const SANLK_LEADER_RESOURCE: i32 = -227;
    pub const SANLK_LEADER_CHECKSUM: i32 = -229;
    pub const SANLK_ACQUIRE_LVER: i32 = -240;
    pub const SANLK_ACQUIRE_IDLIVE: i32 = -243;
    pub const SANLK_ACQUIRE_OWNED: i32 = -244;
    pub const SANLK_ACQUIRE_OTHER: i32 = -245;
    pub const SANLK_ACQUIRE_SHRETRY: i32 = -246;
    pub const SANLK_ACQUIRE_OWNED_RETRY: i32 = -247;
    pub const SANLK_HOSTID_BUSY: i32 = -262;
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A fixed-size, NUL-padded string field as text (up to the first NUL).
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_text(out: &mut [u8], s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(out.len());
    out[..n].copy_from_slice(&b[..n]);
}

/// The 32-byte message header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Magic.
    pub magic: u32,
    /// Protocol version.
    pub version: u32,
    /// Command.
    pub cmd: u32,
    /// Command flags.
    pub cmd_flags: u32,
    /// Total length (unreliable in requests).
    pub length: u32,
    /// Sequence number (echoed).
    pub seq: u32,
    /// Argument / result.
    pub data: u32,
    /// Argument / result.
    pub data2: u32,
}

impl Header {
    /// Decodes 32 bytes.
    pub fn decode(b: &[u8]) -> Self {
        Header {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            cmd: u32_at(b, 8),
            cmd_flags: u32_at(b, 12),
            length: u32_at(b, 16),
            seq: u32_at(b, 20),
            data: u32_at(b, 24),
            data2: u32_at(b, 28),
        }
    }

    /// Encodes 32 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut o = [0u8; HEADER_LEN];
        for (i, v) in [
            self.magic,
            self.version,
            self.cmd,
            self.cmd_flags,
            self.length,
            self.seq,
            self.data,
            self.data2,
        ]
        .iter()
        .enumerate()
        {
            o[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        o
    }

    /// The reply header for this request: result in `data`, `data2`, total length.
    pub fn reply(&self, result: i32, data2: u32, payload_len: usize) -> Header {
        Header {
            magic: MAGIC,
            version: PROTO,
            length: u32::try_from(HEADER_LEN + payload_len).unwrap_or(u32::MAX),
            data: result as u32,
            data2,
            ..*self
        }
    }
}

/// sanlk_disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// Path.
    pub path: String,
    /// Offset in bytes.
    pub offset: u64,
}

impl Disk {
    fn decode(b: &[u8]) -> Self {
        Disk {
            path: text(&b[..1024]),
            offset: u64_at(b, 1024),
        }
    }

    fn encode_into(&self, out: &mut [u8]) {
        put_text(&mut out[..1023], &self.path);
        out[1024..1032].copy_from_slice(&self.offset.to_le_bytes());
    }
}

/// sanlk_resource with its disks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// Lockspace name.
    pub lockspace: String,
    /// Resource name.
    pub name: String,
    /// lver (with RES_LVER).
    pub lver: u64,
    /// data32 (num_hosts with RES_NUM_HOSTS).
    pub data32: u32,
    /// SANLK_RES_* flags.
    pub flags: u32,
    /// num_disks as sent.
    pub num_disks: u32,
    /// Disks (present where the command carries them).
    pub disks: Vec<Disk>,
}

impl Resource {
    fn decode_head(b: &[u8]) -> Self {
        Resource {
            lockspace: text(&b[..48]),
            name: text(&b[48..96]),
            lver: u64_at(b, 96),
            data32: u32_at(b, 112),
            flags: u32_at(b, 120),
            num_disks: u32_at(b, 124),
            disks: Vec::new(),
        }
    }

    /// The 128-byte struct (no disks).
    pub fn encode_head(&self) -> [u8; RES_LEN] {
        let mut o = [0u8; RES_LEN];
        put_text(&mut o[..48], &self.lockspace);
        put_text(&mut o[48..96], &self.name);
        o[96..104].copy_from_slice(&self.lver.to_le_bytes());
        o[112..116].copy_from_slice(&self.data32.to_le_bytes());
        o[120..124].copy_from_slice(&self.flags.to_le_bytes());
        o[124..128].copy_from_slice(&self.num_disks.to_le_bytes());
        o
    }
}

/// sanlk_lockspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lockspace {
    /// Name.
    pub name: String,
    /// Host id.
    pub host_id: u64,
    /// SANLK_LSF_* flags.
    pub flags: u32,
    /// Where its area is.
    pub disk: Disk,
}

impl Lockspace {
    /// Decodes 1104 bytes.
    pub fn decode(b: &[u8]) -> Self {
        Lockspace {
            name: text(&b[..48]),
            host_id: u64_at(b, 48),
            flags: u32_at(b, 56),
            disk: Disk::decode(&b[64..64 + DISK_LEN]),
        }
    }

    /// Encodes 1104 bytes (pads zeroed).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = vec![0u8; LS_LEN];
        put_text(&mut o[..48], &self.name);
        o[48..56].copy_from_slice(&self.host_id.to_le_bytes());
        o[56..60].copy_from_slice(&self.flags.to_le_bytes());
        self.disk.encode_into(&mut o[64..64 + DISK_LEN]);
        o
    }
}

/// sanlk_host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Host id.
    pub host_id: u64,
    /// Generation.
    pub generation: u64,
    /// Timestamp.
    pub timestamp: u64,
    /// io_timeout.
    pub io_timeout: u32,
    /// SANLK_HOST_* state.
    pub flags: u32,
}

impl Host {
    /// Encodes 32 bytes.
    pub fn encode(&self) -> [u8; HOST_LEN] {
        let mut o = [0u8; HOST_LEN];
        o[..8].copy_from_slice(&self.host_id.to_le_bytes());
        o[8..16].copy_from_slice(&self.generation.to_le_bytes());
        o[16..24].copy_from_slice(&self.timestamp.to_le_bytes());
        o[24..28].copy_from_slice(&self.io_timeout.to_le_bytes());
        o[28..32].copy_from_slice(&self.flags.to_le_bytes());
        o
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// No payload.
    Empty,
    /// A lockspace.
    Lockspace(Lockspace),
    /// Resources with their disks, and the acquire options' owner name.
    Acquire(Vec<Resource>, String),
    /// Resources without disks.
    Resources(Vec<Resource>),
    /// Kill path and args.
    KillPath(String, String),
    /// A resource with its disks.
    ResourceWithDisks(Resource),
    /// A resource and LVB bytes.
    SetLvb(Resource, Vec<u8>),
    /// A lockspace and a `sanlk_host_event` (host_id, generation, event, data).
    Event(Lockspace, HostEvent),
    /// A `sanlk_rindex` and, for UPDATE/LOOKUP/CREATE/DELETE, a `sanlk_rentry`.
    Rindex(RindexArg, Option<Rentry>),
}

/// `sanlk_rindex` (1104 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RindexArg {
    /// SANLK_RIF_* (ALIGN / SECTOR like resources).
    pub flags: u32,
    /// Entries (format; 0 = default).
    pub max_resources: u32,
    /// Lockspace name.
    pub lockspace: String,
    /// Where the index is.
    pub disk: Disk,
}

/// `sanlk_rentry` (64 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rentry {
    /// Resource name.
    pub name: String,
    /// Lease offset.
    pub offset: u64,
}

/// Size of `sanlk_rentry`.
pub const RENTRY_LEN: usize = 64;

impl Rentry {
    /// The 64 bytes.
    pub fn encode(&self) -> [u8; RENTRY_LEN] {
        let mut o = [0u8; RENTRY_LEN];
        put_text(&mut o[..48], &self.name);
        o[48..56].copy_from_slice(&self.offset.to_le_bytes());
        o
    }
}

/// `sanlk_host_event` (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEvent {
    /// Addressed host id (our own in delivered events).
    pub host_id: u64,
    /// Generation of the addressed host.
    pub generation: u64,
    /// Event value.
    pub event: u64,
    /// Data.
    pub data: u64,
}

impl HostEvent {
    /// Decodes 32 bytes.
    pub fn decode(b: &[u8]) -> Self {
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        HostEvent {
            host_id: u(0),
            generation: u(8),
            event: u(16),
            data: u(24),
        }
    }
}

/// The 80-byte `event_cb` message written to event fds: header {SM_CB_PROTO 1,
/// SM_CB_GET_EVENT 1, length 80}, the event, the sender's host id and generation.
pub fn event_cb(he: &HostEvent, from_host_id: u64, from_generation: u64) -> [u8; 80] {
    let mut m = [0u8; 80];
    let h = Header {
        magic: MAGIC,
        version: 1,
        cmd: 1,
        length: 80,
        ..Header::default()
    };
    m[..HEADER_LEN].copy_from_slice(&h.encode());
    for (i, v) in [
        he.host_id,
        he.generation,
        he.event,
        he.data,
        from_host_id,
        from_generation,
    ]
    .iter()
    .enumerate()
    {
        m[32 + 8 * i..40 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    m
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    NeedMore,
    /// A message sanlock would ignore: drop `n` bytes, send nothing.
    Ignored(usize),
    /// A whole message of `n` bytes.
    Message(usize, Header, Body),
    /// The payload is malformed for its command (e.g. num_disks out of range): answer with
    /// this result after dropping `n` bytes.
    Invalid(usize, Header, i32),
}

/// Parses one message from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() < HEADER_LEN {
        return Parsed::NeedMore;
    }
    let h = Header::decode(&buf[..HEADER_LEN]);
    if h.magic != MAGIC {
        return Parsed::Ignored(HEADER_LEN);
    }
    if h.cmd != cmd::VERSION && h.version != 0 && (h.version & 0xFFFF_0000) > 0 {
        return Parsed::Ignored(HEADER_LEN);
    }
    let p = &buf[HEADER_LEN..];
    let need = |n: usize| p.len() < n;
    let ls_cmds = [
        cmd::ADD_LOCKSPACE,
        cmd::REM_LOCKSPACE,
        cmd::INQ_LOCKSPACE,
        cmd::GET_HOSTS,
        cmd::HOST_STATUS,
        cmd::RENEWAL,
        cmd::WRITE_LOCKSPACE,
        cmd::READ_LOCKSPACE,
        cmd::EXAMINE_LOCKSPACE,
        cmd::SET_CONFIG,
        cmd::END_EVENT,
    ];
    match h.cmd {
        cmd::REGISTER
        | cmd::STATUS
        | cmd::INQUIRE
        | cmd::RESTRICT
        | cmd::VERSION
        | cmd::GET_LOCKSPACES
        | cmd::LOG_DUMP
        | cmd::SHUTDOWN
        | cmd::SHUTDOWN_WAIT => Parsed::Message(HEADER_LEN, h, Body::Empty),
        c if ls_cmds.contains(&c) => {
            if need(LS_LEN) {
                return Parsed::NeedMore;
            }
            Parsed::Message(
                HEADER_LEN + LS_LEN,
                h,
                Body::Lockspace(Lockspace::decode(&p[..LS_LEN])),
            )
        }
        cmd::ACQUIRE => {
            if h.data > MAX_RESOURCES {
                return Parsed::Invalid(HEADER_LEN, h, rv::E2BIG);
            }
            let mut at = 0;
            let mut res = Vec::new();
            for _ in 0..h.data {
                if need(at + RES_LEN) {
                    return Parsed::NeedMore;
                }
                let mut r = Resource::decode_head(&p[at..at + RES_LEN]);
                at += RES_LEN;
                if r.num_disks == 0 || r.num_disks > MAX_DISKS {
                    // The rest of the message (disks, options) is dropped with it when it is
                    // here, so the connection's next request parses (as sanlock's does).
                    let whole = (h.length as usize).saturating_sub(HEADER_LEN);
                    let skip = if whole >= at && !need(whole) {
                        whole
                    } else {
                        at
                    };
                    return Parsed::Invalid(HEADER_LEN + skip, h, rv::ERANGE);
                }
                for _ in 0..r.num_disks {
                    if need(at + DISK_LEN) {
                        return Parsed::NeedMore;
                    }
                    r.disks.push(Disk::decode(&p[at..at + DISK_LEN]));
                    at += DISK_LEN;
                }
                res.push(r);
            }
            if need(at + OPTIONS_LEN) {
                return Parsed::NeedMore;
            }
            let owner = text(&p[at..at + 48]);
            at += OPTIONS_LEN;
            Parsed::Message(HEADER_LEN + at, h, Body::Acquire(res, owner))
        }
        cmd::RELEASE => {
            if h.data > MAX_RESOURCES {
                return Parsed::Invalid(HEADER_LEN, h, rv::E2BIG);
            }
            // REL_ALL reads no payload in sanlock, but libsanlock still sends `data` structs:
            // read and drop them (spec §4.1). REL_RENAME reads two (the lease, then its new
            // name), REL_ORPHAN one (the lockspace and name), whatever `data` says.
            let n = if h.cmd_flags & flags::REL_RENAME != 0 {
                2
            } else if h.cmd_flags & flags::REL_ORPHAN != 0 {
                1
            } else {
                h.data as usize
            };
            if need(n * RES_LEN) {
                return Parsed::NeedMore;
            }
            let res = (0..n)
                .map(|i| Resource::decode_head(&p[i * RES_LEN..(i + 1) * RES_LEN]))
                .collect();
            Parsed::Message(HEADER_LEN + n * RES_LEN, h, Body::Resources(res))
        }
        cmd::CONVERT | cmd::EXAMINE_RESOURCE | cmd::GET_LVB => {
            if need(RES_LEN) {
                return Parsed::NeedMore;
            }
            Parsed::Message(
                HEADER_LEN + RES_LEN,
                h,
                Body::Resources(vec![Resource::decode_head(&p[..RES_LEN])]),
            )
        }
        cmd::SET_LVB => {
            if need(RES_LEN) {
                return Parsed::NeedMore;
            }
            let lvb_len = (h.length as usize)
                .saturating_sub(HEADER_LEN + RES_LEN)
                .min(4096);
            if need(RES_LEN + lvb_len) {
                return Parsed::NeedMore;
            }
            Parsed::Message(
                HEADER_LEN + RES_LEN + lvb_len,
                h,
                Body::SetLvb(
                    Resource::decode_head(&p[..RES_LEN]),
                    p[RES_LEN..RES_LEN + lvb_len].to_vec(),
                ),
            )
        }
        cmd::REQUEST | cmd::WRITE_RESOURCE | cmd::READ_RESOURCE | cmd::READ_RESOURCE_OWNERS => {
            if need(RES_LEN) {
                return Parsed::NeedMore;
            }
            let mut r = Resource::decode_head(&p[..RES_LEN]);
            if r.num_disks == 0 || r.num_disks > MAX_DISKS {
                return Parsed::Invalid(HEADER_LEN + RES_LEN, h, rv::ERANGE);
            }
            let mut at = RES_LEN;
            for _ in 0..r.num_disks {
                if need(at + DISK_LEN) {
                    return Parsed::NeedMore;
                }
                r.disks.push(Disk::decode(&p[at..at + DISK_LEN]));
                at += DISK_LEN;
            }
            Parsed::Message(HEADER_LEN + at, h, Body::ResourceWithDisks(r))
        }
        cmd::KILLPATH => {
            if need(256) {
                return Parsed::NeedMore;
            }
            Parsed::Message(
                HEADER_LEN + 256,
                h,
                Body::KillPath(text(&p[..128]), text(&p[128..256])),
            )
        }
        cmd::ALIGN => {
            if need(DISK_LEN) {
                return Parsed::NeedMore;
            }
            Parsed::Message(
                HEADER_LEN + DISK_LEN,
                h,
                Body::ResourceWithDisks(Resource {
                    disks: vec![Disk::decode(&p[..DISK_LEN])],
                    ..Resource::default()
                }),
            )
        }
        cmd::FORMAT_RINDEX
        | cmd::REBUILD_RINDEX
        | cmd::UPDATE_RINDEX
        | cmd::LOOKUP_RINDEX
        | cmd::CREATE_RESOURCE
        | cmd::DELETE_RESOURCE => {
            let with_entry = !matches!(h.cmd, cmd::FORMAT_RINDEX | cmd::REBUILD_RINDEX);
            let n = LS_LEN + if with_entry { RENTRY_LEN } else { 0 };
            if need(n) {
                return Parsed::NeedMore;
            }
            let rx = RindexArg {
                flags: u32_at(p, 0),
                max_resources: u32_at(p, 4),
                lockspace: text(&p[16..64]),
                disk: Disk::decode(&p[64..64 + DISK_LEN]),
            };
            let entry = with_entry.then(|| Rentry {
                name: text(&p[LS_LEN..LS_LEN + 48]),
                offset: u64_at(p, LS_LEN + 48),
            });
            Parsed::Message(HEADER_LEN + n, h, Body::Rindex(rx, entry))
        }
        cmd::REG_EVENT | cmd::SET_EVENT => {
            if need(LS_LEN + 32) {
                return Parsed::NeedMore;
            }
            Parsed::Message(
                HEADER_LEN + LS_LEN + 32,
                h,
                Body::Event(
                    Lockspace::decode(&p[..LS_LEN]),
                    HostEvent::decode(&p[LS_LEN..LS_LEN + 32]),
                ),
            )
        }
        _ => Parsed::Ignored(HEADER_LEN),
    }
}

/// Escapes a path for a state string (`\` before space, colon and backslash).
pub fn escape_path(p: &str) -> String {
    let mut o = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, ' ' | ':' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: u32, data: u32, len: usize) -> Vec<u8> {
        Header {
            magic: MAGIC,
            version: PROTO,
            cmd,
            length: len as u32,
            data,
            data2: u32::MAX,
            ..Header::default()
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn acquire_is_parsed_by_structure_and_bad_input_is_ignored_or_refused() {
        let mut r = Resource {
            lockspace: "LS".into(),
            name: "R1".into(),
            flags: flags::RES_SHARED,
            num_disks: 1,
            ..Resource::default()
        }
        .encode_head()
        .to_vec();
        let mut d = vec![0u8; DISK_LEN];
        Disk {
            path: "/dev/loop1".into(),
            offset: 1 << 20,
        }
        .encode_into(&mut d);
        r.extend(d);
        let mut opt = vec![0u8; OPTIONS_LEN];
        put_text(&mut opt[..48], "vm-1");
        let mut msg = header(cmd::ACQUIRE, 1, 1256);
        msg.extend(&r);
        msg.extend(&opt);
        assert_eq!(msg.len(), 1256, "observed size of a one-disk acquire");
        for cut in [0, 31, 32, 100, 1200, 1255] {
            assert_eq!(parse(&msg[..cut]), Parsed::NeedMore, "cut {cut}");
        }
        let Parsed::Message(n, h, Body::Acquire(res, owner)) = parse(&msg) else {
            panic!("acquire");
        };
        assert_eq!((n, h.data2, owner.as_str()), (1256, u32::MAX, "vm-1"));
        assert_eq!(res[0].disks[0].path, "/dev/loop1");
        assert_eq!(res[0].flags & flags::RES_SHARED, flags::RES_SHARED);
        // Bad magic, major version 2, unknown command: ignored, 32 bytes dropped.
        let mut bad = msg.clone();
        bad[0] = 0;
        assert_eq!(parse(&bad), Parsed::Ignored(32));
        let mut v2 = header(cmd::INQUIRE, 0, 32);
        v2[4..8].copy_from_slice(&0x0002_0001u32.to_le_bytes());
        assert_eq!(parse(&v2), Parsed::Ignored(32));
        assert_eq!(parse(&header(99, 0, 32)), Parsed::Ignored(32));
        // num_disks 0 → ERANGE; more than 8 resources → E2BIG.
        let mut zero = msg.clone();
        zero[32 + 124..32 + 128].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(parse(&zero), Parsed::Invalid(_, _, rv::ERANGE)));
        assert!(matches!(
            parse(&header(cmd::ACQUIRE, 9, 32)),
            Parsed::Invalid(_, _, rv::E2BIG)
        ));
        // HOST_STATUS with a wrong length (32) still reads its lockspace.
        let mut hs = header(cmd::HOST_STATUS, 0, 32);
        hs.extend(
            Lockspace {
                name: "LS".into(),
                ..Lockspace::default()
            }
            .encode(),
        );
        assert!(matches!(
            parse(&hs),
            Parsed::Message(1136, _, Body::Lockspace(_))
        ));
        assert_eq!(escape_path("/a b:c\\d"), "/a\\ b\\:c\\\\d");
    }

    proptest::proptest! {
        /// Any bytes: parse never panics, and what it consumes is within the buffer and at
        /// least a header (so a reader always makes progress or waits for more).
        #[test]
        fn parse_never_panics_and_always_progresses(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), cmd in 0u32..48, data in 0u32..12) {
            let mut buf = bytes.clone();
            // Half the cases with a valid magic and a real command, to get past the header.
            if buf.len() >= HEADER_LEN && data % 2 == 0 {
                buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
                buf[4..8].copy_from_slice(&PROTO.to_le_bytes());
                buf[8..12].copy_from_slice(&cmd.to_le_bytes());
                buf[24..28].copy_from_slice(&data.to_le_bytes());
            }
            match parse(&buf) {
                Parsed::NeedMore => {}
                Parsed::Ignored(n) | Parsed::Message(n, _, _) | Parsed::Invalid(n, _, _) => {
                    proptest::prop_assert!(n >= HEADER_LEN && n <= buf.len());
                }
            }
        }
    }
}
