//! What one tenured hands to the next on the same host: the lockspaces it renews and the
//! leases its clients hold ([`HostState`], a versioned JSON document). A restart after a crash
//! reads it back from the state file the dead process kept under run_dir
//! ([`STATE_FILE`], brought up to date before any grant is replied and after every renewal,
//! by appending records of what changed: super::journal); a planned
//! upgrade hands it over with the file descriptors.
//!
//! The adoption rule (docs/operations.md "Restart after a crash"), checked by
//! [`HostState::adoptable`] and [`Host::adopt`]: a new process goes on from the state only if
//! - it was written in this boot by a process that is gone, and no other tenured runs;
//! - no lease operation was in flight (the disk may hold a lease nobody knows of) and no
//!   lockspace was lost (a fence was decided);
//! - every lockspace that has leases is still inside its renewal deadline (last successful
//!   renewal + 8T) when it is adopted.
//!
//! Then each lockspace goes on with the same host id and generation (renewed, not re-joined:
//! other hosts see no change), each lease stays with its holder pid (a lease its connection
//! owned is owned by the connection's pid from now on, since the connection died with the
//! process), and a holder that died meanwhile, or whose pid was reused, has its leases
//! released. Otherwise today's rule stands: nothing is adopted, the watchdog fires and nothing
//! is granted until the reset.
//!
//! Invariants: the state never names a lease the disk does not hold for this host in the
//! named generation (it is written after grants and before replies, and in-flight operations
//! block adoption); a parse of any bytes gives a typed error, never a panic.

use serde::{Deserialize, Serialize};
use tenure_core::clock::Time;
use tenure_core::delta::{DeltaConfig, DeltaHandover, HostEvent};
use tenure_core::lockspace::ResourceTarget;
use tenure_core::paxos::Acquired;
use tenure_core::timeouts::Timeouts;
use tenure_format::paxos::Dblock;
use tenure_format::{AlignSize, Geometry, LeaderRecord, LockspaceSpec, Name, SectorSize};

use super::journal::HeadState;
pub use super::journal::{StateJournal, StateWrite};
use super::registry::{ClientKey, Lease, Owner};
use super::{Host, Space};

/// The state file's name under run_dir.
pub const STATE_FILE: &str = "tenured-state.json";
/// What `format` says.
pub const STATE_FORMAT: &str = "tenured-state";
/// The version this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// A hand-over starts only when no lockspace renews within this (crate::upgrade).
pub const HANDOVER_RENEWAL_MARGIN: std::time::Duration = std::time::Duration::from_millis(300);
/// Largest state file read: LEASES_MAX leases of about 1 KiB each (up to 2.5 KiB with a
/// lock value block), and room.
pub const STATE_BYTES_MAX: usize = 64 << 20;

/// Everything a successor needs (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostState {
    /// [`STATE_FORMAT`].
    pub format: String,
    /// [`STATE_VERSION`].
    pub version: u32,
    /// `/proc/sys/kernel/random/boot_id` when written: the monotonic times below are of
    /// that boot only.
    pub boot_id: String,
    /// The writer's pid and its start time (clock ticks since boot; tells pid reuse apart).
    pub pid: i32,
    /// See `pid`.
    pub pid_start_ticks: u64,
    /// When it was written (CLOCK_MONOTONIC, ns).
    pub written_at_ns: u64,
    /// This host's name (hex of its bytes).
    pub host_name_hex: String,
    /// Lease operations in flight when written (they block adoption).
    pub in_flight: Vec<String>,
    /// Lockspaces lost (a fence was decided; they block adoption).
    pub lost: Vec<String>,
    /// Joined lockspaces.
    pub spaces: Vec<SpaceState>,
    /// Leases held.
    pub leases: Vec<LeaseState>,
}

/// A joined lockspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceState {
    /// Its name (hex of its bytes).
    pub name_hex: String,
    /// Our host id.
    pub host_id: u64,
    /// Where its area is.
    pub path: String,
    /// Its offset.
    pub offset: u64,
    /// Area sector size (512 or 4096).
    pub sector_size: u32,
    /// Area size in bytes.
    pub align_bytes: u64,
    /// Our io_timeout.
    pub io_timeout_s: u16,
    /// W assumed for the other hosts.
    pub other_hosts_fire_timeout_s: u32,
    /// Our slot as last written (the 200-byte leader record, hex; its checksum as stored).
    pub slot_hex: String,
    /// Its checksum field as held in memory.
    pub slot_checksum: u32,
    /// Start of the last successful renewal (CLOCK_MONOTONIC, ns).
    pub last_renewal_ns: u64,
    /// Highest timestamp written.
    pub max_written_ts: u64,
    /// The host event published: generation, event, data.
    pub event: [u64; 3],
    /// Marked used.
    pub used: bool,
    /// Marked used while orphans exist.
    pub used_by_orphans: bool,
}

/// Who a lease is released for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OwnerState {
    /// A connection (by its serial; handed over with its fd in an upgrade).
    Conn {
        /// The connection's serial.
        serial: u64,
    },
    /// A pid.
    Pid,
    /// An orphan.
    Orphan,
}

/// A lease held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseState {
    /// The writer's journal id of the lease: the state file's later records name it by
    /// this (0: none; ids are the writer's, a successor gives its own).
    #[serde(default)]
    pub id: u64,
    /// Lockspace name (hex).
    pub space_hex: String,
    /// Resource name (hex).
    pub resource_hex: String,
    /// Its first disk, as the client named it.
    pub path: String,
    /// Its offset.
    pub offset: u64,
    /// Further disks.
    pub mirrors: Vec<(String, u64)>,
    /// Area sector size.
    pub sector_size: u32,
    /// Area size.
    pub align_bytes: u64,
    /// Lease version.
    pub lver: u64,
    /// The leader committed (200 bytes, hex).
    pub leader_hex: String,
    /// Its checksum field as held.
    pub leader_checksum: u32,
    /// Our dblock as last written (hex of its 64 bytes).
    pub dblock_hex: String,
    /// Its checksum field as held.
    pub dblock_checksum: u32,
    /// Ballots the acquire ran.
    pub ballots: u32,
    /// Held shared.
    pub shared: bool,
    /// The LVB read at acquire (hex).
    pub lvb_hex: Option<String>,
    /// Who it is released for.
    pub owner: OwnerState,
    /// The holder pid (0 for an orphan).
    pub pid: i32,
    /// The holder's start time (0 for an orphan or when unknown).
    pub pid_start_ticks: u64,
    /// Its kill path.
    pub kill_path: Option<(String, Vec<String>)>,
    /// sanlock RESTRICT bits of its holder.
    pub restrict: u32,
    /// The client's name.
    pub client_name: String,
    /// When granted (wall clock, ms).
    pub acquired_unix_ms: u64,
    /// LVB set, to be written at release (hex).
    pub lvb_to_write_hex: Option<String>,
    /// Kept as an orphan when its holder goes.
    pub persistent: bool,
    /// The name its release gives the freed leader (hex).
    pub rename_to_hex: Option<String>,
}

/// Why a state cannot be read or adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not JSON of this shape.
    #[error("the state is not readable: {0}")]
    Parse(String),
    /// Another format or version.
    #[error("the state is {format} version {version}; this build reads {STATE_FORMAT} version {STATE_VERSION}")]
    Version {
        /// Its format.
        format: String,
        /// Its version.
        version: u32,
    },
    /// A field is out of range or damaged.
    #[error("the state is damaged: {0}")]
    Damaged(String),
    /// The adoption rule refuses it.
    #[error("not adopted: {0}")]
    Refused(String),
    /// Its writer still runs (another tenured): it is that one's, not to be touched.
    #[error("its writer, pid {0}, is still running")]
    WriterRunning(i32),
}

fn hex(b: &[u8]) -> String {
    super::hex(b)
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, StateError> {
    super::unhex(s).map_err(|e| StateError::Damaged(format!("{what}: {e}")))
}

fn name(what: &str, s: &str) -> Result<Name, StateError> {
    Name::from_slice(&unhex(what, s)?).map_err(|e| StateError::Damaged(format!("{what}: {e}")))
}

fn geometry(sector: u32, align: u64) -> Result<Geometry, StateError> {
    let s = SectorSize::from_bytes(u64::from(sector))
        .map_err(|e| StateError::Damaged(e.to_string()))?;
    let a = AlignSize::from_bytes(align).map_err(|e| StateError::Damaged(e.to_string()))?;
    Geometry::new(s, a).map_err(|e| StateError::Damaged(e.to_string()))
}

fn leader(what: &str, s: &str, checksum: u32) -> Result<LeaderRecord, StateError> {
    let b = unhex(what, s)?;
    let r = LeaderRecord::decode(&b).map_err(|e| StateError::Damaged(format!("{what}: {e}")))?;
    Ok(LeaderRecord { checksum, ..r })
}

fn dblock(s: &str, checksum: u32) -> Result<Dblock, StateError> {
    let b = unhex("dblock", s)?;
    let d = Dblock::decode(&b).map_err(|e| StateError::Damaged(format!("dblock: {e}")))?;
    Ok(Dblock { checksum, ..d })
}

fn encode_leader(r: &LeaderRecord) -> String {
    let mut b = vec![0u8; 512];
    r.encode_into(&mut b);
    hex(&b[..200])
}

fn encode_dblock(d: &Dblock) -> String {
    let mut b = vec![0u8; 512];
    d.encode_into(&mut b);
    hex(&b[..64])
}

/// Start time of `pid` in clock ticks since boot, if it runs.
pub fn pid_start_ticks(pid: i32) -> Option<u64> {
    tenure_watchdog::marker::pid_start_ticks(pid)
}

impl HostState {
    /// Parses a state file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() > STATE_BYTES_MAX {
            return Err(StateError::Damaged(format!(
                "{} bytes, more than the {STATE_BYTES_MAX} a state can have",
                bytes.len()
            )));
        }
        // The document, then the journal's records (super::journal), one per line.
        let (doc, records) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (bytes, &[][..]),
        };
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head =
            serde_json::from_slice(doc).map_err(|e| StateError::Parse(e.to_string()))?;
        if head.format != STATE_FORMAT || head.version != STATE_VERSION {
            return Err(StateError::Version {
                format: head.format,
                version: head.version,
            });
        }
        let mut st: HostState =
            serde_json::from_slice(doc).map_err(|e| StateError::Parse(e.to_string()))?;
        super::journal::replay(&mut st, records)?;
        Ok(st)
    }

    /// Every lease area the state names, with the geometry recorded for it (areas whose
    /// recorded geometry is invalid are left out: the adoption refuses them later).
    pub fn areas(&self) -> Vec<(std::path::PathBuf, u64, Geometry)> {
        let mut v = Vec::new();
        for s in &self.spaces {
            if let Ok(g) = geometry(s.sector_size, s.align_bytes) {
                v.push((std::path::PathBuf::from(&s.path), s.offset, g));
            }
        }
        for l in &self.leases {
            if let Ok(g) = geometry(l.sector_size, l.align_bytes) {
                v.push((std::path::PathBuf::from(&l.path), l.offset, g));
                for (p, o) in &l.mirrors {
                    v.push((std::path::PathBuf::from(p), *o, g));
                }
            }
        }
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        v
    }

    /// The document's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The parts of the adoption rule that need no engine: this boot, a writer that is gone,
    /// nothing in flight, nothing lost. `boot_id` is this boot's.
    pub fn adoptable(&self, boot_id: &str) -> Result<(), StateError> {
        if self.boot_id != boot_id {
            return Err(StateError::Refused(format!(
                "written in another boot ({})",
                self.boot_id
            )));
        }
        if pid_start_ticks(self.pid) == Some(self.pid_start_ticks) {
            return Err(StateError::WriterRunning(self.pid));
        }
        if !self.in_flight.is_empty() {
            return Err(StateError::Refused(format!(
                "lease operations were in flight when it was written ({}): the disk may hold leases nobody knows of",
                self.in_flight.join(", ")
            )));
        }
        if !self.lost.is_empty() {
            return Err(StateError::Refused(format!(
                "lockspaces were lost (a fence was decided): {}",
                self.lost.join(", ")
            )));
        }
        Ok(())
    }
}

/// What an adoption did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Adopted {
    /// Lockspaces going on, with their generations.
    pub spaces: Vec<(String, u64)>,
    /// Lockspaces without leases found past their deadline: forgotten.
    pub dropped_spaces: Vec<String>,
    /// Leases kept.
    pub leases: usize,
    /// Leases of holders that died meanwhile (or whose pid was reused): released.
    pub released: usize,
}

impl Host {
    /// A number that changes whenever what [`Host::state`] returns may have changed, apart
    /// from the writer's identity and time: the state file is rewritten when it moves.
    pub fn state_epoch(&self) -> u64 {
        self.epoch.wrapping_add(self.reg.changes())
    }

    /// Nothing is in flight that a hand-over to a successor would cut (crate::upgrade): no
    /// lease operation, waiting command or removal; every lockspace joined, not lost, not
    /// leaving, with no I/O of its own in flight. The reason otherwise.
    pub fn quiescent(&self) -> Result<(), String> {
        if self.stopping {
            return Err("tenured is stopping".into());
        }
        if !self.pending.is_empty() || self.set.ops_in_flight() > 0 {
            return Err(format!(
                "{} lease operations in flight",
                self.pending.len().max(self.set.ops_in_flight())
            ));
        }
        if !self.waiting.is_empty() {
            return Err(format!(
                "{} requests wait for a device probe",
                self.waiting.len()
            ));
        }
        if !self.removals.is_empty() {
            return Err("a lockspace removal is killing holders".into());
        }
        for s in &self.spaces {
            let joined = matches!(
                self.set.state(s.id),
                Some(tenure_core::lockspace::LockspaceState::Joined { .. })
            );
            if !joined || s.lost.is_some() || self.set.is_leaving(s.id) {
                return Err(format!(
                    "lockspace {} is not simply joined (joining, leaving or lost)",
                    s.name
                ));
            }
            if self.set.delta_io_in_flight(s.id) {
                return Err(format!("lockspace {} is renewing", s.name));
            }
        }
        Ok(())
    }

    /// A lockspace renews within [`HANDOVER_RENEWAL_MARGIN`] (or is overdue): a hand-over
    /// waits until it renewed, so none is made late by it. Its name then.
    pub fn renews_soon(&self) -> Option<String> {
        self.spaces.iter().find_map(|s| {
            let (h, cfg) = (self.set.handover(s.id)?, self.set.config(s.id)?);
            let due = h
                .last_renewal
                .saturating_add(cfg.timeouts.renewal_interval());
            (due.saturating_since(self.now) < HANDOVER_RENEWAL_MARGIN).then(|| s.name.clone())
        })
    }

    /// Stops supervision's decisions for a hand-over (see [`super::Supervision::freeze`]).
    pub fn freeze_supervision(&mut self) -> Result<Option<std::os::fd::OwnedFd>, String> {
        self.sup.freeze()
    }

    /// Resumes them after a failed hand-over.
    pub fn thaw_supervision(&mut self) {
        self.sup.thaw();
    }

    /// The state a successor needs (see the module docs). `boot_id`, `pid` and
    /// `pid_start_ticks` identify the writer; `ticks(pid)` is a holder's start time (0 when
    /// unknown).
    pub fn state(
        &self,
        now: Time,
        boot_id: &str,
        pid: i32,
        pid_start_ticks: u64,
        ticks: &mut dyn FnMut(i32) -> u64,
    ) -> HostState {
        self.state_and_keys(now, boot_id, pid, pid_start_ticks, ticks)
            .0
    }

    /// [`Host::state`], with the key of each lockspace in it (for [`StateJournal`]).
    fn state_and_keys(
        &self,
        now: Time,
        boot_id: &str,
        pid: i32,
        pid_start_ticks: u64,
        ticks: &mut dyn FnMut(i32) -> u64,
    ) -> (HostState, Vec<(String, super::journal::SpaceKey)>) {
        let head = self.state_head(now);
        let (lost, changes) = self.space_states_changed(None);
        let (mut spaces, mut keys) = (Vec::new(), Vec::new());
        for (name, key, st) in changes {
            if let Some(st) = st {
                spaces.push(st);
                keys.push((name, key));
            }
        }
        let leases = self
            .reg
            .iter()
            .filter(|l| l.joining.is_none())
            .map(|l| self.lease_state(l, ticks))
            .collect();
        let st = HostState {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            boot_id: boot_id.into(),
            pid,
            pid_start_ticks,
            written_at_ns: head.written_at_ns,
            host_name_hex: hex(self.cfg.host_name.as_bytes()),
            in_flight: head.in_flight,
            lost,
            spaces,
            leases,
        };
        (st, keys)
    }

    /// What the state file should get now (see [`StateJournal`]): the whole state when the
    /// file has none yet (or should be compacted), else records of what changed since the
    /// last write. Either way the file then reads back as [`Host::state`] would say.
    pub fn state_write(
        &mut self,
        now: Time,
        boot_id: &str,
        pid: i32,
        pid_start_ticks: u64,
        ticks: &mut dyn FnMut(i32) -> u64,
        j: &mut StateJournal,
    ) -> StateWrite {
        let touched = self.reg.take_touched();
        if j.wants_whole() {
            let (st, keys) = self.state_and_keys(now, boot_id, pid, pid_start_ticks, ticks);
            return StateWrite::Whole(j.whole(&st, keys));
        }
        let head = self.state_head(now);
        let (lost, spaces) = self.space_states_changed(Some(j));
        let mut leases = Vec::new();
        if !touched.is_empty() {
            for l in self.reg.iter() {
                if touched.contains(&l.journal_id) && l.joining.is_none() {
                    leases.push(self.lease_state(l, ticks));
                }
            }
        }
        StateWrite::Append(j.append(head, lost, spaces, touched, leases))
    }

    /// The head of the state: when, and the operations in flight.
    fn state_head(&self, now: Time) -> HeadState {
        let mut in_flight: Vec<String> = self
            .reg
            .claims()
            .in_flight_all()
            .into_iter()
            .map(|(k, op)| format!("{op:?} of {}:{}", k.space, k.name.escaped()))
            .collect();
        let others = self.pending.len().saturating_sub(in_flight.len());
        if others > 0 {
            in_flight.push(format!("{others} other lease operations"));
        }
        if !self.removals.is_empty() {
            in_flight.push("a lockspace removal killing holders".into());
        }
        HeadState {
            written_at_ns: now.as_nanos(),
            in_flight,
        }
    }

    /// The lockspaces lost, and those joined: each by its name (hex) and key, with its state
    /// when it changed since `j` last wrote it (encoded only then: a renewal moves one
    /// lockspace, not all). Without `j`, every state.
    fn space_states_changed(
        &self,
        j: Option<&StateJournal>,
    ) -> (Vec<String>, Vec<super::journal::SpaceChange>) {
        let mut lost = Vec::new();
        let mut spaces = Vec::new();
        for s in &self.spaces {
            if s.lost.is_some() {
                if !s.cleared {
                    lost.push(s.name.clone());
                }
                continue;
            }
            let Some(h) = self.set.handover(s.id) else {
                continue;
            };
            if self.set.config(s.id).is_none() {
                continue;
            }
            let name_hex = hex(s.spec.name.as_bytes());
            let key = (s.id, h, s.used, s.used_by_orphans);
            let state = match j {
                Some(j) if j.space_unchanged(&name_hex, &key) => None,
                _ => self.recorded_space(s),
            };
            spaces.push((name_hex, key, state));
        }
        (lost, spaces)
    }

    /// One joined lockspace as the state records it.
    fn recorded_space(&self, s: &Space) -> Option<SpaceState> {
        let (h, cfg) = (self.set.handover(s.id)?, self.set.config(s.id)?);
        Some(SpaceState {
            name_hex: hex(s.spec.name.as_bytes()),
            host_id: s.spec.host_id,
            path: s.spec.disk.path.clone(),
            offset: s.spec.disk.offset,
            sector_size: cfg.geometry.sector_size_bytes(),
            align_bytes: cfg.geometry.area_bytes(),
            io_timeout_s: cfg.timeouts.io_timeout_s,
            other_hosts_fire_timeout_s: cfg.timeouts.watchdog_fire_s,
            slot_hex: encode_leader(&h.last_written),
            slot_checksum: h.last_written.checksum,
            last_renewal_ns: h.last_renewal.as_nanos(),
            max_written_ts: h.max_written_ts,
            event: [h.published.generation, h.published.event, h.published.data],
            used: s.used,
            used_by_orphans: s.used_by_orphans,
        })
    }

    /// One lease as the state records it.
    fn lease_state(&self, l: &Lease, ticks: &mut dyn FnMut(i32) -> u64) -> LeaseState {
        let (kill_path, restrict, owner) = match l.owner {
            Owner::Conn(k) => {
                let c = self.clients.get(&k);
                (
                    c.and_then(|c| c.kill_path.clone()),
                    c.map_or(0, |c| c.restrict),
                    OwnerState::Conn { serial: k.serial },
                )
            }
            Owner::Pid(_) => (None, 0, OwnerState::Pid),
            Owner::Orphan => (None, 0, OwnerState::Orphan),
        };
        let a = &l.held.acquired;
        let g = l.held.target.geometry;
        LeaseState {
            id: l.journal_id,
            space_hex: hex(l.held.cfg.space_name.as_bytes()),
            resource_hex: hex(l.resource.as_bytes()),
            path: l.location.0.clone(),
            offset: l.location.1,
            mirrors: l.mirrors.clone(),
            sector_size: g.sector_size_bytes(),
            align_bytes: g.area_bytes(),
            lver: a.lver,
            leader_hex: encode_leader(&a.leader),
            leader_checksum: a.leader.checksum,
            dblock_hex: encode_dblock(&a.dblock),
            dblock_checksum: a.dblock.checksum,
            ballots: a.ballots,
            shared: a.shared,
            lvb_hex: a.lvb.as_deref().map(hex),
            owner,
            pid: l.pid,
            pid_start_ticks: if l.pid > 0 { ticks(l.pid) } else { 0 },
            kill_path,
            restrict,
            client_name: l.client_name.clone(),
            acquired_unix_ms: l.acquired_unix_ms,
            lvb_to_write_hex: l.lvb_to_write.as_deref().map(hex),
            persistent: l.persistent,
            rename_to_hex: l.rename_to.map(|n| hex(n.as_bytes())),
        }
    }

    /// Goes on from `state` (see the module docs): a fresh host, with every device the state
    /// names registered ([`Host::add_known_disk`]), adopts its lockspaces and leases at `now`.
    /// `alive(pid, start_ticks)` says whether a holder still runs (pid reuse told apart by
    /// its start time; 0: unknown, the pid alone). A connection-owned lease is owned by its
    /// pid from now on unless `conns` maps its serial to a connection handed over.
    ///
    /// Everything is checked before anything is done: a refusal leaves the host as it was.
    /// An error from supervision after that ([`StateError::Refused`] naming it) leaves it
    /// half adopted: the caller must not serve (the watchdog decides, as without adoption).
    pub fn adopt(
        &mut self,
        now: Time,
        state: &HostState,
        alive: &dyn Fn(i32, u64) -> bool,
        conns: &dyn Fn(u64) -> Option<ClientKey>,
    ) -> Result<Adopted, StateError> {
        let r = self.adopt_checked(now, state, alive, conns);
        if r.is_err() && self.spaces.is_empty() {
            self.sup.forget_predecessor();
        }
        r
    }

    fn adopt_checked(
        &mut self,
        now: Time,
        state: &HostState,
        alive: &dyn Fn(i32, u64) -> bool,
        conns: &dyn Fn(u64) -> Option<ClientKey>,
    ) -> Result<Adopted, StateError> {
        self.at(now);
        if !self.spaces.is_empty() || !self.reg.is_empty() {
            return Err(StateError::Refused(
                "this tenured has lockspaces already".into(),
            ));
        }
        if hex(self.cfg.host_name.as_bytes()) != state.host_name_hex {
            return Err(StateError::Refused(format!(
                "written by host {:?}, this is {:?}",
                name("host name", &state.host_name_hex)?.escaped(),
                self.cfg.host_name.escaped()
            )));
        }
        struct SpacePlan {
            spec: LockspaceSpec,
            cfg: DeltaConfig,
            handover: DeltaHandover,
            used: bool,
            used_by_orphans: bool,
        }
        struct LeasePlan {
            space: String,
            target: ResourceTarget,
            acquired: Acquired,
            lease_of: LeaseState,
            lvb_to_write: Option<Vec<u8>>,
            rename_to: Option<Name>,
        }
        let disk_of = |h: &Host, p: &str| h.disks.get(std::path::Path::new(p)).copied();
        let mut with_leases = std::collections::HashSet::new();
        for l in &state.leases {
            with_leases.insert(l.space_hex.as_str());
        }
        let mut report = Adopted::default();
        let mut plans: Vec<SpacePlan> = Vec::new();
        for s in &state.spaces {
            let space_name = name("lockspace name", &s.name_hex)?;
            let g = geometry(s.sector_size, s.align_bytes)?;
            if s.host_id == 0 || s.host_id > g.hosts_max() || s.io_timeout_s == 0 {
                return Err(StateError::Damaged(format!(
                    "lockspace {}: host id {}, io_timeout {}",
                    space_name.escaped(),
                    s.host_id,
                    s.io_timeout_s
                )));
            }
            if plans.iter().any(|p| p.spec.name == space_name) {
                return Err(StateError::Damaged(format!(
                    "lockspace {} twice",
                    space_name.escaped()
                )));
            }
            let timeouts = Timeouts::new(s.io_timeout_s, s.other_hosts_fire_timeout_s);
            let last_renewal = Time::from_nanos(s.last_renewal_ns);
            if now >= last_renewal.saturating_add(timeouts.renewal_fail()) {
                if with_leases.contains(s.name_hex.as_str()) {
                    return Err(StateError::Refused(format!(
                        "lockspace {} has leases and its last renewal is {} ms old, past its renewal deadline ({} ms)",
                        space_name.escaped(),
                        now.saturating_since(last_renewal).as_millis(),
                        timeouts.renewal_fail().as_millis()
                    )));
                }
                report.dropped_spaces.push(space_name.escaped());
                continue;
            }
            if disk_of(self, &s.path).is_none() {
                return Err(StateError::Refused(format!(
                    "device {} of lockspace {} is not open",
                    s.path,
                    space_name.escaped()
                )));
            }
            plans.push(SpacePlan {
                spec: LockspaceSpec {
                    name: space_name,
                    host_id: s.host_id,
                    disk: tenure_format::DiskLocation {
                        path: s.path.clone(),
                        offset: s.offset,
                    },
                },
                cfg: DeltaConfig {
                    space_name,
                    host_id: s.host_id,
                    host_name: self.cfg.host_name,
                    geometry: g,
                    area_offset: s.offset,
                    timeouts,
                },
                handover: DeltaHandover {
                    last_written: leader("slot", &s.slot_hex, s.slot_checksum)?,
                    last_renewal,
                    max_written_ts: s.max_written_ts,
                    published: HostEvent {
                        generation: s.event[0],
                        event: s.event[1],
                        data: s.event[2],
                    },
                },
                used: s.used,
                used_by_orphans: s.used_by_orphans,
            });
        }
        let mut lease_plans = Vec::new();
        for l in &state.leases {
            let space = name("lockspace name", &l.space_hex)?;
            let Some(p) = plans.iter().find(|p| p.spec.name == space) else {
                return Err(StateError::Damaged(format!(
                    "a lease of lockspace {}, which is not joined in the state",
                    space.escaped()
                )));
            };
            let resource = name("resource name", &l.resource_hex)?;
            let Some(disk) = disk_of(self, &l.path) else {
                return Err(StateError::Refused(format!(
                    "device {} is not open",
                    l.path
                )));
            };
            let mut mirrors = Vec::new();
            for (path, o) in &l.mirrors {
                let Some(d) = disk_of(self, path) else {
                    return Err(StateError::Refused(format!("device {path} is not open")));
                };
                mirrors.push((d, *o));
            }
            let acquired = Acquired {
                lver: l.lver,
                leader: leader("leader", &l.leader_hex, l.leader_checksum)?,
                dblock: dblock(&l.dblock_hex, l.dblock_checksum)?,
                ballots: l.ballots,
                lvb: l.lvb_hex.as_deref().map(|h| unhex("lvb", h)).transpose()?,
                shared: l.shared,
            };
            let (host_id, generation) = (p.spec.host_id, p.handover.last_written.owner_generation);
            // Shared: our mode block is what is ours (leader and dblock may be anyone's).
            let ours = acquired.shared
                || (acquired.leader.owner_id == host_id
                    && acquired.leader.owner_generation == generation);
            if !ours || (l.owner != OwnerState::Orphan && l.pid <= 0) {
                return Err(StateError::Damaged(format!(
                    "lease {}:{} is not held by this host's generation {generation} (or has no holder)",
                    space.escaped(),
                    resource.escaped()
                )));
            }
            lease_plans.push(LeasePlan {
                space: space.escaped(),
                target: ResourceTarget {
                    name: resource,
                    disk,
                    area_offset: l.offset,
                    geometry: geometry(l.sector_size, l.align_bytes)?,
                    expect_lver: None,
                    mirrors,
                },
                acquired,
                lease_of: l.clone(),
                lvb_to_write: l
                    .lvb_to_write_hex
                    .as_deref()
                    .map(|h| unhex("lvb", h))
                    .transpose()?,
                rename_to: l
                    .rename_to_hex
                    .as_deref()
                    .map(|h| name("rename", h))
                    .transpose()?,
            });
        }
        // Checked: now do it.
        for p in plans {
            let name = p.spec.name.escaped();
            let disk = self.disks[std::path::Path::new(&p.spec.disk.path)];
            self.sup
                .add_space(&name, p.spec.host_id)
                .map_err(|e| StateError::Refused(format!("supervision of {name}: {e}")))?;
            let generation = p.handover.last_written.owner_generation;
            let id = self
                .set
                .adopt(p.cfg, disk, p.handover, now)
                .map_err(|e| StateError::Refused(format!("lockspace {name}: {e}")))?;
            let deadline = self.set.renewal_deadline(id).unwrap_or(now);
            self.sup
                .joined(&name, generation, deadline)
                .map_err(|e| StateError::Refused(format!("supervision of {name}: {e}")))?;
            tracing::info!(lockspace = %name, generation, host_id = p.spec.host_id, "adopted from the state of the previous tenured (not re-joined)");
            self.spaces.push(Space {
                name: name.clone(),
                id,
                spec: p.spec,
                join_waiters: Vec::new(),
                leave_waiters: Vec::new(),
                lost: None,
                cleared: false,
                used: p.used,
                used_by_orphans: p.used_by_orphans,
                join_failed: None,
            });
            report.spaces.push((name, generation));
        }
        let mut gone = Vec::new();
        for lp in lease_plans {
            let l = &lp.lease_of;
            let i = self.space_index(&lp.space).expect("adopted above");
            let id = self.spaces[i].id;
            let held = self
                .set
                .adopt_held(id, lp.target, lp.acquired)
                .ok_or_else(|| StateError::Refused("a lease checked as ours was refused".into()))?;
            let owner = match l.owner {
                OwnerState::Orphan => Owner::Orphan,
                OwnerState::Pid => Owner::Pid(l.pid),
                OwnerState::Conn { serial } => conns(serial).map_or(Owner::Pid(l.pid), Owner::Conn),
            };
            let pid = if owner == Owner::Orphan { 0 } else { l.pid };
            let mut lease = Lease::new(
                &lp.space,
                (l.path.clone(), l.offset),
                held,
                owner,
                pid,
                &l.client_name,
                l.acquired_unix_ms,
            );
            lease.mirrors = l.mirrors.clone();
            lease.lvb_to_write = lp.lvb_to_write;
            lease.persistent = l.persistent;
            lease.rename_to = lp.rename_to;
            if owner == Owner::Orphan {
                self.reg.push(lease);
                report.leases += 1;
                continue;
            }
            if !alive(pid, l.pid_start_ticks) {
                tracing::info!(lockspace = %lp.space, resource = %lease.resource.escaped(), pid, "holder died while no tenured ran: releasing its lease");
                gone.push(lease);
                continue;
            }
            let supervised = self
                .reg
                .iter()
                .any(|x| x.pid == pid && x.space == lp.space && x.owner != Owner::Orphan);
            if !supervised {
                if let Err(e) = self
                    .sup
                    .add_holder(&lp.space, pid, l.kill_path.clone(), l.restrict)
                {
                    tracing::info!(pid, error = %e, "adopted holder gone: releasing its lease");
                    gone.push(lease);
                    continue;
                }
            }
            if let Owner::Pid(p) = owner {
                if !self.reg.iter().any(|x| x.owner == Owner::Pid(p)) {
                    self.out.push_back(super::Output::WatchPid(p));
                }
            }
            tracing::info!(lockspace = %lp.space, resource = %lease.resource.escaped(), lver = lease.held.acquired.lver, pid, "lease adopted");
            self.reg.push(lease);
            report.leases += 1;
        }
        let names: Vec<String> = report.spaces.iter().map(|(n, _)| n.clone()).collect();
        for n in &names {
            self.refresh_used(n);
        }
        report.released = gone.len();
        if !gone.is_empty() {
            // As when a holder exits: released (persistent ones stay as orphans).
            let _ = self.let_go(now, None, gone);
        }
        self.epoch = self.epoch.wrapping_add(1);
        Ok(report)
    }
}
