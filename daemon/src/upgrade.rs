//! Planned upgrade (`tenure daemon upgrade`, SIGHUP): the running tenured hands everything to
//! a new one — its host state (crate::host::handover), the listening sockets, every client
//! connection with its unread and unsent bytes, the REG_EVENT fds and the armed watchdog's fd
//! — and exits once the new one confirmed. docs/operations.md "Upgrading tenured".
//!
//! The hand-over, over a Unix socket under run_dir that only the two processes use:
//! 1. the old process stops reading requests and waits until nothing is in flight (no lease
//!    operation, probe, helper job or renewal I/O; no request half answered), at most
//!    [`QUIESCE_MAX`]; then it freezes its supervisor (no feeding, no kill);
//! 2. it starts the new binary with `--takeover SOCKET` and sends, to the process whose
//!    SO_PEERCRED pid is that child's: a length-prefixed [`Handover`] document, then the fds
//!    in the order the document lists them, in batches (SCM_RIGHTS, one byte each);
//! 3. the new process builds everything, adopts the state (the same checks as after a crash,
//!    with the connections kept as they are) and answers `ready`, or `error: ...`;
//! 4. the old process answers `go`, tells systemd the new main pid, and exits at once (it
//!    closes nothing: the new process holds the same sockets and the same open watchdog);
//!    the new one starts serving on `go`.
//!
//! If the new process fails to start, to connect, to adopt, or to answer within
//! [`CONFIRM_MAX`], the old one kills it (by its pid) and goes on serving; the caller is told
//! why. A new process that does not get `go` exits without serving. So at every moment
//! exactly one process decides: the old one until it sent `go`, the new one after.

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::host::handover::HostState;

/// What `format` says.
pub const HANDOVER_FORMAT: &str = "tenured-handover";
/// The version this build speaks.
pub const HANDOVER_VERSION: u32 = 1;
/// Longest wait for nothing to be in flight.
pub const QUIESCE_MAX: Duration = Duration::from_secs(5);
/// Longest wait for the new process to connect and confirm.
pub const CONFIRM_MAX: Duration = Duration::from_secs(20);
/// Largest document accepted.
const DOC_MAX: usize = 64 << 20;
/// fds per message.
const FDS_PER_MSG: usize = 200;

/// A client connection handed over (its fd follows in the document's order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnHandover {
    /// Its serial (leases owned by it name it).
    pub serial: u64,
    /// `native` or `sanlock`.
    pub proto: String,
    /// The native hello was said.
    pub hello: bool,
    /// sanlock: REGISTER was received.
    pub registered: bool,
    /// Close once the output is flushed.
    pub closing: bool,
    /// Bytes received, not yet handled (hex).
    pub inbuf_hex: String,
    /// Bytes not yet sent (hex).
    pub outbuf_hex: String,
    /// Who it is (SO_PEERCRED and what it said), when known.
    pub client: Option<ClientHandover>,
}

/// A client's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientHandover {
    /// pid.
    pub pid: i32,
    /// uid.
    pub uid: u32,
    /// Its name.
    pub name: String,
    /// Its kill path.
    pub kill_path: Option<(String, Vec<String>)>,
    /// sanlock RESTRICT bits.
    pub restrict: u32,
}

/// Everything but the fds (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// [`HANDOVER_FORMAT`].
    pub format: String,
    /// [`HANDOVER_VERSION`].
    pub version: u32,
    /// The old process's version (`CARGO_PKG_VERSION`).
    pub from_version: String,
    /// The host state.
    pub host: HostState,
    /// A sanlock-compatible listening socket follows the native one.
    pub sanlock_listener: bool,
    /// The armed watchdog's fd follows.
    pub watchdog_fd: bool,
    /// The connections, in fd order.
    pub conns: Vec<ConnHandover>,
    /// REG_EVENT fds per lockspace, in fd order after the connections.
    pub event_fds: Vec<(String, usize)>,
    /// The connection that asked for the upgrade: the new process answers it.
    pub requester: Option<u64>,
    /// When the upgrade was asked for (CLOCK_MONOTONIC ns).
    pub asked_at_ns: u64,
    /// What an earlier adoption did (`status` keeps showing it).
    pub adopted: Option<serde_json::Value>,
}

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Socket or process I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The other side broke the protocol or refused.
    #[error("{0}")]
    Protocol(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> UpgradeError {
    move |source| UpgradeError::Io { what, source }
}

impl Handover {
    /// The number of fds that follow the document.
    pub fn fd_count(&self) -> usize {
        1 + usize::from(self.sanlock_listener)
            + usize::from(self.watchdog_fd)
            + self.conns.len()
            + self.event_fds.iter().map(|(_, n)| n).sum::<usize>()
    }

    /// Parses a document (typed errors for anything else).
    pub fn parse(bytes: &[u8]) -> Result<Self, UpgradeError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|e| UpgradeError::Protocol(format!("hand-over document: {e}")))?;
        if head.format != HANDOVER_FORMAT || head.version != HANDOVER_VERSION {
            return Err(UpgradeError::Protocol(format!(
                "the hand-over is {} version {}; this build reads {HANDOVER_FORMAT} version {HANDOVER_VERSION}",
                head.format, head.version
            )));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| UpgradeError::Protocol(format!("hand-over document: {e}")))
    }
}

/// Sends the document and the fds.
pub fn send(s: &mut UnixStream, doc: &Handover, fds: &[OwnedFd]) -> Result<(), UpgradeError> {
    if fds.len() != doc.fd_count() {
        return Err(UpgradeError::Protocol(format!(
            "internal: {} fds for a document that lists {}",
            fds.len(),
            doc.fd_count()
        )));
    }
    let bytes = serde_json::to_vec(doc)
        .map_err(|e| UpgradeError::Protocol(format!("encoding the hand-over: {e}")))?;
    let len = u32::try_from(bytes.len())
        .map_err(|_| UpgradeError::Protocol("hand-over document too large".into()))?;
    s.write_all(&len.to_le_bytes())
        .map_err(io("sending the hand-over"))?;
    s.write_all(&bytes).map_err(io("sending the hand-over"))?;
    for chunk in fds.chunks(FDS_PER_MSG) {
        let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MSG))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(UpgradeError::Protocol(
                "internal: fd batch too large".into(),
            ));
        }
        let iov = [std::io::IoSlice::new(b"F")];
        sendmsg(s.as_fd(), &iov, &mut control, SendFlags::empty()).map_err(|e| {
            UpgradeError::Io {
                what: "sending fds",
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// Receives the document and its fds (within `deadline`).
pub fn receive(
    s: &mut UnixStream,
    deadline: Instant,
) -> Result<(Handover, Vec<OwnedFd>), UpgradeError> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_read_timeout(Some(left()))
        .map_err(io("socket timeout"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(io("receiving the hand-over"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > DOC_MAX {
        return Err(UpgradeError::Protocol(format!(
            "hand-over document of {len} bytes (at most {DOC_MAX})"
        )));
    }
    let mut bytes = vec![0u8; len];
    s.read_exact(&mut bytes)
        .map_err(io("receiving the hand-over"))?;
    let doc = Handover::parse(&bytes)?;
    let want = doc.fd_count();
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(want);
    while fds.len() < want {
        s.set_read_timeout(Some(left()))
            .map_err(io("socket timeout"))?;
        let mut byte = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MSG))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg =
            recvmsg(s.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).map_err(|e| {
                UpgradeError::Io {
                    what: "receiving fds",
                    source: e.into(),
                }
            })?;
        if msg.bytes == 0 {
            return Err(UpgradeError::Protocol(format!(
                "the old tenured closed after {} of {want} fds",
                fds.len()
            )));
        }
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(got) = m {
                fds.extend(got);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(UpgradeError::Protocol("fds were truncated".into()));
        }
    }
    if fds.len() != want {
        return Err(UpgradeError::Protocol(format!(
            "{} fds received, {want} listed",
            fds.len()
        )));
    }
    Ok((doc, fds))
}

/// Reads one line (at most 4 KiB) within `deadline`.
pub fn read_line(s: &mut UnixStream, deadline: Instant) -> Result<String, UpgradeError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UpgradeError::Protocol("no answer in time".into()));
        }
        s.set_read_timeout(Some(left))
            .map_err(io("socket timeout"))?;
        match s.read(&mut b) {
            Ok(0) => {
                return Err(UpgradeError::Protocol(format!(
                    "the other side closed{}",
                    if line.is_empty() {
                        String::new()
                    } else {
                        format!(" after {:?}", String::from_utf8_lossy(&line))
                    }
                )))
            }
            Ok(_) if b[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) if line.len() < 4096 => line.push(b[0]),
            Ok(_) => return Err(UpgradeError::Protocol("answer too long".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(UpgradeError::Io {
                    what: "reading the answer",
                    source: e,
                })
            }
        }
    }
}

/// Tells systemd (when it started us with a notify socket) that `pid` is the main process
/// now. Best effort: without `NOTIFY_SOCKET` nothing is sent.
pub fn notify_main_pid(pid: u32) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("MAINPID={pid}\nREADY=1\n");
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "systemd notify socket");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "telling systemd the new main pid");
    }
}
