//! Resource index requests (native `rindex`, sanlock's FORMAT/UPDATE/LOOKUP/REBUILD_RINDEX and
//! CREATE/DELETE_RESOURCE): plain disk operations run on helper threads; create, delete and
//! rebuild first acquire the index's private lease (`rindex_lease`) through the joined
//! lockspace's paxos engine, run the disk operation, then release it.
//!
//! Invariant: the private lease is released whatever the disk operation's outcome; a client
//! that goes away meanwhile changes nothing but who gets the reply.

use std::path::Path;

use tenure_core::direct::rindex::{self, Rindex, RindexError};
use tenure_core::direct::{BackendKind, FormatOptions};
use tenure_core::lockspace::{HeldResource, ResourceTarget};
use tenure_format::{AlignSize, Name, RindexSpec, SectorSize};

use super::{err, ClientKey, Deferred, FrontOp, JobReply, LockspaceState, Server};
use crate::host::admission::InFlight;
use crate::host::command::RindexCommand;
use crate::host::reply::{Done, Reply, RindexDone};
use crate::proto::{Details, ErrorCode, ErrorReply, RindexAction};
use tenure_core::lockspace::{OpId, OpOutcome};

/// One rindex request, parsed.
#[derive(Clone, Debug)]
pub(super) struct RindexJob {
    spec: RindexSpec,
    action: RindexAction,
    name: Option<Name>,
    offset: u64,
    num_hosts: u64,
    max_resources: u32,
    sector_size: Option<u32>,
    align_mb: Option<u32>,
}

fn rindex_error(e: &RindexError) -> Reply {
    let code = match e {
        RindexError::Direct(_) => ErrorCode::Io,
        RindexError::Magic { .. } | RindexError::Version { .. } | RindexError::Lockspace { .. } => {
            ErrorCode::Corrupt
        }
        RindexError::Offset { .. } | RindexError::Diff { .. } | RindexError::Usage(_) => {
            ErrorCode::BadRequest
        }
        RindexError::NotFound(_) => ErrorCode::NotFound,
        RindexError::Full(_) => ErrorCode::Full,
    };
    Reply::Error(ErrorReply {
        code,
        message: e.to_string(),
        details: Some(Details {
            sanlock_result: Some(e.sanlock_result()),
            ..Details::default()
        }),
    })
}

impl RindexJob {
    /// Runs the disk part (helper thread). The private lease, when needed, is held.
    fn run(&self) -> Reply {
        let path = Path::new(&self.spec.disk.path);
        let rx = self.spec.disk.offset;
        let ls = self.spec.lockspace;
        if self.action == RindexAction::Format {
            let sector_size = match self
                .sector_size
                .map(|s| SectorSize::from_bytes(u64::from(s)))
            {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => return rindex_error(&RindexError::Usage(e.to_string())),
            };
            let align = match self
                .align_mb
                .map(|m| AlignSize::from_bytes(u64::from(m) << 20))
            {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(e)) => return rindex_error(&RindexError::Usage(e.to_string())),
            };
            let opts = FormatOptions {
                sector_size,
                align,
                force: true,
                backend: BackendKind::Auto,
            };
            return match rindex::format(path, rx, ls, self.max_resources, opts) {
                Ok(r) => Reply::Done(Done::Rindex(RindexDone::Formatted(r.geometry))),
                Err(e) => rindex_error(&e),
            };
        }
        let mut ix = match Rindex::open(path, rx, &ls, BackendKind::Auto) {
            Ok(ix) => ix,
            Err(e) => return rindex_error(&e),
        };
        let name = self.name;
        let need_name =
            || name.ok_or_else(|| RindexError::Usage("this action needs a resource name".into()));
        let r =
            match self.action {
                RindexAction::Format => unreachable!("handled above"),
                RindexAction::Lookup => {
                    ix.lookup(name.as_ref(), self.offset)
                        .map(|e| RindexDone::Entry {
                            name: e.name.escaped(),
                            offset: e.offset,
                        })
                }
                RindexAction::Add => need_name()
                    .and_then(|n| ix.add(&n, self.offset).map(|()| n))
                    .map(|n| RindexDone::Entry {
                        name: n.escaped(),
                        offset: self.offset,
                    }),
                RindexAction::Remove => ix
                    .remove(self.offset)
                    .map(|()| RindexDone::Removed(self.offset)),
                RindexAction::Create => need_name()
                    .and_then(|n| ix.create(&n, self.num_hosts).map(|o| (n, o)))
                    .map(|(n, o)| RindexDone::Created {
                        name: n.escaped(),
                        offset: o,
                    }),
                RindexAction::Delete => need_name()
                    .and_then(|n| ix.delete(&n).map(|o| (n, o)))
                    .map(|(n, o)| RindexDone::Deleted {
                        name: n.escaped(),
                        offset: o,
                    }),
                RindexAction::Rebuild => ix.rebuild().map(|n| RindexDone::Rebuilt(n as u64)),
            };
        match r {
            Ok(v) => Reply::Done(Done::Rindex(v)),
            Err(e) => rindex_error(&e),
        }
    }
}

impl Server {
    /// A rindex request (native or translated from sanlock).
    pub(super) fn rindex(&mut self, k: ClientKey, req: RindexCommand) -> Option<Reply> {
        let (action, no_lockspace) = (req.action, req.no_lockspace);
        let job = RindexJob {
            spec: req.spec.clone(),
            action,
            name: req.name,
            offset: req.offset,
            num_hosts: req.num_hosts,
            max_resources: req.max_resources,
            sector_size: req.sector_size,
            align_mb: req.align_mb,
        };
        let locked = matches!(
            action,
            RindexAction::Create | RindexAction::Delete | RindexAction::Rebuild
        ) && !no_lockspace;
        // Everything but a format works through the joined lockspace of the index (a lookup
        // or update too, as sanlock 3.8.5 answers ENOENT for them before reading anything);
        // the private lease of the locked ones is taken through it.
        let space = job.spec.lockspace.escaped();
        let joined = self.host.spaces().iter().any(|s| {
            s.name == space
                && s.lost.is_none()
                && matches!(
                    self.host.space_state(s),
                    Some(LockspaceState::Joined { .. })
                )
        });
        if !joined && action != RindexAction::Format && !no_lockspace {
            return Some(err(
                ErrorCode::NotFound,
                format!("lockspace {space} is not joined on this host"),
            ));
        }
        if !locked {
            if !self.spawn_job(k, move || JobReply::Native(job.run())) {
                return Some(err(ErrorCode::Full, "too many direct I/Os in progress"));
            }
            return None;
        }
        let key = (
            std::path::PathBuf::from(&job.spec.disk.path),
            job.spec.disk.offset,
        );
        if !self.ensure_probed(std::slice::from_ref(&key)) {
            let c = self.conn(k)?;
            c.deferred = Some(Deferred::Rindex(req));
            return None;
        }
        let geometry = match self.host.area(&key) {
            Some(Ok(i)) => i.geometry,
            Some(Err(e)) => {
                // No index there (-274, as sanlock), or the device cannot be used (-19).
                let (code, result) = if e.starts_with("no lease area") {
                    (ErrorCode::Corrupt, -274)
                } else {
                    (ErrorCode::Io, -libc::ENODEV)
                };
                return Some(Reply::Error(ErrorReply {
                    code,
                    message: format!("resource index at {}:{}: {e}", key.0.display(), key.1),
                    details: Some(Details {
                        sanlock_result: Some(result),
                        ..Details::default()
                    }),
                }));
            }
            None => return Some(err(ErrorCode::Io, "probe failed")),
        };
        let Some(disk) = self.host.disk_of(&key.0) else {
            return Some(err(ErrorCode::Io, "device not open"));
        };
        let target = ResourceTarget {
            name: rindex::lease_name(),
            disk,
            area_offset: key.1 + geometry.area_bytes(),
            geometry,
            expect_lver: None,
            mirrors: Vec::new(),
        };
        // The private lease is a lease like any other: one local operation at a time.
        let now = self.clock.now();
        match self.host.private_acquire(now, &space, target) {
            Ok(id) => {
                self.front_ops.insert(
                    id,
                    FrontOp::Rindex {
                        client: k,
                        space,
                        job: Box::new(job),
                    },
                );
                None
            }
            Err(r) => Some(r),
        }
    }

    /// The private lease is held: run the disk part, then release it.
    pub(super) fn rindex_locked(
        &mut self,
        k: ClientKey,
        space: String,
        job: Box<RindexJob>,
        held: HeldResource,
    ) {
        let claim = space.clone();
        let started = self.spawn_job(k, move || JobReply::RindexDone {
            space,
            held: Box::new(held),
            reply: job.run(),
        });
        if !started {
            self.host
                .private_end(&claim, rindex::lease_name(), InFlight::Acquire);
            tracing::error!("no helper thread for a rindex operation; its private lease stays held until the next one");
            self.reply(k, err(ErrorCode::Full, "too many direct I/Os in progress"));
        }
    }

    /// The disk part ended: release the private lease, then answer.
    pub(super) fn rindex_done(
        &mut self,
        k: ClientKey,
        space: &str,
        held: HeldResource,
        reply: Reply,
    ) {
        // The job's claim (taken with the acquire) ends; the release takes its own.
        self.host
            .private_end(space, rindex::lease_name(), InFlight::Acquire);
        let now = self.clock.now();
        match self.host.private_release(now, space, held) {
            Ok(id) => {
                self.front_ops.insert(
                    id,
                    FrontOp::RindexRelease {
                        client: k,
                        space: space.to_owned(),
                        reply: Box::new(reply),
                    },
                );
            }
            Err(e) => {
                tracing::warn!(lockspace = %space, error = %e, "the resource index's private lease could not be released");
                self.reply(k, reply);
            }
        }
    }

    /// An operation this front end started ended.
    pub(super) fn front_op_done(&mut self, id: OpId, outcome: OpOutcome) {
        let Some(op) = self.front_ops.remove(&id) else {
            return;
        };
        match op {
            FrontOp::Rindex { client, space, job } => {
                // The private lease stays claimed while the index job runs under it (until
                // rindex_done starts its release): no other local operation may take it then.
                let name = rindex::lease_name();
                match outcome {
                    OpOutcome::Acquired(mut held) if !held.is_empty() => {
                        self.rindex_locked(client, space, job, held.remove(0));
                    }
                    OpOutcome::Failed {
                        resource, error, ..
                    } => {
                        self.host.private_end(&space, name, InFlight::Acquire);
                        let r = crate::host::op_error_reply(resource, &error);
                        self.reply(client, r);
                    }
                    _ => {
                        self.host.private_end(&space, name, InFlight::Acquire);
                        self.reply(client, err(ErrorCode::Failed, "internal: rindex lease"));
                    }
                }
            }
            FrontOp::RindexRelease {
                client,
                space,
                reply,
            } => {
                self.host
                    .private_end(&space, rindex::lease_name(), InFlight::Release);
                if let OpOutcome::Failed { error, .. } = &outcome {
                    tracing::warn!(lockspace = %space, error = %error, "the resource index's private lease was not released");
                }
                self.reply(client, *reply);
            }
        }
    }
}
