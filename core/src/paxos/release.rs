//! The release machine: mark our dblock RELEASED (with the LVB first, or a SHARED mode block
//! for a conversion to shared), re-read the leader, and free it unless another host wrote it
//! since.

use super::*;

/// Releasing an exclusive lease: mark our dblock RELEASED, re-read the leader, and free the
/// leader (timestamp 0) unless another host has written it since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaxosRelease {
    cfg: PaxosConfig,
    held: Acquired,
    pending: Option<PaxosIo>,
    io_started: Time,
    sector: Vec<u8>,
    freeing_leader: bool,
    writing_lvb: bool,
    /// Mode block written with our RELEASED dblock (zero, or SHARED for a shared acquire).
    mode: ModeBlock,
    /// Releasing a shared hold: one write of our sector with the mode block zeroed.
    only_dblock: bool,
    result: Option<Result<(), PaxosError>>,
    /// Set when we freed the leader ourselves and both writes landed.
    cache: Option<BallotCache>,
    /// The name the freed leader gets (sanlock's REL_RENAME).
    rename: Option<Name>,
}

impl PaxosRelease {
    /// Its configuration.
    pub(crate) fn config(&self) -> &PaxosConfig {
        &self.cfg
    }

    /// Starts releasing `held` at `now`. A shared hold is released by zeroing our mode
    /// block (our dblock already says RELEASED); an exclusive one by marking our dblock
    /// RELEASED and freeing the leader.
    pub fn new(cfg: PaxosConfig, held: Acquired, now: Time) -> Self {
        let only_dblock = held.shared;
        let mut me = Self::leader_release(cfg, held, ModeBlock::default(), now);
        me.only_dblock = only_dblock;
        me
    }

    /// Converts a lease we hold exclusively to shared: our dblock RELEASED with our mode
    /// block SHARED in one write, then the leader freed — the tail of a shared acquire, so an
    /// exclusive acquirer that finds the leader released still meets our SHARED mode block.
    /// On success the lease is held as [`PaxosRelease::as_shared`] describes. (Shared →
    /// exclusive: [`PaxosAcquire::convert_to_exclusive`].)
    pub fn to_shared(cfg: PaxosConfig, held: Acquired, now: Time) -> Self {
        let mode = shared_mode(cfg.generation);
        Self::leader_release(cfg, held, mode, now)
    }

    /// What an exclusive lease becomes once [`PaxosRelease::to_shared`] succeeded.
    pub fn as_shared(held: &Acquired) -> Acquired {
        Acquired {
            dblock: Dblock {
                flags: held.dblock.flags | DBLOCK_FLAG_RELEASED,
                ..held.dblock
            },
            shared: true,
            ..held.clone()
        }
    }

    /// Our RELEASED dblock with `mode` in one write, then the leader freed if still ours.
    pub(super) fn leader_release(
        cfg: PaxosConfig,
        held: Acquired,
        mode: ModeBlock,
        now: Time,
    ) -> Self {
        let mut me = PaxosRelease {
            sector: vec![0u8; cfg.geometry.sector_size_bytes() as usize],
            cfg,
            held,
            pending: None,
            io_started: now,
            freeing_leader: false,
            writing_lvb: false,
            mode,
            only_dblock: false,
            result: None,
            cache: None,
            rename: None,
        };
        me.write_released(now);
        me
    }

    /// Starts releasing `held` at `now`, first writing `lvb` (at most one sector, padded with
    /// zeros) as the resource's lock value block — before the RELEASED dblock, so the next
    /// holder, which waits for that flag, reads it.
    pub fn with_lvb(
        cfg: PaxosConfig,
        held: Acquired,
        lvb: &[u8],
        now: Time,
    ) -> Result<Self, PaxosError> {
        let ss = cfg.geometry.sector_size_bytes() as usize;
        let lvb_offset = cfg
            .geometry
            .lvb_offset()
            .map_err(|e| PaxosError::LvbUnavailable(e.to_string()))?;
        if lvb.len() > ss {
            return Err(PaxosError::LvbTooLarge {
                len: lvb.len(),
                max: ss,
            });
        }
        let mut me = Self::new(cfg, held, now);
        me.sector.fill(0);
        me.sector[..lvb.len()].copy_from_slice(lvb);
        me.writing_lvb = true;
        me.pending = Some(PaxosIo::Write {
            offset: me.cfg.area_offset + lvb_offset,
        });
        Ok(me)
    }

    /// The freed leader is written with resource name `name` (sanlock's REL_RENAME: the
    /// lease is released and renamed in one). When another host wrote the leader since, it
    /// is not freed by us and keeps its name.
    pub fn renaming(mut self, name: Name) -> Self {
        self.rename = Some(name);
        self
    }

    /// Our dblock with RELEASED (other fields kept, mode block zeroed), then the leader. A
    /// shared hold writes its recorded dblock back as it is (RELEASED since its acquire —
    /// unless a failed conversion left a ballot's dblock, which must not be marked RELEASED:
    /// that instance was not won).
    fn write_released(&mut self, now: Time) {
        let ss = self.sector.len();
        self.sector.fill(0);
        let flags = if self.only_dblock {
            self.held.dblock.flags
        } else {
            self.held.dblock.flags | DBLOCK_FLAG_RELEASED
        };
        Dblock {
            flags,
            ..self.held.dblock
        }
        .encode_into(&mut self.sector);
        self.mode.encode_into(&mut self.sector);
        let write_offset = self.cfg.area_offset + self.cfg.geometry.dblock_offset(self.cfg.host_id);
        // The leader is read at the same time as our RELEASED dblock is written (spec: "write
        // our dblock ...; re-read the leader"): the re-read guards against a leader another
        // host wrote while we were not looking (a takeover after we were declared dead), and
        // any such write began before this release did — a host that would take over because
        // of our RELEASED flag needs to read it, then win two phases, before it writes the
        // leader, which is after our read either way. Saves one I/O time per release;
        // tests/paxos_model.rs and tests/paxos_sim.rs check it.
        self.pending = Some(if self.only_dblock {
            PaxosIo::Write {
                offset: write_offset,
            }
        } else {
            PaxosIo::WriteAndRead {
                write_offset,
                read_offset: self.cfg.area_offset,
                read_len: ss,
            }
        });
        self.io_started = now;
    }

    /// The next I/O (taken).
    pub fn poll_io(&mut self) -> Option<PaxosIo> {
        self.pending.take()
    }

    /// Deadline of the I/O just taken.
    pub fn io_deadline(&self) -> Time {
        self.io_started.saturating_add(self.cfg.timeouts.io())
    }

    /// The sector to write.
    pub fn write_data(&self) -> &[u8] {
        &self.sector
    }

    /// The outcome, once.
    pub fn poll_result(&mut self) -> Option<Result<(), PaxosError>> {
        self.result.take()
    }

    /// After a successful exclusive release that freed the leader itself: what the next
    /// acquire of this lease by this host may start from (see [`BallotCache`]).
    pub fn cache(&self) -> Option<BallotCache> {
        self.cache
    }

    /// The outcome of the I/O taken last.
    pub fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        if outcome != IoOutcome::Done {
            self.result = Some(Err(PaxosError::Io {
                what: "release",
                outcome,
            }));
            return;
        }
        if self.freeing_leader {
            // Both our RELEASED dblock and the free leader are on disk (the mode block zero:
            // a conversion to shared never frees with a cache, its mode block is SHARED).
            if self.mode == ModeBlock::default() {
                if let Ok(leader) = LeaderRecord::decode(&self.sector) {
                    self.cache = Some(BallotCache {
                        leader,
                        ours: Dblock {
                            flags: self.held.dblock.flags | DBLOCK_FLAG_RELEASED,
                            ..self.held.dblock
                        },
                    });
                }
            }
            self.result = Some(Ok(()));
            return;
        }
        if self.only_dblock && !self.writing_lvb {
            self.result = Some(Ok(()));
            return;
        }
        if self.writing_lvb {
            self.writing_lvb = false;
            return self.write_released(now);
        }
        let leader = match LeaderRecord::decode(data) {
            Ok(l) => l,
            Err(e) => {
                self.result = Some(Err(PaxosError::Corrupt(e.to_string())));
                return;
            }
        };
        let mine = self.held.leader;
        if leader.owner_id != mine.owner_id
            || leader.owner_generation != mine.owner_generation
            || leader.lver != mine.lver
        {
            // Another host wrote the leader since: our RELEASED dblock is all it needs.
            self.result = Some(Ok(()));
            return;
        }
        // A shared acquire's brief hold ends here: the free leader carries no SHORT_HOLD (as
        // sanlock writes it; a SHORT_HOLD leader tells other shared acquirers to retry).
        let freed = LeaderRecord {
            timestamp: 0,
            flags: leader.flags & !tenure_format::leader::LEADER_FLAG_SHORT_HOLD,
            write_id: self.cfg.host_id,
            write_generation: self.cfg.generation,
            write_timestamp: now.as_secs().max(1),
            resource_name: self.rename.unwrap_or(leader.resource_name),
            ..leader
        };
        self.sector.fill(0);
        freed.encode_into(&mut self.sector);
        self.freeing_leader = true;
        self.pending = Some(PaxosIo::Write {
            offset: self.cfg.area_offset,
        });
        self.io_started = now;
    }
}

impl std::hash::Hash for PaxosRelease {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let PaxosRelease {
            cfg,
            held,
            pending,
            io_started,
            sector: _,
            freeing_leader,
            writing_lvb,
            mode,
            only_dblock,
            result,
            cache,
            rename,
        } = self;
        (cfg, held, pending, io_started, freeing_leader, writing_lvb).hash(h);
        (mode, only_dblock, result, cache, rename).hash(h);
    }
}
