//! Requests (PROTOCOL.md "Requests", sanlock's REQUEST / EXAMINE): a host that wants a lease
//! held elsewhere writes the lease's request record (a newer lver and a force mode) and sets
//! the owner's bit in its bitmap for 6T; the owner, seeing its bit, reads the request records
//! of its leases and has the holders of an older lver give them up: FORCE kills, GRACEFUL
//! runs the holder's kill path or sends SIGTERM. The decisions are here; the record's reads
//! and writes are the driver's ([`Output::ReadRequests`], [`Output::WriteRequest`]), as are
//! the signals ([`Output::Signal`], [`Output::RunKillPath`]).
//!
//! Invariant: a request only ever ends a holder's use by its process exiting (the lease goes
//! as every lease of an exited holder does); it never releases a lease behind its holder.

use tenure_core::clock::Time;
use tenure_format::paxos::RequestRecord;
use tenure_format::{LeaderRecord, Name, ResourceSpec};

use super::guard::KillSignal;
use super::registry::{ClientKey, Owner};
use super::reply::{Done, Reply};
use super::{err, Host, Output};
use crate::proto::{Details, ErrorCode, ErrorReply};
use crate::sanlock_wire::flags::{RESTRICT_SIGKILL, RESTRICT_SIGTERM};

/// Force modes of a request record.
pub const FORCE: u32 = 1;
/// Graceful: the kill path, or SIGTERM.
pub const GRACEFUL: u32 = 2;

/// sanlock's result for a request older than the lease (SANLK_REQUEST_OLD).
pub const REQUEST_OLD: i32 = -272;

/// A lease whose request record the driver reads (then [`Host::request_record_read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordToRead {
    /// Lockspace.
    pub space: String,
    /// Resource.
    pub resource: Name,
    /// Device path of the lease area.
    pub path: String,
    /// Offset of the lease area.
    pub offset: u64,
}

/// A request record the driver writes: it reads the leader at `offset`, asks
/// [`request_for`] what to write, writes it, and reports with [`Host::request_written`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordToWrite {
    /// Who asked.
    pub client: ClientKey,
    /// Lockspace.
    pub space: String,
    /// Device path of the lease area.
    pub path: String,
    /// Offset of the lease area.
    pub offset: u64,
    /// The lver asked for (`None`: the owner's lver + 1).
    pub lver: Option<u64>,
    /// 0 (clear), [`FORCE`] or [`GRACEFUL`].
    pub force_mode: u32,
}

/// What to write for a request given the lease's leader: the record and the owner to signal
/// (`None`: the lease is free, nothing is written), or sanlock's result ([`REQUEST_OLD`]).
pub fn request_for(
    leader: &LeaderRecord,
    lver: Option<u64>,
    force_mode: u32,
) -> Result<Option<(RequestRecord, Option<u64>)>, i32> {
    if leader.timestamp == 0 && force_mode != 0 {
        return Ok(None);
    }
    let lver = lver.unwrap_or(leader.lver + 1);
    if force_mode != 0 && lver <= leader.lver {
        return Err(REQUEST_OLD);
    }
    let record = RequestRecord {
        lver,
        force_mode,
        ..RequestRecord::FORMATTED
    };
    Ok(Some((record, (force_mode != 0).then_some(leader.owner_id))))
}

impl Host {
    /// Asks for a request of a lease held elsewhere (the lockspace must be joined here: the
    /// owner is told through our bitmap).
    pub(super) fn request(
        &mut self,
        k: ClientKey,
        spec: &ResourceSpec,
        lver: Option<u64>,
        force_mode: u32,
    ) -> Option<Reply> {
        if spec.disks.len() != 1 {
            return Some(err(ErrorCode::BadRequest, "one PATH:OFFSET"));
        }
        let space = spec.lockspace.escaped();
        let joined = self.spaces.iter().any(|s| {
            s.name == space
                && matches!(
                    self.set.state(s.id),
                    Some(tenure_core::lockspace::LockspaceState::Joined { .. })
                )
        });
        if !joined {
            return Some(err(
                ErrorCode::NotJoined,
                format!("lockspace {space} is not joined"),
            ));
        }
        self.out.push_back(Output::WriteRequest(RecordToWrite {
            client: k,
            space,
            path: spec.disks[0].path.clone(),
            offset: spec.disks[0].offset,
            lver,
            force_mode,
        }));
        None
    }

    /// The request record was written (`Ok(Some(owner))`), not needed (`Ok(None)`: the
    /// lease is free), or not written (sanlock's result): the owner's bit is set in our
    /// bitmap of `space` for 6T, and the client is answered.
    pub fn request_written(
        &mut self,
        now: Time,
        client: ClientKey,
        space: &str,
        result: Result<Option<u64>, i32>,
    ) {
        self.at(now);
        let reply = match result {
            Ok(owner) => {
                if let Some(owner) = owner {
                    let t = self
                        .space_index(space)
                        .and_then(|i| self.set.config(self.spaces[i].id))
                        .map_or(self.cfg.io_timeout_s, |c| {
                            u64::from(c.timeouts.io_timeout_s)
                        });
                    // PROTOCOL "Requests": the owner's bit stays set for 6T.
                    let until = now.saturating_add(std::time::Duration::from_secs(6 * t));
                    if self.set_bitmap_bit_until(space, owner, until) {
                        tracing::info!(lockspace = %space, owner, "request written; owner's bit set for 6T");
                    }
                }
                Reply::Done(Done::Requested { owner })
            }
            Err(e) => Reply::Error(ErrorReply {
                code: ErrorCode::Failed,
                message: format!("request failed (sanlock result {e})"),
                details: Some(Details {
                    sanlock_result: Some(e),
                    ..Details::default()
                }),
            }),
        };
        self.reply(client, reply);
    }

    /// Reads the request records of the leases held in `space` (only `resource`, if given):
    /// one read per lease (its local holders share it); not joiners, which hold nothing yet,
    /// nor orphans, which have no process.
    pub(super) fn examine(&mut self, space: &str, resource: Option<Name>) {
        let mut records: Vec<RecordToRead> = Vec::new();
        for l in self.reg.iter().filter(|l| {
            l.space == space
                && l.owner != Owner::Orphan
                && l.joining.is_none()
                && resource.is_none_or(|r| r == l.resource)
        }) {
            if !records.iter().any(|t| t.resource == l.resource) {
                records.push(RecordToRead {
                    space: space.to_owned(),
                    resource: l.resource,
                    path: l.location.0.clone(),
                    offset: l.location.1,
                });
            }
        }
        if !records.is_empty() {
            self.out.push_back(Output::ReadRequests(records));
        }
    }

    /// A request record of a lease we hold was read: every holder of an older lver is asked
    /// to give it up — FORCE: SIGKILL (SIGTERM when it restricted SIGKILL); GRACEFUL: its
    /// kill path, else SIGTERM (SIGKILL when it restricted SIGTERM). The lease goes when the
    /// holder exits.
    pub fn request_record_read(
        &mut self,
        now: Time,
        space: &str,
        resource: Name,
        record: &RequestRecord,
    ) {
        self.at(now);
        if record.force_mode == 0 {
            return;
        }
        let holders: Vec<(i32, Owner)> = self
            .reg
            .iter()
            .filter(|l| l.space == space && l.resource == resource)
            .filter(|l| l.joining.is_none() && l.owner != Owner::Orphan)
            .filter(|l| record.lver > l.held.acquired.lver)
            .map(|l| (l.pid, l.owner))
            .collect();
        for (pid, owner) in holders {
            let (kill_path, restrict) = match owner {
                Owner::Conn(c) => self
                    .clients
                    .get(&c)
                    .map(|c| (c.kill_path.clone(), c.restrict))
                    .unwrap_or((None, 0)),
                Owner::Pid(_) | Owner::Orphan => (None, 0),
            };
            let signal = match (record.force_mode, kill_path) {
                (FORCE, _) if restrict & RESTRICT_SIGKILL != 0 => KillSignal::Term,
                (FORCE, _) => KillSignal::Kill,
                (_, Some((path, args))) => {
                    tracing::warn!(lockspace = %space, resource = %resource.escaped(), pid, kill_path = %path, "graceful request: running the kill path");
                    self.out.push_back(Output::RunKillPath { pid, path, args });
                    continue;
                }
                _ if restrict & RESTRICT_SIGTERM != 0 => KillSignal::Kill,
                _ => KillSignal::Term,
            };
            tracing::warn!(lockspace = %space, resource = %resource.escaped(), pid, request_lver = record.lver, force_mode = record.force_mode, "another host requested this lease: signalling its holder");
            self.out.push_back(Output::Signal { pid, signal });
        }
    }
}
