//! The sanlock-compatible listener (spec/SANLOCK-WIRE.md): unmodified libsanlock clients
//! (python3-sanlock, libvirt, `sanlock client`) talk to tenured on `$SANLOCK_RUN_DIR/
//! sanlock.sock`. Every command maps to the same internal operation as the native protocol
//! (acquire, release, inquire, lockspace add/remove...), so semantics and on-disk effects are
//! identical; only the framing and the result numbers differ.
//!
//! Invariants: a registered connection owns its leases exactly like a native one (released
//! when it closes); "on behalf of pid" (`data2`) targets the registered connection of that
//! pid; input sanlock ignores is ignored the same way (no reply, connection kept); nothing a
//! client sends can panic the daemon.

use super::{ClientKey, JobReply, LockspaceState, Owner, Proto, Server};
use crate::host::command::{Command, Holder, Leases, RindexCommand};
use crate::host::reply::{Done, Reply, RindexDone};
use crate::host::LvbRefusal;
use crate::proto::ErrorCode;
use crate::sanlock_wire::{self as w, cmd, flags, rv, Body, Header, Parsed};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::MsgFlags;
use tenure_core::delta::{HostEvent, ReceivedEvent};
use tenure_core::direct::{self, BackendKind, DirectError, FormatOptions};
use tenure_core::lockspace::{EventError, SetEvent};
use tenure_format::{
    AlignSize, DiskLocation, LeaseRef, LockspaceSpec, Name, ResourceMode, ResourceSpec, RindexSpec,
    SectorSize,
};

/// Per-connection state of a sanlock client.
#[derive(Debug, Default)]
pub(super) struct SanlockConn {
    /// REGISTER was received: this connection is a client that can hold leases.
    pub registered: bool,
    /// The request being answered.
    pub current: Option<Header>,
    /// Close after the reply (main-loop commands).
    pub close_after: bool,
    /// The result to send when the request's operation succeeds (0 unless set): −1 for a
    /// RELEASE list with a name the client does not hold, the count for REL_ORPHAN.
    pub on_success: i32,
}

/// A name from the wire (EINVAL when it is not one).
fn wire_name(text: &str) -> Result<Name, i32> {
    Name::new(text).map_err(|_| rv::EINVAL)
}

/// A wire resource as the host's resource spec, field by field (EINVAL for what the native
/// protocol's parser refuses too: a bad name, no disk or more than four, an empty path).
fn spec_of(r: &w::Resource) -> Result<ResourceSpec, i32> {
    spec_of_names(r, false)
}

/// [`spec_of`], with empty names taken as the empty name when `empty_ok` (the storage
/// commands that write or read an area whatever it is called).
fn spec_of_names(r: &w::Resource, empty_ok: bool) -> Result<ResourceSpec, i32> {
    let name = |text: &str| {
        if empty_ok && text.is_empty() {
            Ok(Name::EMPTY)
        } else {
            wire_name(text)
        }
    };
    if r.disks.is_empty()
        || r.disks.len() > tenure_format::spec::DISKS_MAX
        || r.disks.iter().any(|d| d.path.is_empty())
    {
        return Err(rv::EINVAL);
    }
    let mode = if r.flags & flags::RES_SHARED != 0 {
        ResourceMode::Shared
    } else if r.flags & flags::RES_LVER != 0 {
        ResourceMode::ExclusiveAtLver(r.lver)
    } else {
        ResourceMode::Exclusive
    };
    Ok(ResourceSpec {
        lockspace: name(&r.lockspace)?,
        name: name(&r.name)?,
        disks: r
            .disks
            .iter()
            .map(|d| DiskLocation {
                path: d.path.clone(),
                offset: d.offset,
            })
            .collect(),
        mode,
    })
}

/// The lease a wire resource names.
fn lease_of(r: &w::Resource) -> Result<LeaseRef, i32> {
    Ok(LeaseRef {
        lockspace: wire_name(&r.lockspace)?,
        name: wire_name(&r.name)?,
    })
}

/// The sanlock result for an error of the native layer, for command `c`.
fn result_of(c: u32, code: ErrorCode) -> i32 {
    match (c, code) {
        (_, ErrorCode::OwnerAlive) => rv::SANLK_ACQUIRE_IDLIVE,
        (_, ErrorCode::OwnedRetry) => rv::SANLK_ACQUIRE_OWNED_RETRY,
        (_, ErrorCode::LverMismatch) => rv::SANLK_ACQUIRE_LVER,
        (_, ErrorCode::SharedBusy | ErrorCode::Releasing) => rv::EAGAIN,
        (_, ErrorCode::Exists) => rv::EEXIST,
        (_, ErrorCode::Orphan) => rv::EUCLEAN,
        (cmd::ACQUIRE, ErrorCode::NotFound | ErrorCode::NotJoined | ErrorCode::LockspaceLost) => {
            rv::ENOSPC
        }
        (cmd::RELEASE, ErrorCode::NotFound) => rv::EPERM,
        (_, ErrorCode::NotFound) => rv::ENOENT,
        (_, ErrorCode::NotJoined | ErrorCode::LockspaceLost) => rv::ENOSPC,
        (_, ErrorCode::Busy) => rv::EBUSY,
        (_, ErrorCode::Full) => rv::E2BIG,
        (_, ErrorCode::BadRequest | ErrorCode::Version) => rv::EINVAL,
        (_, ErrorCode::Permission) => rv::EPERM,
        (cmd::ADD_LOCKSPACE, ErrorCode::Io) => rv::ENODEV,
        (_, ErrorCode::Io) => rv::SANLK_AIO_TIMEOUT,
        (_, ErrorCode::Corrupt) => rv::SANLK_LEADER_MAGIC,
        (_, ErrorCode::Failed) => rv::SANLK_ERROR,
    }
}

/// Main-loop commands: the daemon closes the connection after the reply.
fn closes_after(c: u32) -> bool {
    matches!(
        c,
        cmd::STATUS
            | cmd::HOST_STATUS
            | cmd::RENEWAL
            | cmd::LOG_DUMP
            | cmd::GET_LOCKSPACES
            | cmd::GET_HOSTS
            | cmd::SET_CONFIG
            | cmd::END_EVENT
            | cmd::SHUTDOWN
    )
}

impl Server {
    fn sconn(&mut self, k: ClientKey) -> Option<&mut SanlockConn> {
        match &mut self.conn(k)?.proto {
            Proto::Sanlock(s) => Some(s),
            Proto::Native => None,
        }
    }

    /// Parses and handles whole messages of a sanlock connection.
    pub(super) fn process_sanlock(&mut self, k: ClientKey) {
        loop {
            let restricted = self
                .host
                .client(k)
                .is_some_and(|c| c.restrict & flags::RESTRICT_ALL != 0);
            let Some(c) = self.conn(k) else { return };
            if c.busy || c.closing {
                return;
            }
            match w::parse(&c.inbuf) {
                Parsed::NeedMore => return,
                Parsed::Ignored(n) => {
                    c.inbuf.drain(..n);
                }
                Parsed::Invalid(n, h, result) => {
                    c.inbuf.drain(..n);
                    if restricted {
                        continue;
                    }
                    c.busy = true;
                    self.sanlock_send(k, h, result, 0, &[]);
                }
                Parsed::Message(n, h, body) => {
                    c.inbuf.drain(..n);
                    if restricted {
                        // RESTRICT_ALL: everything on this connection is ignored.
                        continue;
                    }
                    if h.cmd == cmd::REGISTER {
                        if let Some(s) = self.sconn(k) {
                            s.registered = true;
                        }
                        continue;
                    }
                    c.busy = true;
                    c.op = Some((w::cmd_name(h.cmd), std::time::Instant::now()));
                    if let Some(s) = self.sconn(k) {
                        s.current = Some(h);
                        s.close_after = closes_after(h.cmd);
                    }
                    self.sanlock_dispatch(k, h, body);
                }
            }
        }
    }

    /// Sends a reply header (and payload) for `h`.
    fn sanlock_send(&mut self, k: ClientKey, h: Header, result: i32, data2: u32, payload: &[u8]) {
        let Some(c) = self.conn(k) else { return };
        c.busy = false;
        if let Some((kind, at)) = c.op.take() {
            let result = if result >= 0 {
                "ok".to_owned()
            } else {
                format!("{:?}", nix::errno::Errno::from_raw(-result))
            };
            self.metrics.answered("sanlock", kind, result, at.elapsed());
        }
        let Some(c) = self.conn(k) else { return };
        let mut reply = h.reply(result, data2, payload.len());
        if h.cmd == cmd::VERSION {
            reply.seq = 0;
            reply.cmd_flags = 0;
        }
        c.outbuf.extend_from_slice(&reply.encode());
        c.outbuf.extend_from_slice(payload);
        if let Proto::Sanlock(s) = &mut c.proto {
            s.current = None;
            s.on_success = 0;
            if s.close_after {
                c.closing = true;
            }
        }
        self.flush(k.idx);
    }

    /// A native-layer reply arriving for a sanlock connection (asynchronous operations).
    pub(super) fn sanlock_reply(&mut self, k: ClientKey, r: Reply) {
        let Some(h) = self.sconn(k).and_then(|s| s.current) else {
            if let Some(c) = self.conn(k) {
                c.busy = false;
            }
            return;
        };
        if (cmd::FORMAT_RINDEX..=cmd::REBUILD_RINDEX).contains(&h.cmd) {
            return self.sanlock_rindex_reply(k, h, r);
        }
        match r {
            Reply::Done(Done::OrphansReleased(names)) => {
                self.sanlock_send(k, h, names.len() as i32, 0, &[])
            }
            Reply::Done(_) => {
                let result = self
                    .sconn(k)
                    .map_or(0, |s| std::mem::take(&mut s.on_success));
                self.sanlock_send(k, h, result, 0, &[])
            }
            Reply::Error(e) => {
                let result = e
                    .details
                    .as_ref()
                    .and_then(|d| d.sanlock_result)
                    .unwrap_or_else(|| result_of(h.cmd, e.code));
                tracing::debug!(cmd = h.cmd, result, error = %e.message, "sanlock client request failed");
                self.sanlock_send(k, h, result, 0, &[]);
            }
        }
        self.process_sanlock(k);
    }

    /// The registered client a target command acts for: `data2 = -1` is this connection
    /// (which must be registered), otherwise the registered connection of that pid.
    fn sanlock_target(&mut self, k: ClientKey, data2: u32) -> Result<ClientKey, i32> {
        if data2 == u32::MAX {
            return match self.sconn(k) {
                Some(s) if s.registered => Ok(k),
                _ => Err(rv::EBUSY),
            };
        }
        let pid = data2 as i32;
        let found = self.conns.iter().enumerate().find_map(|(i, c)| {
            let c = c.as_ref()?;
            let key = ClientKey {
                idx: i,
                serial: c.serial,
            };
            let c_pid = self.host.client(key).map(|c| c.pid);
            match &c.proto {
                Proto::Sanlock(s) if s.registered && c_pid == Some(pid) => Some(key),
                _ => None,
            }
        });
        found.ok_or(rv::ESRCH)
    }

    fn sanlock_dispatch(&mut self, k: ClientKey, h: Header, body: Body) {
        let done = |me: &mut Server, result: i32| me.sanlock_send(k, h, result, 0, &[]);
        match (h.cmd, body) {
            (cmd::VERSION, _) => self.sanlock_send(k, h, 0, w::DAEMON_VERSION, &[]),
            (cmd::RESTRICT, _) => {
                if let Some(c) = self.host.client_mut(k) {
                    c.restrict = h.cmd_flags;
                }
                done(self, 0);
            }
            (cmd::ADD_LOCKSPACE, Body::Lockspace(ls)) => {
                if ls.name.is_empty() || ls.host_id == 0 || ls.disk.path.is_empty() {
                    return done(self, rv::EINVAL);
                }
                let Ok(name) = wire_name(&ls.name) else {
                    return done(self, rv::EINVAL);
                };
                let spec = LockspaceSpec {
                    name,
                    host_id: ls.host_id,
                    disk: DiskLocation {
                        path: ls.disk.path.clone(),
                        offset: ls.disk.offset,
                    },
                };
                if let Some(i) = self.space_index(&ls.name) {
                    let s = &self.host.spaces()[i].spec;
                    let same = s.host_id == ls.host_id
                        && s.disk.path == ls.disk.path
                        && s.disk.offset == ls.disk.offset;
                    let joining = matches!(
                        self.host.engine().state(self.host.spaces()[i].id),
                        Some(LockspaceState::Joining { .. })
                    );
                    let leaving = self.host.engine().is_leaving(self.host.spaces()[i].id);
                    return done(
                        self,
                        match (same, joining) {
                            // Being removed: try again once it is gone.
                            (true, _) if leaving => rv::EAGAIN,
                            (true, true) => rv::EINPROGRESS,
                            (true, false) => rv::EEXIST,
                            (false, _) => rv::EINVAL,
                        },
                    );
                }
                let wait = h.cmd_flags & flags::ADD_ASYNC == 0;
                // data = io_timeout (0 = the daemon's).
                let t = (h.data != 0).then_some(u64::from(h.data));
                let cmd = Command::LockspaceAdd {
                    spec,
                    wait,
                    io_timeout_s: t,
                };
                if let Some(r) = self.execute(k, cmd) {
                    self.sanlock_reply(k, r);
                }
            }
            (cmd::INQ_LOCKSPACE, Body::Lockspace(ls)) => {
                let r = self.sanlock_inq(&ls.name);
                if r == rv::EINPROGRESS && h.cmd_flags & flags::INQ_WAIT != 0 {
                    self.inq_waiters.push((k, ls.name));
                    return;
                }
                done(self, r);
            }
            (cmd::REM_LOCKSPACE, Body::Lockspace(ls)) => {
                // No lockspace: ENOENT; marked used: EBUSY (the host's not_found / busy).
                let wait = h.cmd_flags & flags::REM_ASYNC == 0;
                let Ok(name) = wire_name(&ls.name) else {
                    return done(self, rv::EINVAL);
                };
                if self
                    .space_index(&ls.name)
                    .is_some_and(|i| self.host.engine().is_leaving(self.host.spaces()[i].id))
                {
                    // Already being removed.
                    return done(self, rv::EINPROGRESS);
                }
                let cmd = Command::LockspaceRemove {
                    name,
                    wait,
                    // REM_UNUSED: refused (EBUSY) while leases are held.
                    kill_holders: h.cmd_flags & flags::REM_UNUSED == 0,
                };
                if let Some(r) = self.execute(k, cmd) {
                    self.sanlock_reply(k, r);
                }
            }
            (cmd::GET_LOCKSPACES, _) => {
                let mut payload = Vec::new();
                let mut n = 0;
                for s in self.host.spaces() {
                    let fl = match self.host.engine().state(s.id) {
                        _ if self.host.engine().is_leaving(s.id) => flags::LSF_REM,
                        Some(LockspaceState::Joined { .. }) => 0,
                        Some(LockspaceState::Joining { .. }) => flags::LSF_ADD,
                        _ => flags::LSF_REM,
                    };
                    payload.extend(
                        w::Lockspace {
                            name: s.name.clone(),
                            host_id: s.spec.host_id,
                            flags: fl,
                            disk: w::Disk {
                                path: s.spec.disk.path.clone(),
                                offset: s.spec.disk.offset,
                            },
                        }
                        .encode(),
                    );
                    n += 1;
                }
                self.sanlock_send(k, h, 0, n, &payload);
            }
            (cmd::GET_HOSTS, Body::Lockspace(ls)) => {
                let Some(i) = self.space_index(&ls.name) else {
                    return done(self, rv::ENOENT);
                };
                if !matches!(
                    self.host.engine().state(self.host.spaces()[i].id),
                    Some(LockspaceState::Joined { .. })
                ) {
                    return done(self, rv::ENOENT);
                }
                if !self.host.engine().hosts_checked(self.host.spaces()[i].id) {
                    // Joined, but no renewal has read the other hosts yet.
                    return done(self, rv::EAGAIN);
                }
                let now = self.clock.now();
                let mut payload = Vec::new();
                let mut n = 0;
                let hosts = self.host.engine().hosts(self.host.spaces()[i].id, now);
                // One slot asked for that was never seen in use: a free record (as sanlock),
                // when the slot exists.
                let spec = &self.host.spaces()[i].spec;
                let hosts_max = self
                    .host
                    .area(&(std::path::PathBuf::from(&spec.disk.path), spec.disk.offset))
                    .and_then(Result::ok)
                    .map_or(0, |a| a.geometry.hosts_max());
                if ls.host_id != 0
                    && ls.host_id <= hosts_max
                    && !hosts.iter().any(|(e, _)| e.host_id == ls.host_id)
                {
                    payload.extend(
                        w::Host {
                            host_id: ls.host_id,
                            generation: 0,
                            timestamp: 0,
                            io_timeout: 0,
                            flags: flags::HOST_FREE,
                        }
                        .encode(),
                    );
                    n += 1;
                }
                for (e, st) in hosts {
                    if ls.host_id != 0 && e.host_id != ls.host_id {
                        continue;
                    }
                    if ls.host_id == 0 && e.timestamp == 0 {
                        continue;
                    }
                    use tenure_core::delta::HostStatus as S;
                    let state = match st {
                        S::Unknown => flags::HOST_UNKNOWN,
                        S::Free => flags::HOST_FREE,
                        S::Live => flags::HOST_LIVE,
                        S::Fail => flags::HOST_FAIL,
                        S::Dead => flags::HOST_DEAD,
                    };
                    payload.extend(
                        w::Host {
                            host_id: e.host_id,
                            generation: e.generation,
                            timestamp: e.timestamp,
                            io_timeout: u32::from(e.io_timeout),
                            flags: state,
                        }
                        .encode(),
                    );
                    n += 1;
                }
                self.sanlock_send(k, h, 0, n, &payload);
            }
            (cmd::ACQUIRE, Body::Acquire(res, owner_name)) => {
                let target = match self.sanlock_target(k, h.data2) {
                    Ok(t) => t,
                    Err(e) => return done(self, e),
                };
                if !owner_name.is_empty() {
                    if let Some(c) = self.host.client_mut(target) {
                        c.name = owner_name.chars().take(48).collect();
                    }
                }
                if res.is_empty() {
                    return done(self, 0);
                }
                let resources = match res.iter().map(spec_of).collect() {
                    Ok(v) => v,
                    Err(e) => return done(self, e),
                };
                let cmd = Command::Acquire {
                    resources,
                    no_wait: h.cmd_flags & flags::ACQUIRE_OWNER_NOWAIT != 0,
                    lvb: h.cmd_flags & flags::ACQUIRE_LVB != 0,
                    holder: Holder::Client(target),
                    persistent: res
                        .iter()
                        .map(|r| r.flags & flags::RES_PERSISTENT != 0)
                        .collect(),
                    // sanlock 3.8.5 treats ORPHAN_ONLY as ORPHAN: with no orphan of the
                    // name, the resource is acquired (observed; docs/sanlock-compat.md).
                    adopt_orphan: h.cmd_flags
                        & (flags::ACQUIRE_ORPHAN | flags::ACQUIRE_ORPHAN_ONLY)
                        != 0,
                };
                if let Some(r) = self.execute(k, cmd) {
                    self.sanlock_reply(k, r);
                }
            }
            (cmd::RELEASE, Body::Resources(res)) => {
                let target = match self.sanlock_target(k, h.data2) {
                    Ok(t) => t,
                    Err(e) => return done(self, e),
                };
                if h.cmd_flags & flags::REL_ORPHAN != 0 {
                    // The orphans of a lockspace, all or the named one; answered with their
                    // count (Done::OrphansReleased).
                    let Some(r) = res.first() else {
                        return done(self, rv::EINVAL);
                    };
                    let (Ok(space), name) = (Name::new(&r.lockspace), &r.name) else {
                        return done(self, 0);
                    };
                    let name = if name.is_empty() {
                        None
                    } else {
                        match Name::new(name) {
                            Ok(n) => Some(n),
                            Err(_) => return done(self, 0),
                        }
                    };
                    let cmd = Command::Release {
                        leases: Leases::Orphans { space, name },
                        holder: Holder::Client(target),
                        lvb: None,
                    };
                    if let Some(r) = self.execute(k, cmd) {
                        self.sanlock_reply(k, r);
                    }
                    return;
                }
                if h.cmd_flags & flags::REL_RENAME != 0 {
                    let (Some(old), Some(new)) = (res.first(), res.get(1)) else {
                        return done(self, rv::EINVAL);
                    };
                    let lease = match lease_of(old) {
                        Ok(l) => l,
                        Err(e) => return done(self, e),
                    };
                    let to = if new.name.is_empty() {
                        Name::EMPTY
                    } else {
                        match Name::new(&new.name) {
                            Ok(n) => n,
                            Err(_) => return done(self, rv::EINVAL),
                        }
                    };
                    let cmd = Command::Release {
                        leases: Leases::Renamed { lease, to },
                        holder: Holder::Client(target),
                        lvb: None,
                    };
                    if let Some(r) = self.execute(k, cmd) {
                        self.sanlock_reply(k, r);
                    }
                    return;
                }
                let all = h.cmd_flags & flags::REL_ALL != 0;
                if all && !self.host.leases().any(|l| l.owner == Owner::Conn(target)) {
                    return done(self, 0);
                }
                let leases = if all {
                    Leases::All
                } else {
                    let v = match res.iter().map(lease_of).collect::<Result<Vec<_>, _>>() {
                        Ok(v) if v.is_empty() => return done(self, 0),
                        Ok(v) => v,
                        Err(e) => return done(self, e),
                    };
                    // The names this client holds are released, the others answered with −1
                    // (EPERM) once that is done, as sanlock does.
                    let held = |l: &LeaseRef| {
                        self.host.leases().any(|x| {
                            x.owner == Owner::Conn(target)
                                && x.joining.is_none()
                                && x.space == l.lockspace.escaped()
                                && x.resource == l.name
                        })
                    };
                    let (mine, not_held): (Vec<LeaseRef>, Vec<LeaseRef>) =
                        v.into_iter().partition(held);
                    if mine.is_empty() {
                        return done(self, rv::EPERM);
                    }
                    if !not_held.is_empty() {
                        if let Some(s) = self.sconn(k) {
                            s.on_success = rv::EPERM;
                        }
                    }
                    Leases::These(mine)
                };
                let cmd = Command::Release {
                    leases,
                    holder: Holder::Client(target),
                    lvb: None,
                };
                if let Some(r) = self.execute(k, cmd) {
                    self.sanlock_reply(k, r);
                }
            }
            (cmd::INQUIRE, _) => {
                let target = match self.sanlock_target(k, h.data2) {
                    Ok(t) => t,
                    Err(e) => return done(self, e),
                };
                let mine: Vec<String> = self
                    .host
                    .leases()
                    .filter(|l| l.owner == Owner::Conn(target) && l.joining.is_none())
                    .map(|l| {
                        let lver = if l.held.acquired.shared {
                            "SH".to_owned()
                        } else {
                            l.held.acquired.lver.to_string()
                        };
                        let disks: Vec<String> = l
                            .disks()
                            .map(|(p, o)| format!("{}:{o}", w::escape_path(p)))
                            .collect();
                        format!(
                            "{}:{}:{}:{}",
                            l.space,
                            l.resource.escaped(),
                            disks.join(":"),
                            lver
                        )
                    })
                    .collect();
                if mine.is_empty() {
                    return self.sanlock_send(k, h, 0, 0, &[]);
                }
                let mut text = mine.join(" ").into_bytes();
                text.push(0);
                let n = mine.len() as u32;
                self.sanlock_send(k, h, 0, n, &text);
            }
            (cmd::KILLPATH, Body::KillPath(path, args)) => {
                let target = match self.sanlock_target(k, h.data2) {
                    Ok(t) => t,
                    Err(e) => return done(self, e),
                };
                let mut argv = split_args(&args);
                if argv.len() > 7 {
                    return done(self, rv::EINVAL);
                }
                if path.is_empty() {
                    return done(self, rv::EINVAL);
                }
                if h.cmd_flags & 0x1 != 0 {
                    if let Some(c) = self.host.client(target) {
                        argv.push(c.pid.to_string());
                    }
                }
                if let Some(c) = self.host.client_mut(target) {
                    c.kill_path = Some((path, argv));
                }
                done(self, 0);
            }
            (cmd::ALIGN, Body::ResourceWithDisks(r)) => {
                let path = r.disks.first().map(|d| d.path.clone()).unwrap_or_default();
                if path.is_empty() {
                    return done(self, rv::ENODEV);
                }
                self.sanlock_job(k, h, move || {
                    match tenure_core::dev::Device::open(
                        std::path::Path::new(&path),
                        tenure_core::dev::Access::Read,
                    ) {
                        Ok(d) => {
                            let bytes: i32 = if d.logical_sector_size() == Some(4096) {
                                8 << 20
                            } else {
                                1 << 20
                            };
                            JobReply::Sanlock(bytes, 0, Vec::new())
                        }
                        Err(_) => JobReply::Sanlock(rv::ENODEV, 0, Vec::new()),
                    }
                });
            }
            (cmd::WRITE_LOCKSPACE, Body::Lockspace(ls)) => {
                // sanlock 3.8.5: no device → ENODEV; an empty name is written as it is.
                if ls.disk.path.is_empty() {
                    return done(self, rv::ENODEV);
                }
                let opts = match format_options(ls.flags) {
                    Ok(o) => o,
                    Err(e) => return done(self, e),
                };
                // 0 = the daemon's io_timeout (sanlock: its -o value).
                let io_timeout = if h.data2 == 0 {
                    self.cfg.io_timeout_s
                } else {
                    u64::from(h.data2)
                };
                let name = if ls.name.is_empty() {
                    Name::EMPTY
                } else {
                    match wire_name(&ls.name) {
                        Ok(n) => n,
                        Err(e) => return done(self, e),
                    }
                };
                let spec = LockspaceSpec {
                    name,
                    host_id: 0,
                    disk: DiskLocation {
                        path: ls.disk.path.clone(),
                        offset: ls.disk.offset,
                    },
                };
                self.sanlock_job(k, h, move || {
                    let r = direct::format_lockspace(&spec, opts, io_timeout)
                        .map_err(|e| direct_rv(&e));
                    JobReply::Sanlock(r.map_or_else(|e| e, |_| 0), 0, Vec::new())
                });
            }
            (cmd::WRITE_RESOURCE, Body::ResourceWithDisks(r)) => {
                // sanlock 3.8.5 answers an empty path with ENOENT (it opens "").
                if r.disks.iter().any(|d| d.path.is_empty()) {
                    return done(self, rv::ENOENT);
                }
                let opts = match format_options(r.flags) {
                    Ok(o) => o,
                    Err(e) => return done(self, e),
                };
                // The daemon takes num_hosts from `data` (spec §4.3); 0 = every host.
                let num_hosts = (h.data != 0).then_some(u64::from(h.data));
                // Empty names are written as they are (sanlock 3.8.5 accepts them, cleared
                // or not: a lease nobody can name, as `direct init` of "" leaves).
                let spec = match spec_of_names(&w::Resource { flags: 0, ..r }, true) {
                    Ok(s) => s,
                    Err(e) => return done(self, e),
                };
                let clear = h.cmd_flags & flags::WRITE_CLEAR != 0;
                self.sanlock_job(k, h, move || {
                    let r = if clear {
                        direct::clear_resource(&spec, opts, num_hosts)
                    } else {
                        direct::format_resource(&spec, opts, num_hosts)
                    };
                    let r = r.map_err(|e| direct_rv(&e));
                    JobReply::Sanlock(r.map_or_else(|e| e, |_| 0), 0, Vec::new())
                });
            }
            (cmd::READ_RESOURCE_OWNERS, Body::ResourceWithDisks(r)) => {
                let spec = match spec_of(&w::Resource {
                    flags: 0,
                    ..r.clone()
                }) {
                    Ok(s) => s,
                    Err(e) => return done(self, e),
                };
                self.sanlock_job(k, h, move || {
                    if let Err(code) = owners_precheck(&r) {
                        return JobReply::Sanlock(code, 0, Vec::new());
                    }
                    match direct::owners(&spec, BackendKind::Sync) {
                        Ok(reports) => {
                            let Some(o) = reports.first().map(|rep| &rep.owners) else {
                                return JobReply::Sanlock(rv::EINVAL, 0, Vec::new());
                            };
                            let mut hosts = Vec::new();
                            if let Some(x) = &o.exclusive {
                                hosts.push(w::Host {
                                    host_id: x.host_id,
                                    generation: x.generation,
                                    timestamp: x.timestamp,
                                    io_timeout: 0,
                                    flags: 0,
                                });
                            }
                            for x in &o.shared {
                                hosts.push(w::Host {
                                    host_id: x.host_id,
                                    generation: x.generation,
                                    timestamp: 0,
                                    io_timeout: 0,
                                    flags: 0,
                                });
                            }
                            let res = w::Resource {
                                lver: o.lver,
                                flags: if o.shared.is_empty() {
                                    0
                                } else {
                                    flags::RES_SHARED
                                },
                                num_disks: r.num_disks,
                                disks: Vec::new(),
                                ..r
                            };
                            let mut payload = res.encode_head().to_vec();
                            for x in &hosts {
                                payload.extend(x.encode());
                            }
                            JobReply::Sanlock(0, hosts.len() as u32, payload)
                        }
                        Err(e) => JobReply::Sanlock(direct_rv(&e), 0, Vec::new()),
                    }
                });
            }
            (cmd::READ_LOCKSPACE, Body::Lockspace(ls)) => {
                let fallback = ls.encode();
                self.sanlock_job(k, h, move || {
                    read_area(
                        &ls.disk.path,
                        ls.disk.offset,
                        ls.host_id.max(1),
                        |l, g| {
                            let out = w::Lockspace {
                                name: if ls.name.is_empty() {
                                    l.space_name.escaped()
                                } else {
                                    ls.name.clone()
                                },
                                host_id: ls.host_id.max(1),
                                flags: geometry_flags(g),
                                disk: ls.disk.clone(),
                            };
                            if !ls.name.is_empty() && ls.name != l.space_name.escaped() {
                                return (rv::SANLK_LEADER_LOCKSPACE, 0, ls.encode());
                            }
                            (0, u32::from(l.io_timeout), out.encode())
                        },
                        true,
                        fallback,
                    )
                });
            }
            (cmd::READ_RESOURCE, Body::ResourceWithDisks(r)) => {
                let d = r.disks.first().cloned().unwrap_or_default();
                let fallback = r.encode_head().to_vec();
                self.sanlock_job(k, h, move || {
                    read_area(
                        &d.path,
                        d.offset,
                        0,
                        |l, g| {
                            let out = w::Resource {
                                lockspace: l.space_name.escaped(),
                                name: l.resource_name.escaped(),
                                lver: l.lver,
                                flags: geometry_flags(g),
                                ..r.clone()
                            };
                            // A mismatch sends the request back as it came.
                            if !r.lockspace.is_empty() && r.lockspace != out.lockspace {
                                return (rv::SANLK_LEADER_LOCKSPACE, 0, r.encode_head().to_vec());
                            }
                            if !r.name.is_empty() && r.name != out.name {
                                return (rv::SANLK_LEADER_RESOURCE, 0, r.encode_head().to_vec());
                            }
                            (0, 0, out.encode_head().to_vec())
                        },
                        false,
                        fallback,
                    )
                });
            }
            (cmd::REQUEST, Body::ResourceWithDisks(r)) => {
                // NEXT_LVER with lver 0: the owner's lver + 1; lver 0 and force 0 clears.
                let lver = if h.cmd_flags & 0x1 != 0 && r.lver == 0 {
                    None
                } else {
                    Some(r.lver)
                };
                let spec = match spec_of(&w::Resource { flags: 0, ..r }) {
                    Ok(s) => s,
                    Err(e) => return done(self, e),
                };
                let cmd = Command::Request {
                    resource: spec,
                    lver,
                    force_mode: h.data,
                };
                if let Some(reply) = self.execute(k, cmd) {
                    self.sanlock_reply(k, reply);
                }
            }
            (cmd::CONVERT, Body::Resources(rs)) => {
                let target = match self.sanlock_target(k, h.data2) {
                    Ok(t) => t,
                    Err(e) => return done(self, e),
                };
                let Some(r) = rs.first() else {
                    return done(self, rv::EINVAL);
                };
                let want_shared = r.flags & flags::RES_SHARED != 0;
                let Some(l) = self.host.leases().find(|l| {
                    l.owner == Owner::Conn(target)
                        && l.space == r.lockspace
                        && l.resource.escaped() == r.name
                }) else {
                    return done(self, rv::ENOENT);
                };
                if l.held.acquired.shared == want_shared {
                    return done(self, rv::EALREADY);
                }
                let Ok(lease) = lease_of(r) else {
                    return done(self, rv::EINVAL);
                };
                let cmd = Command::Convert {
                    lease,
                    shared: want_shared,
                    holder: Holder::Client(target),
                    no_wait: h.cmd_flags & flags::ACQUIRE_OWNER_NOWAIT != 0,
                };
                if let Some(reply) = self.execute(k, cmd) {
                    self.sanlock_reply(k, reply);
                }
            }
            (cmd::SET_LVB, Body::SetLvb(r, bytes)) => {
                let Ok(lease) = lease_of(&r) else {
                    return done(self, rv::ENOENT);
                };
                let result = match self.host.set_local_lvb(&lease, bytes) {
                    Ok(()) => 0,
                    Err(LvbRefusal::NotHeld) => rv::ENOENT,
                    Err(LvbRefusal::NotRead) => rv::EINVAL,
                    Err(LvbRefusal::TooLong { .. }) => rv::E2BIG,
                };
                done(self, result);
            }
            (cmd::GET_LVB, Body::Resources(rs)) => {
                let Some(r) = rs.first() else {
                    return done(self, rv::EINVAL);
                };
                let Some(local) = lease_of(r).ok().and_then(|l| self.host.local_lvb(&l)) else {
                    return done(self, rv::ENOENT);
                };
                let ss = local.sector_size;
                let Some(lvb) = local.read else {
                    return done(self, rv::EINVAL);
                };
                // The value to be written at release if one was set since, else what was read.
                let value = local.to_write.unwrap_or(lvb);
                let len = if h.data2 == 0 {
                    ss
                } else {
                    (h.data2 as usize).min(ss)
                };
                let mut payload = value;
                payload.resize(len, 0);
                self.sanlock_send(k, h, 0, 0, &payload);
            }
            (cmd::SHUTDOWN | cmd::SHUTDOWN_WAIT, _)
                if h.data != 0 && !self.host.spaces().is_empty() =>
            {
                // Forced: SIGKILL every lease holder (as sanlock does), then leave every
                // lockspace once their leases are released, then exit. SHUTDOWN_WAIT is
                // answered at exit.
                let now = self.clock.now();
                self.host.stop_killing_holders(now);
                self.drain();
                if h.cmd == cmd::SHUTDOWN_WAIT {
                    if let Some(c) = self.conn(k) {
                        c.busy = false;
                    }
                    self.shutdown_waiters.push((k, h));
                } else if let Some(c) = self.conn(k) {
                    c.busy = false;
                    c.closing = true;
                }
            }
            (cmd::SHUTDOWN | cmd::SHUTDOWN_WAIT, _) => {
                // Not forced: refused while any lockspace exists.
                if !self.host.spaces().is_empty() {
                    if h.cmd == cmd::SHUTDOWN {
                        // No reply: the connection closes.
                        if let Some(c) = self.conn(k) {
                            c.busy = false;
                            c.closing = true;
                        }
                        return;
                    }
                    return done(self, rv::EBUSY);
                }
                tracing::info!("shutdown asked by a sanlock client");
                self.host.refuse_new_work();
                if h.cmd == cmd::SHUTDOWN_WAIT {
                    let fin = Header {
                        cmd: 0,
                        cmd_flags: 0,
                        seq: 0,
                        ..h
                    };
                    if let Some(s) = self.sconn(k) {
                        s.close_after = true;
                    }
                    self.sanlock_send(k, fin, 0, 0, &[]);
                } else if let Some(c) = self.conn(k) {
                    c.busy = false;
                    c.closing = true;
                }
            }
            (cmd::HOST_STATUS, Body::Lockspace(ls)) => {
                let Some(i) = self.space_index(&ls.name) else {
                    return done(self, rv::ENOSPC);
                };
                let now = self.clock.now();
                let mut payload = Vec::new();
                for (e, st) in self.host.engine().hosts(self.host.spaces()[i].id, now) {
                    let text = format!(
                        "last_check={} last_live={} last_req=0 owner_id={} owner_generation={} timestamp={} io_timeout={} owner_name={} status={st:?}",
                        now.as_secs(),
                        e.last_change.map_or(0, |t| t.as_secs()),
                        e.host_id,
                        e.generation,
                        e.timestamp,
                        e.io_timeout,
                        e.owner_name.escaped()
                    );
                    state_record(
                        &mut payload,
                        5,
                        e.host_id as u32,
                        e.timestamp,
                        "",
                        &text,
                        &[],
                    );
                }
                self.sanlock_send(k, h, 0, 0, &payload);
            }
            (cmd::RENEWAL, Body::Lockspace(ls)) => {
                let Some(i) = self.space_index(&ls.name) else {
                    return done(self, rv::ENOSPC);
                };
                let mut payload = Vec::new();
                for r in self.host.engine().renewal_history(self.host.spaces()[i].id) {
                    let ms =
                        |d: Option<std::time::Duration>| d.map_or(-1, |d| d.as_millis() as i64);
                    let text = format!(
                        "timestamp={} read_ms={} write_ms={} next_timeouts=0 next_errors={}",
                        r.at.as_secs(),
                        ms(r.read_latency),
                        ms(r.write_latency),
                        u32::from(r.error.is_some())
                    );
                    state_record(&mut payload, 6, 0, r.at.as_secs(), "", &text, &[]);
                }
                let t = self
                    .host
                    .engine()
                    .config(self.host.spaces()[i].id)
                    .map_or(0, |c| u32::from(c.timeouts.io_timeout_s));
                self.sanlock_send(k, h, 0, t, &payload);
            }
            (cmd::LOG_DUMP, _) => {
                // No in-memory log: tenured logs to stderr/journal (the CLI prints any text).
                let text = format!(
                    "tenured {} keeps no in-memory log; see its journal (journalctl -u tenured) or `tenure status`\n",
                    env!("CARGO_PKG_VERSION")
                );
                let n = text.len() as i32;
                let reply = h.reply(n, 0, 0);
                if let Some(c) = self.conn(k) {
                    c.busy = false;
                    c.outbuf.extend_from_slice(&reply.encode());
                    c.outbuf.extend_from_slice(text.as_bytes());
                    c.closing = true;
                }
                self.flush(k.idx);
            }
            (cmd::STATUS, _) => {
                let payload = self.sanlock_status();
                self.sanlock_send(k, h, 0, 0, &payload);
            }
            (cmd::EXAMINE_LOCKSPACE, Body::Lockspace(ls)) => {
                // Re-read the request records of the leases held in it; data is always 0.
                if let Ok(space) = wire_name(&ls.name) {
                    let _ = self.execute(
                        k,
                        Command::Examine {
                            space,
                            resource: None,
                        },
                    );
                }
                done(self, 0);
            }
            (cmd::EXAMINE_RESOURCE, Body::Resources(rs)) => {
                if let Some(Ok(lease)) = rs.first().map(lease_of) {
                    let _ = self.execute(
                        k,
                        Command::Examine {
                            space: lease.lockspace,
                            resource: Some(lease.name),
                        },
                    );
                }
                done(self, 0);
            }
            (cmd::SET_CONFIG, Body::Lockspace(ls)) => {
                let (used, by_orphans) = match h.data {
                    flags::CONFIG_USED => (Some(true), None),
                    flags::CONFIG_UNUSED => (Some(false), None),
                    flags::CONFIG_USED_BY_ORPHANS => (None, Some(true)),
                    flags::CONFIG_UNUSED_BY_ORPHANS => (None, Some(false)),
                    _ => return done(self, rv::EINVAL),
                };
                let Ok(name) = wire_name(&ls.name) else {
                    return done(self, rv::EINVAL);
                };
                // sanlock finds only joined lockspaces here: one still joining is unknown.
                let joining = self.space_index(&name.escaped()).is_some_and(|i| {
                    let s = &self.host.spaces()[i];
                    matches!(
                        self.host.engine().state(s.id),
                        Some(LockspaceState::Joining { .. })
                    )
                });
                if joining {
                    return done(self, rv::ENOENT);
                }
                let cmd = Command::LockspaceConfig {
                    name,
                    used,
                    used_by_orphans: by_orphans,
                };
                if let Some(r) = self.execute(k, cmd) {
                    self.sanlock_reply(k, r);
                }
            }
            (c, Body::Rindex(rx, entry)) => {
                use crate::proto::RindexAction as A;
                let action = match c {
                    cmd::FORMAT_RINDEX => A::Format,
                    cmd::REBUILD_RINDEX => A::Rebuild,
                    cmd::LOOKUP_RINDEX => A::Lookup,
                    cmd::CREATE_RESOURCE => A::Create,
                    cmd::DELETE_RESOURCE => A::Delete,
                    _ if h.cmd_flags & flags::RXUP_ADD != 0 => A::Add,
                    _ if h.cmd_flags & flags::RXUP_REM != 0 => A::Remove,
                    _ => return self.sanlock_send(k, h, rv::EINVAL, 0, &[0; w::RENTRY_LEN]),
                };
                let (sector_size, align_mb) = match format_options(rx.flags) {
                    Ok(o) => (
                        o.sector_size.map(|s| s.bytes()),
                        o.align.map(|a| (a.bytes() >> 20) as u32),
                    ),
                    Err(e) => return done(self, e),
                };
                let entry = entry.unwrap_or_default();
                let invalid =
                    |me: &mut Server| me.sanlock_send(k, h, rv::EINVAL, 0, &[0; w::RENTRY_LEN]);
                let (Ok(lockspace), Some(name)) = (
                    wire_name(&rx.lockspace),
                    match entry.name.as_str() {
                        "" => Some(None),
                        n => wire_name(n).ok().map(Some),
                    },
                ) else {
                    return invalid(self);
                };
                if rx.disk.path.is_empty() {
                    return invalid(self);
                }
                let req = RindexCommand {
                    spec: RindexSpec {
                        lockspace,
                        disk: DiskLocation {
                            path: rx.disk.path.clone(),
                            offset: rx.disk.offset,
                        },
                    },
                    action,
                    name,
                    offset: entry.offset,
                    // CREATE takes num_hosts from `data` (as WRITE_RESOURCE does).
                    num_hosts: u64::from(h.data),
                    max_resources: rx.max_resources,
                    sector_size,
                    align_mb,
                    no_lockspace: h.cmd_flags & flags::RX_NO_LOCKSPACE != 0,
                };
                if let Some(r) = self.rindex(k, req) {
                    self.sanlock_reply(k, r);
                }
            }
            (cmd::REG_EVENT, Body::Event(ls, _)) => self.sanlock_reg_event(k, h, &ls.name),
            (cmd::END_EVENT, Body::Lockspace(ls)) => {
                let r = self.sanlock_end_event(&ls.name);
                done(self, r);
            }
            (cmd::SET_EVENT, Body::Event(ls, he)) => {
                let r = self.sanlock_set_event(&ls.name, h.cmd_flags, he);
                done(self, r);
            }
            (c, _) => {
                tracing::info!(cmd = c, "sanlock client command not implemented");
                done(self, rv::EINVAL);
            }
        }
    }

    fn sanlock_job(
        &mut self,
        k: ClientKey,
        h: Header,
        f: impl FnOnce() -> JobReply + Send + 'static,
    ) {
        if !self.spawn_job(k, f) {
            self.sanlock_send(k, h, rv::EBUSY, 0, &[]);
        }
    }

    /// A helper thread's reply for a sanlock client.
    pub(super) fn sanlock_job_done(
        &mut self,
        k: ClientKey,
        result: i32,
        data2: u32,
        payload: &[u8],
    ) {
        if let Some(h) = self.sconn(k).and_then(|s| s.current) {
            self.sanlock_send(k, h, result, data2, payload);
            self.process_sanlock(k);
        }
    }

    /// The final reply to SHUTDOWN_WAIT: `{magic, version 1, cmd 0, flags 0, length 32, seq
    /// 0, data 0, data2 0}`, then the connection closes.
    pub(super) fn sanlock_shutdown_reply(&mut self, k: ClientKey, h: Header) {
        let fin = Header {
            cmd: 0,
            cmd_flags: 0,
            seq: 0,
            ..h
        };
        if let Some(s) = self.sconn(k) {
            s.close_after = true;
            s.current = Some(fin);
        }
        self.sanlock_send(k, fin, 0, 0, &[]);
    }

    /// The reply to a rindex command: UPDATE / LOOKUP / CREATE / DELETE always carry a
    /// `sanlk_rentry` (zeros on error): LOOKUP the entry found, UPDATE add the entry written,
    /// CREATE the new offset (no name), UPDATE remove and DELETE zeros — as sanlock 3.8.5.
    fn sanlock_rindex_reply(&mut self, k: ClientKey, h: Header, r: Reply) {
        let with_entry = !matches!(h.cmd, cmd::FORMAT_RINDEX | cmd::REBUILD_RINDEX);
        let (result, entry) = match &r {
            Reply::Done(d) => {
                let (name, offset) = match d {
                    Done::Rindex(
                        RindexDone::Entry { name, offset } | RindexDone::Created { name, offset },
                    ) => (name.clone(), *offset),
                    _ => (String::new(), 0),
                };
                let e = match h.cmd {
                    cmd::LOOKUP_RINDEX => w::Rentry { name, offset },
                    cmd::UPDATE_RINDEX if h.cmd_flags & flags::RXUP_ADD != 0 => {
                        w::Rentry { name, offset }
                    }
                    cmd::CREATE_RESOURCE => w::Rentry {
                        name: String::new(),
                        offset,
                    },
                    _ => w::Rentry::default(),
                };
                (0, e)
            }
            Reply::Error(e) => {
                let result = e
                    .details
                    .as_ref()
                    .and_then(|d| d.sanlock_result)
                    .unwrap_or_else(|| result_of(h.cmd, e.code));
                tracing::debug!(cmd = h.cmd, result, error = %e.message, "sanlock rindex request failed");
                (result, w::Rentry::default())
            }
        };
        let payload = if with_entry {
            entry.encode().to_vec()
        } else {
            Vec::new()
        };
        self.sanlock_send(k, h, result, 0, &payload);
        self.process_sanlock(k);
    }

    /// REG_EVENT: the connection becomes an event fd of a joined lockspace (32 at most; dead
    /// ones are dropped first when full). It is answered, then no longer read.
    fn sanlock_reg_event(&mut self, k: ClientKey, h: Header, name: &str) {
        let done = |me: &mut Server, result: i32| me.sanlock_send(k, h, result, 0, &[]);
        if name.is_empty() {
            return done(self, rv::EINVAL);
        }
        let Some(_) = self.space_index(name).filter(|i| {
            matches!(
                self.host.engine().state(self.host.spaces()[*i].id),
                Some(LockspaceState::Joined { .. })
            )
        }) else {
            return done(self, rv::ENOENT);
        };
        if self.sconn(k).is_some_and(|s| s.registered) {
            // Its leases live with the connection: it cannot turn into an event fd.
            return done(self, rv::EBUSY);
        }
        let fds = self.event_fds.entry(name.to_owned()).or_default();
        if fds.len() >= EVENT_FDS_MAX {
            fds.retain(|fd| !peer_gone(fd));
            if fds.len() >= EVENT_FDS_MAX {
                return done(self, rv::ENOCSI);
            }
        }
        let Some(c) = self.conn(k) else { return };
        c.closing = false;
        if let Proto::Sanlock(s) = &mut c.proto {
            s.close_after = false;
        }
        self.sanlock_send(k, h, 0, 0, &[]);
        let Some(c) = self.conns.get_mut(k.idx).and_then(Option::take) else {
            return;
        };
        let pid = self.host.client(k).map_or(0, |c| c.pid);
        // No longer a client: it holds nothing (not registered).
        self.host.client_closed(self.clock.now(), k);
        self.drain();
        if c.outbuf.is_empty() {
            tracing::info!(lockspace = %name, pid, "event fd registered");
            self.event_fds
                .entry(name.to_owned())
                .or_default()
                .push(c.stream);
        }
    }

    /// END_EVENT: every event fd of the lockspace whose client wrote `1` or closed is forgotten.
    fn sanlock_end_event(&mut self, name: &str) -> i32 {
        if name.is_empty() {
            return rv::EINVAL;
        }
        let Some(_) = self.space_index(name) else {
            return rv::ENOENT;
        };
        self.event_fds
            .entry(name.to_owned())
            .or_default()
            .retain(|fd| {
                let mut b = [0u8; 4];
                match nix::sys::socket::recv(fd.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT) {
                    Ok(4) => u32::from_le_bytes(b) != 1,
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(nix::errno::Errno::EAGAIN) => true,
                    Err(_) => false,
                }
            });
        0
    }

    /// SET_EVENT: publish (or clear) the host event of a joined lockspace.
    fn sanlock_set_event(&mut self, name: &str, fl: u32, he: w::HostEvent) -> i32 {
        if name.is_empty() {
            return rv::EINVAL;
        }
        if self.space_index(name).is_none() {
            return rv::ENOENT;
        }
        let req = SetEvent {
            host_id: he.host_id,
            event: HostEvent {
                generation: he.generation,
                event: he.event,
                data: he.data,
            },
            cur_generation: fl & flags::EVENT_CUR_GENERATION != 0,
            clear_host: fl & flags::EVENT_CLEAR_HOSTID != 0,
            clear_event: fl & flags::EVENT_CLEAR_EVENT != 0,
            replace: fl & flags::EVENT_REPLACE_EVENT != 0,
            all_hosts: fl & flags::EVENT_ALL_HOSTS != 0,
        };
        let now = self.clock.now();
        match self
            .host
            .set_event(now, name, req)
            .unwrap_or(Err(EventError::Unknown))
        {
            Ok(()) => {
                tracing::info!(lockspace = %name, host_id = he.host_id, event = he.event, data = he.data, flags = fl, "host event set");
                0
            }
            Err(EventError::Unknown | EventError::NotJoined) => rv::ENOENT,
            Err(EventError::HostId { .. }) => rv::EINVAL,
            Err(EventError::Busy { .. }) => rv::EBUSY,
        }
    }

    /// Writes received host events to the lockspace's event fds (non-blocking; a failed send
    /// drops that fd).
    pub(super) fn deliver_events(
        &mut self,
        space: &str,
        our_host_id: u64,
        events: &[ReceivedEvent],
    ) {
        let fds = self.event_fds.entry(space.to_owned()).or_default();
        for e in events {
            tracing::info!(lockspace = %space, from = e.from_host_id, event = e.event.event, data = e.event.data, fds = fds.len(), "host event received");
            let he = w::HostEvent {
                host_id: our_host_id,
                generation: e.event.generation,
                event: e.event.event,
                data: e.event.data,
            };
            let msg = w::event_cb(&he, e.from_host_id, e.from_generation);
            fds.retain(|fd| {
                matches!(
                    nix::sys::socket::send(
                        fd.as_raw_fd(),
                        &msg,
                        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    ),
                    Ok(80)
                )
            });
        }
    }

    /// INQ_LOCKSPACE's result for a lockspace name.
    pub(super) fn sanlock_inq(&self, name: &str) -> i32 {
        let id = self.space_index(name).map(|i| self.host.spaces()[i].id);
        // Releasing its host id (a removal past killing the holders, or shutting down):
        // in progress, until it is gone.
        if id.is_some_and(|id| self.host.engine().is_leaving(id)) {
            return rv::EINPROGRESS;
        }
        match id.map(|id| self.host.engine().state(id)) {
            Some(Some(LockspaceState::Joined { .. })) if !self.host.is_stopping() => 0,
            Some(Some(LockspaceState::Joining { .. })) => rv::EINPROGRESS,
            Some(Some(LockspaceState::Joined { .. })) => rv::EINPROGRESS,
            _ => rv::ENOENT,
        }
    }

    /// Answers INQ_LOCKSPACE waiters whose lockspace is no longer in progress.
    pub(super) fn sanlock_inq_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.inq_waiters);
        for (k, name) in waiters {
            let r = self.sanlock_inq(&name);
            if r == rv::EINPROGRESS && self.conn(k).is_some() {
                self.inq_waiters.push((k, name));
                continue;
            }
            if let Some(h) = self.sconn(k).and_then(|s| s.current) {
                self.sanlock_send(k, h, r, 0, &[]);
                self.process_sanlock(k);
            }
        }
    }

    /// STATUS records: the daemon, then one per lockspace and per lease (sanlk_state).
    fn sanlock_status(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut record =
            |typ: u32, data32: u32, data64: u64, name: &str, text: &str, bin: &[u8]| {
                state_record(&mut out, typ, data32, data64, name, text, bin)
            };
        let host = self.host.host_name().escaped();
        record(
            1,
            0,
            0,
            &host,
            &format!(
                "our_host_name={host} use_aio=1 version_str=tenured-{}",
                env!("CARGO_PKG_VERSION")
            ),
            &[],
        );
        // One CLIENT record per registered sanlock connection and per native client holding
        // leases (the CLI prints them as `p PID NAME`).
        for (i, conn) in self.conns.iter().enumerate() {
            let Some(conn) = conn else { continue };
            let Some(c) = self.host.client(ClientKey {
                idx: i,
                serial: conn.serial,
            }) else {
                continue;
            };
            let show = match &conn.proto {
                Proto::Sanlock(sc) => sc.registered,
                Proto::Native => self.host.leases().any(|l| l.pid == c.pid),
            };
            if show {
                let restrict = c.restrict;
                record(
                    2,
                    c.pid as u32,
                    0,
                    &c.name,
                    &format!("restricted={restrict}"),
                    &[],
                );
            }
        }
        for s in self.host.spaces() {
            let ls = w::Lockspace {
                name: s.name.clone(),
                host_id: s.spec.host_id,
                flags: 0,
                disk: w::Disk {
                    path: s.spec.disk.path.clone(),
                    offset: s.spec.disk.offset,
                },
            };
            let list = match self.host.engine().state(s.id) {
                Some(LockspaceState::Joined { .. }) => "spaces",
                Some(LockspaceState::Joining { .. }) => "add",
                _ => "rem",
            };
            record(
                3,
                0,
                s.spec.host_id,
                &s.name,
                &format!("list={list}"),
                &ls.encode(),
            );
        }
        for l in self.host.leases().filter(|l| l.joining.is_none()) {
            let r = w::Resource {
                lockspace: l.space.clone(),
                name: l.resource.escaped(),
                lver: l.held.acquired.lver,
                flags: if l.held.acquired.shared {
                    flags::RES_SHARED
                } else {
                    0
                } | if l.persistent {
                    flags::RES_PERSISTENT
                } else {
                    0
                },
                num_disks: l.disks().count() as u32,
                ..w::Resource::default()
            };
            let mut bin = r.encode_head().to_vec();
            for (path, offset) in l.disks() {
                let mut d = vec![0u8; w::DISK_LEN];
                let p = path.as_bytes();
                let n = p.len().min(1023);
                d[..n].copy_from_slice(&p[..n]);
                d[1024..1032].copy_from_slice(&offset.to_le_bytes());
                bin.extend(d);
            }
            record(
                4,
                l.pid as u32,
                l.held.acquired.lver,
                &l.resource.escaped(),
                if l.owner == Owner::Orphan {
                    "list=orphan"
                } else {
                    "list=held"
                },
                &bin,
            );
        }
        out
    }
}

/// Format options from SANLK_RES_/LSF_ ALIGN and SECTOR flags (both or neither).
fn format_options(fl: u32) -> Result<FormatOptions, i32> {
    let sector = match fl & 0x300 {
        0 => None,
        0x100 => Some(SectorSize::B512),
        0x200 => Some(SectorSize::B4096),
        _ => return Err(rv::EINVAL),
    };
    // Several align flags: the smallest counts (sanlock 3.8.5 writes 1M for 1M|2M).
    let align = match fl & 0xF0 {
        0 => None,
        a if a & 0x10 != 0 => Some(AlignSize::M1),
        a if a & 0x20 != 0 => Some(AlignSize::M2),
        a if a & 0x40 != 0 => Some(AlignSize::M4),
        _ => Some(AlignSize::M8),
    };
    // An align without a sector size: sanlock answers −1.
    if sector.is_some() != align.is_some() {
        return Err(rv::EPERM);
    }
    Ok(FormatOptions {
        sector_size: sector,
        align,
        force: true,
        backend: BackendKind::Auto,
    })
}

/// The sanlock result for a direct-I/O failure.
fn direct_rv(e: &DirectError) -> i32 {
    match e {
        DirectError::Device(_) => rv::ENODEV,
        DirectError::TimedOut { .. } => rv::SANLK_AIO_TIMEOUT,
        DirectError::Usage(_) => rv::EINVAL,
        _ => rv::SANLK_ERROR,
    }
}

/// SANLK_RES_/LSF_ ALIGN and SECTOR flags of a geometry.
fn geometry_flags(g: tenure_format::Geometry) -> u32 {
    let sector = if g.sector_size_bytes() == 4096 {
        0x200
    } else {
        0x100
    };
    let align = match g.area_bytes() >> 20 {
        1 => 0x10,
        2 => 0x20,
        4 => 0x40,
        _ => 0x80,
    };
    sector | align
}

/// Reads the leader at `offset` (a lockspace's slot `host_id`, or a resource's leader) and
/// builds the reply with `f`; failures get sanlock's results (no leader: −223).
fn read_area(
    path: &str,
    offset: u64,
    host_id: u64,
    f: impl FnOnce(&tenure_format::LeaderRecord, tenure_format::Geometry) -> (i32, u32, Vec<u8>),
    lockspace: bool,
    // The struct the client reads whatever the result (READ_LOCKSPACE/READ_RESOURCE always
    // send it, spec §4.3).
    fallback: Vec<u8>,
) -> JobReply {
    use tenure_format::{Geometry, LeaderRecord};
    let mut d = match direct::DirectDisk::open(
        std::path::Path::new(path),
        tenure_core::dev::Access::Read,
        BackendKind::Sync,
    ) {
        Ok(d) => d,
        Err(e) => return JobReply::Sanlock(direct_rv(&e), 0, fallback),
    };
    let first = match d.read(offset, 4096, LeaderRecord::decode) {
        Ok(Ok(l)) => l,
        Ok(Err(tenure_format::DecodeError::BadChecksum { .. })) => {
            return JobReply::Sanlock(rv::SANLK_LEADER_CHECKSUM, 0, fallback)
        }
        Ok(Err(_)) => return JobReply::Sanlock(rv::SANLK_LEADER_MAGIC, 0, fallback),
        Err(e) => return JobReply::Sanlock(direct_rv(&e), 0, fallback),
    };
    // A lockspace read wants delta leases, a resource read a paxos lease: anything else (a
    // cleared lease too) has the wrong magic, as sanlock answers.
    let want = if lockspace {
        tenure_format::leader::DELTA_MAGIC
    } else {
        tenure_format::leader::PAXOS_MAGIC
    };
    if first.magic != want {
        return JobReply::Sanlock(rv::SANLK_LEADER_MAGIC, 0, fallback);
    }
    let Ok(g) = Geometry::from_leader_fields(first.sector_size, first.flags) else {
        return JobReply::Sanlock(rv::SANLK_LEADER_MAGIC, 0, fallback);
    };
    let leader = if lockspace && host_id > 1 {
        let at = offset + g.delta_slot_offset(host_id);
        match d.read(at, g.sector_size_bytes() as usize, LeaderRecord::decode) {
            Ok(Ok(l)) => l,
            Ok(Err(_)) => return JobReply::Sanlock(rv::SANLK_LEADER_MAGIC, 0, fallback),
            Err(e) => return JobReply::Sanlock(direct_rv(&e), 0, fallback),
        }
    } else {
        first
    };
    let (code, data2, payload) = f(&leader, g);
    JobReply::Sanlock(code, data2, payload)
}

/// READ_RESOURCE_OWNERS' checks of the first disk's leader against the request, with
/// sanlock's answers: another lease (a cleared one, delta leases) −223, another lockspace −226,
/// another resource −227, align or sector flags other than the leader's −EINVAL.
fn owners_precheck(r: &w::Resource) -> Result<(), i32> {
    use tenure_format::{Geometry, LeaderRecord};
    let Some(d) = r.disks.first() else {
        return Err(rv::EINVAL);
    };
    let mut dev = direct::DirectDisk::open(
        std::path::Path::new(&d.path),
        tenure_core::dev::Access::Read,
        BackendKind::Sync,
    )
    .map_err(|e| direct_rv(&e))?;
    let leader = match dev.read(d.offset, 4096, LeaderRecord::decode) {
        Ok(Ok(l)) => l,
        // Nothing recognisable: left to the owners read, which refuses it (EINVAL).
        Ok(Err(_)) => return Ok(()),
        Err(e) => return Err(direct_rv(&e)),
    };
    if leader.magic != tenure_format::leader::PAXOS_MAGIC {
        return Err(rv::SANLK_LEADER_MAGIC);
    }
    if !r.lockspace.is_empty() && r.lockspace != leader.space_name.escaped() {
        return Err(rv::SANLK_LEADER_LOCKSPACE);
    }
    if !r.name.is_empty() && r.name != leader.resource_name.escaped() {
        return Err(rv::SANLK_LEADER_RESOURCE);
    }
    let Ok(g) = Geometry::from_leader_fields(leader.sector_size, leader.flags) else {
        return Ok(());
    };
    let on_disk = geometry_flags(g);
    let (asked_sector, asked_align) = (r.flags & 0x300, r.flags & 0xF0);
    if (asked_sector != 0 && asked_sector != on_disk & 0x300)
        || (asked_align != 0 && asked_align != on_disk & 0xF0)
    {
        return Err(rv::EINVAL);
    }
    Ok(())
}

/// Appends one sanlk_state record (80 bytes, the NUL-terminated text, then `bin`).
fn state_record(
    out: &mut Vec<u8>,
    typ: u32,
    data32: u32,
    data64: u64,
    name: &str,
    text: &str,
    bin: &[u8],
) {
    let mut st = vec![0u8; 80];
    st[..4].copy_from_slice(&typ.to_le_bytes());
    st[8..12].copy_from_slice(&data32.to_le_bytes());
    st[16..24].copy_from_slice(&data64.to_le_bytes());
    let nb = name.as_bytes();
    let n = nb.len().min(48);
    st[24..24 + n].copy_from_slice(&nb[..n]);
    let str_len = u32::try_from(text.len() + 1).unwrap_or(u32::MAX);
    st[72..76].copy_from_slice(&str_len.to_le_bytes());
    out.extend(st);
    out.extend(text.as_bytes());
    out.push(0);
    out.extend(bin);
}

/// Splits KILLPATH args on whitespace; `\` escapes a space or backslash.
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Event fds one lockspace keeps (sanlock's limit).
const EVENT_FDS_MAX: usize = 32;

/// The other end of an event fd closed (or it failed).
fn peer_gone(fd: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    !matches!(
        nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK
        ),
        Err(nix::errno::Errno::EAGAIN) | Ok(1..)
    )
}
