//! Paxos leases (one resource) as a sans-IO state machine: exclusive acquire and release on one
//! disk (spec/PROTOCOL.md "Paxos lease"; Gafni & Lamport, Disk Paxos).
//!
//! An acquire first reads the leader, the request record and the dblocks up to its own (a
//! free leader needs no more; one naming another owner costs a read of every dblock), decides
//! whether a ballot may run — asking its driver for the owner's delta-lease status when the
//! leader names a live-looking owner — then runs phase 1
//! (write our dblock, then read all dblocks), phase 2 (write our dblock with the chosen value,
//! then read all), and commits by writing the leader. A ballot that meets a higher mbal or lver
//! aborts and retries with a larger ballot after a backoff scaled to the measured I/O time.
//!
//! Invariants:
//! - Ballot numbers of different hosts never collide: `mbal ≡ host_id (mod max_hosts)`.
//! - Within one lver (one consensus instance) our dblock keeps its bal/inp across ballots, so
//!   a value that may have been chosen is never forgotten (Disk Paxos phase 1).
//! - Reads of dblocks start only after our write completed (the driver links them).
//! - Dblocks above num_hosts are never read; a host above num_hosts cannot acquire.
//!
//! Also here: conditional acquire on an expected lver, the lock value block (read before the
//! commit, written at release before the RELEASED dblock), and reading the owners of a
//! resource without acquiring it ([`owners_from_area`]).
//!
//! Shared mode (spec/PROTOCOL.md "Shared"): a shared acquire wins the leader with SHORT_HOLD,
//! writes its mode block SHARED together with its RELEASED dblock, and frees the leader; an
//! exclusive acquire that wins checks the SHARED mode blocks of its phase 2 read and gives the
//! leader back if any of those hosts is live (or not yet known dead) in that generation. A
//! dead holder's mode block is ignored but not cleared: writing another host's sector could
//! clobber a ballot that host runs after rejoining, and its own next dblock write clears it.
//! An acquire that finds another host's SHORT_HOLD leader retries up to
//! [`SHORT_HOLD_RETRIES_MAX`] times.
//!
//! An I/O failure after phase 2 began with our value is retracted (spec step 7): the ballot
//! runs again to learn whether the lease is ours, and what it wins is given back at once.
//! Leases on several disks: [`disks::Majority`] runs these machines over each disk's copy.
//!
//! Files, by phase: `acquire.rs` (the acquire machine: reading the area, the owner's status,
//! ballots, the shared-holder check, retracts), `release.rs` (the release machine, also the
//! inner release an acquire drives), `owners.rs` (owners without acquiring), `blocking.rs`
//! (blocking drivers over an engine), `disks.rs` (several disks); this file holds what they
//! share (configuration, I/O requests, errors by fault, the results).

mod acquire;
pub mod blocking;
pub mod disks;
mod owners;
mod release;

pub use acquire::{PaxosAcquire, BALLOTS_MAX, RETRACTS_MAX, SHORT_HOLD_RETRIES_MAX};
pub use owners::{owners_from_area, Holder, Owners};
pub use release::PaxosRelease;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenure_format::paxos::{Dblock, ModeBlock, DBLOCK_FLAG_RELEASED, MODE_FLAG_SHARED};
use tenure_format::{Geometry, LeaderKind, LeaderRecord, Name};

use crate::clock::Time;
use crate::delta::HostStatus;
use crate::io::IoOutcome;
use crate::timeouts::Timeouts;

/// Who acquires which resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PaxosConfig {
    /// Lockspace name.
    pub space_name: Name,
    /// Resource name.
    pub resource_name: Name,
    /// Area geometry.
    pub geometry: Geometry,
    /// Byte offset of the resource area on its device.
    pub area_offset: u64,
    /// Our host id.
    pub host_id: u64,
    /// Our lockspace generation.
    pub generation: u64,
    /// Our io_timeout and the cluster's W.
    pub timeouts: Timeouts,
    /// Fail at once with [`PaxosError::OwnedRetry`] instead of waiting for an owner whose
    /// delta lease stopped changing to be declared dead.
    pub no_wait: bool,
    /// Acquire only if the lease is still at this lver (the migration hand-off: the source
    /// releases and passes its lver; the destination fails if anyone took the lease since).
    pub expect_lver: Option<u64>,
    /// Read the lock value block (sector 2002 of the area) before committing, and return it
    /// in [`Acquired::lvb`]. Refused at once where that sector lies outside the area (4096-byte
    /// sectors with an area under 8 MiB).
    pub read_lvb: bool,
    /// Acquire in shared mode: win the leader briefly (SHORT_HOLD), mark our mode block
    /// SHARED with our dblock RELEASED, then free the leader. Any number of hosts may hold a
    /// lease shared; an exclusive acquire fails while a live host holds it shared.
    pub shared: bool,
}

/// An I/O the machine wants. Writes take their sector from [`PaxosAcquire::write_data`];
/// `WriteThenRead` must be issued as a linked chain (the read starts after the write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaxosIo {
    /// Read `len` bytes at `offset`.
    Read {
        /// Device offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// Write one sector at `offset`.
    Write {
        /// Device offset.
        offset: u64,
    },
    /// Write one sector at `write_offset` and read `read_len` bytes at `read_offset`, in no
    /// particular order (both are issued at once; the outcome comes when both ended).
    WriteAndRead {
        /// Device offset of the write.
        write_offset: u64,
        /// Device offset of the read.
        read_offset: u64,
        /// Length of the read.
        read_len: usize,
    },
    /// Write one sector at `write_offset`, then read `read_len` bytes at `read_offset`.
    WriteThenRead {
        /// Device offset of the write.
        write_offset: u64,
        /// Device offset of the read.
        read_offset: u64,
        /// Length of the read.
        read_len: usize,
    },
}

/// Who is at fault when a lease operation fails (as rustls groups its errors): what the caller
/// does next depends on it — wait or give up the lease to its holder, look at the storage, look
/// at what is on disk, fix the set-up, fix the request, or report a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Another host holds the lease or contends for it.
    Contention,
    /// Storage failed or timed out.
    Storage,
    /// The area holds foreign or damaged data.
    Damaged,
    /// The lease or lockspace is set up so that this cannot work (num_hosts, room for an LVB,
    /// its disks).
    Configuration,
    /// The request cannot be honoured as asked (too large, a mode it is already in, a
    /// lockspace not joined).
    Misuse,
    /// A bug in tenure: one of its own invariants did not hold.
    Internal,
}

/// Why an acquire or release failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, thiserror::Error)]
pub enum PaxosError {
    /// The owner's delta lease is alive.
    #[error("lease is held by host id {host_id} generation {generation}, which is alive")]
    OwnerAlive {
        /// Owner host id.
        host_id: u64,
        /// Owner generation.
        generation: u64,
    },
    /// The owner stopped renewing but is not yet dead, and no_wait was asked.
    #[error(
        "lease is held by host id {host_id} generation {generation}; not dead yet (retry later)"
    )]
    OwnedRetry {
        /// Owner host id.
        host_id: u64,
        /// Owner generation.
        generation: u64,
    },
    /// A ballot chose another host's value.
    #[error("lease was acquired by host id {host_id} in the same ballot")]
    AcquiredByOther {
        /// The winner.
        host_id: u64,
    },
    /// The area holds something that is not this resource, or a damaged record.
    #[error("resource area: {0}")]
    Corrupt(String),
    /// The area holds a lease of another lockspace (`lockspace`) or of another resource name
    /// (sanlock: −226 / −227).
    #[error("resource area: {detail}")]
    NameMismatch {
        /// The lockspace name differs (else the resource name).
        lockspace: bool,
        /// What was found.
        detail: String,
    },
    /// An I/O failed or timed out.
    #[error("{what}: {outcome:?}")]
    Io {
        /// Which step.
        what: &'static str,
        /// How it ended.
        outcome: IoOutcome,
    },
    /// Our host id is above the resource's num_hosts.
    #[error("host id {host_id} is above this resource's num_hosts {num_hosts}")]
    HostIdAboveNumHosts {
        /// Our host id.
        host_id: u64,
        /// num_hosts.
        num_hosts: u64,
    },
    /// The lease version moved on since the caller last saw it.
    #[error("lease version is {found}, expected {expected}: someone acquired the lease since")]
    LverMismatch {
        /// The lver the caller expected.
        expected: u64,
        /// The lver on disk.
        found: u64,
    },
    /// Too many aborted ballots.
    #[error("gave up after {0} aborted ballots")]
    TooManyRetries(u32),
    /// An exclusive acquire found a live host holding the lease shared (sanlock: EAGAIN). The
    /// leader we had won was released again.
    #[error("lease is held shared by host id {host_id} generation {generation}, which is alive")]
    SharedBusy {
        /// A live shared holder.
        host_id: u64,
        /// Its generation.
        generation: u64,
    },
    /// Another host kept winning the leader briefly for shared acquires (SHORT_HOLD).
    #[error(
        "host id {host_id} holds the leader for a shared acquire; gave up after {retries} retries"
    )]
    ShortHoldRetry {
        /// The host in the leader.
        host_id: u64,
        /// Retries made.
        retries: u32,
    },
    /// This resource's geometry has no room for a lock value block.
    #[error("{0}")]
    LvbUnavailable(String),
    /// More LVB bytes than one sector.
    #[error("lock value block of {len} bytes does not fit in one {max}-byte sector")]
    LvbTooLarge {
        /// Bytes given.
        len: usize,
        /// Sector size.
        max: usize,
    },
    /// An I/O failed after phase 2 began with our value, and retracting failed too: the
    /// lease may be held by this host on disk (a later acquire by this host, or its release,
    /// or the end of its lockspace membership frees it).
    #[error("{what}: {outcome:?}; retracting failed as well: the lease may still be held by this host on disk")]
    IoMaybeHeld {
        /// Which step failed first.
        what: &'static str,
        /// How it ended.
        outcome: IoOutcome,
    },
    /// The lease's disk list cannot be used (count, offsets).
    #[error("lease disks: {0}")]
    Disks(String),
    /// A driver found its machine neither done nor asking for I/O nor waiting for a timer:
    /// a bug in tenure, never the disk's fault.
    #[error("internal error: the {0} machine stalled")]
    Stalled(&'static str),
}

impl PaxosError {
    /// A leader record that did not decode as this resource's.
    pub fn of_leader(e: tenure_format::DecodeError) -> Self {
        use tenure_format::DecodeError as D;
        match e {
            D::LockspaceNameMismatch { .. } => PaxosError::NameMismatch {
                lockspace: true,
                detail: e.to_string(),
            },
            D::ResourceNameMismatch { .. } => PaxosError::NameMismatch {
                lockspace: false,
                detail: e.to_string(),
            },
            other => PaxosError::Corrupt(other.to_string()),
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        use PaxosError::*;
        match self {
            OwnerAlive { .. }
            | OwnedRetry { .. }
            | AcquiredByOther { .. }
            | LverMismatch { .. }
            | TooManyRetries(_)
            | SharedBusy { .. }
            | ShortHoldRetry { .. } => Fault::Contention,
            Io { .. } | IoMaybeHeld { .. } => Fault::Storage,
            Corrupt(_) | NameMismatch { .. } => Fault::Damaged,
            HostIdAboveNumHosts { .. } | LvbUnavailable(_) | Disks(_) => Fault::Configuration,
            LvbTooLarge { .. } => Fault::Misuse,
            Stalled(_) => Fault::Internal,
        }
    }
}

/// What a host knows of a lease right after its own release freed the leader: the leader it
/// wrote and its own RELEASED dblock. Its next acquire of the lease may start phase 1 from this
/// instead of reading the area first ([`PaxosAcquire::new_cached`]): phase 1 reads the leader
/// and every dblock anyway, and aborts if the leader moved on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BallotCache {
    /// The free leader we wrote.
    pub leader: LeaderRecord,
    /// Our dblock as we last wrote it.
    pub ours: Dblock,
}

/// Result of an acquire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Acquired {
    /// The lease version we hold.
    pub lver: u64,
    /// The leader we committed.
    pub leader: LeaderRecord,
    /// Our dblock as last written (release marks it RELEASED).
    pub dblock: Dblock,
    /// Ballots run (1 when uncontended).
    pub ballots: u32,
    /// The lock value block as read during the acquire (one sector), when asked for.
    pub lvb: Option<Vec<u8>>,
    /// Held shared (our mode block says SHARED; the leader was freed again).
    pub shared: bool,
}

/// Host `host`'s dblock sector (area sector host + 1) within `data`, read from the start of a
/// resource area; `None` when the read was too short.
fn host_sector(data: &[u8], ss: usize, host: u64) -> Option<&[u8]> {
    let at = usize::try_from(host + 1).ok()?.checked_mul(ss)?;
    data.get(at..at.checked_add(ss)?)
}

/// Our mode block while holding a lease shared in `generation`.
fn shared_mode(generation: u64) -> ModeBlock {
    ModeBlock {
        flags: MODE_FLAG_SHARED,
        unused: 0,
        generation,
    }
}

/// Hands one I/O of a paxos machine to an engine: a read, a write of `data`, or a linked
/// write→read chain. Returns the (write, read) ids started.
pub fn start_io(
    backend: &mut dyn crate::io::IoBackend,
    disk: crate::io::DiskId,
    io: PaxosIo,
    data: &[u8],
    deadline: Time,
) -> Result<(Option<crate::io::IoId>, Option<crate::io::IoId>), crate::io::SubmitError> {
    let req = |offset, len| crate::io::IoRequest {
        disk,
        offset,
        len,
        deadline,
    };
    match io {
        PaxosIo::Read { offset, len } => backend
            .start_read(req(offset, len))
            .map(|r| (None, Some(r))),
        PaxosIo::Write { offset } => backend
            .start_write(req(offset, data.len()), data)
            .map(|w| (Some(w), None)),
        PaxosIo::WriteThenRead {
            write_offset,
            read_offset,
            read_len,
        } => backend
            .start_chain(
                req(write_offset, data.len()),
                data,
                req(read_offset, read_len),
            )
            .map(|(w, r)| (Some(w), Some(r))),
        PaxosIo::WriteAndRead {
            write_offset,
            read_offset,
            read_len,
        } => backend
            .start_pair(
                req(write_offset, data.len()),
                data,
                req(read_offset, read_len),
            )
            .map(|(w, r)| (Some(w), Some(r))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_format::area::encode_resource_area;

    fn cfg() -> PaxosConfig {
        PaxosConfig {
            space_name: Name::new("LS").expect("name"),
            resource_name: Name::new("r").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            host_id: 1,
            generation: 1,
            timeouts: Timeouts::new(1, 10),
            no_wait: true,
            expect_lver: None,
            read_lvb: false,
            shared: false,
        }
    }

    #[test]
    fn the_first_read_stops_at_our_dblock_and_another_owner_costs_a_full_read() {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            8,
        );
        let now = Time::from_nanos(1_000_000_000);
        // Host 1: leader, request and dblock 1.
        let mut m = PaxosAcquire::new(cfg(), now);
        assert_eq!(
            m.poll_io(),
            Some(PaxosIo::Read {
                offset: 0,
                len: 3 * 512
            })
        );
        // A free leader: the ballot starts at once and reads all 8 dblocks.
        m.handle_io(now, IoOutcome::Done, &area[..3 * 512]);
        assert!(
            matches!(m.poll_io(), Some(PaxosIo::WriteThenRead { read_len, .. }) if read_len == 10 * 512)
        );
        // A leader naming host 2: its dblock (RELEASED?) is needed, so everything is read.
        let mut held = LeaderRecord::decode(&area[..512]).expect("leader");
        held.owner_id = 2;
        held.owner_generation = 1;
        held.timestamp = 77;
        held.lver = 1;
        held.encode_into(&mut area[..512]);
        let mut m = PaxosAcquire::new(cfg(), now);
        assert!(m.poll_io().is_some());
        m.handle_io(now, IoOutcome::Done, &area[..3 * 512]);
        assert_eq!(
            m.poll_io(),
            Some(PaxosIo::Read {
                offset: 0,
                len: 10 * 512
            })
        );
    }

    #[test]
    fn conditional_acquire_fails_when_the_lver_moved() {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            8,
        );
        // The lease was acquired and released twice since format: lver 2 on disk.
        let mut leader = LeaderRecord::decode(&area[..512]).expect("leader");
        leader.lver = 2;
        leader.encode_into(&mut area[..512]);
        let now = Time::from_nanos(1_000_000_000);
        for (expect, ok) in [(Some(2), true), (Some(1), false), (None, true)] {
            let mut m = PaxosAcquire::new(
                PaxosConfig {
                    expect_lver: expect,
                    read_lvb: false,
                    shared: false,
                    ..cfg()
                },
                now,
            );
            m.poll_io();
            m.handle_io(now, IoOutcome::Done, &area[..10 * 512]);
            if ok {
                assert!(
                    matches!(m.poll_io(), Some(PaxosIo::WriteThenRead { .. })),
                    "{expect:?}: ballot starts"
                );
            } else {
                assert_eq!(
                    m.poll_result(),
                    Some(Err(PaxosError::LverMismatch {
                        expected: 1,
                        found: 2
                    }))
                );
                assert_eq!(m.poll_io(), None, "no write after a mismatch");
            }
        }
    }

    #[test]
    fn owners_come_from_the_leader_the_owners_released_flag_and_the_mode_blocks() {
        let g = Geometry::LEGACY_512;
        let (ls, r) = (Name::new("LS").unwrap(), Name::new("r").unwrap());
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(&mut area, g, ls, r, 4);
        let area = &mut area[..6 * 512];
        let free = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert_eq!((free.exclusive, free.shared.len(), free.lver), (None, 0, 0));
        // Host 3 holds lver 2.
        let mut leader = LeaderRecord::decode(area).unwrap();
        leader.owner_id = 3;
        leader.owner_generation = 9;
        leader.timestamp = 77;
        leader.lver = 2;
        area[..512].fill(0);
        leader.encode_into(&mut area[..512]);
        let o = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert_eq!(
            o.exclusive,
            Some(Holder {
                host_id: 3,
                generation: 9,
                timestamp: 77
            })
        );
        // It released: its dblock says RELEASED at lver 2.
        let d = Dblock {
            lver: 2,
            mbal: 3,
            flags: DBLOCK_FLAG_RELEASED,
            ..Dblock::default()
        };
        d.encode_into(&mut area[4 * 512..5 * 512]);
        let o = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert!(o.exclusive.is_none() && o.owner_released);
        // Host 2 holds it shared.
        tenure_format::paxos::ModeBlock {
            flags: tenure_format::paxos::MODE_FLAG_SHARED,
            unused: 0,
            generation: 5,
        }
        .encode_into(&mut area[3 * 512..4 * 512]);
        let o = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert_eq!(
            o.shared,
            vec![Holder {
                host_id: 2,
                generation: 5,
                timestamp: 0
            }]
        );
        // Too few bytes for num_hosts: a typed error, not a panic.
        assert!(matches!(
            owners_from_area(&area[..4 * 512], g, &ls, Some(&r)),
            Err(PaxosError::Corrupt(_))
        ));
        // Another resource's area is refused.
        let other = Name::new("x").unwrap();
        assert!(owners_from_area(area, g, &ls, Some(&other)).is_err());
    }

    /// Runs a machine's I/O synchronously on an in-memory area (owners answer Dead).
    fn drive_acquire(area: &mut [u8], cfg: PaxosConfig) -> Result<Acquired, PaxosError> {
        drive_acquire_with(area, cfg, |_| HostStatus::Dead)
    }

    fn drive_acquire_with(
        area: &mut [u8],
        cfg: PaxosConfig,
        status: impl Fn(u64) -> HostStatus,
    ) -> Result<Acquired, PaxosError> {
        let mut now = Time::from_nanos(1_000_000_000_000);
        let mut m = PaxosAcquire::new(cfg, now);
        loop {
            if let Some(r) = m.poll_result() {
                return r;
            }
            now = now.saturating_add(Duration::from_millis(1));
            if let Some(io) = m.poll_io() {
                let data = m.write_data().to_vec();
                let out = apply(area, io, &data);
                m.handle_io(now, IoOutcome::Done, &out);
            } else if let Some((host, _)) = m.poll_owner_query() {
                m.handle_owner_status(now, status(host), true);
            } else if let Some(t) = m.poll_timeout() {
                m.handle_timeout(t);
            }
        }
    }

    fn apply(area: &mut [u8], io: PaxosIo, data: &[u8]) -> Vec<u8> {
        let read =
            |area: &[u8], off: u64, len: usize| area[off as usize..off as usize + len].to_vec();
        match io {
            PaxosIo::Read { offset, len } => read(area, offset, len),
            PaxosIo::Write { offset } => {
                area[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                Vec::new()
            }
            PaxosIo::WriteThenRead {
                write_offset,
                read_offset,
                read_len,
            }
            | PaxosIo::WriteAndRead {
                write_offset,
                read_offset,
                read_len,
            } => {
                area[write_offset as usize..write_offset as usize + data.len()]
                    .copy_from_slice(data);
                read(area, read_offset, read_len)
            }
        }
    }

    fn drive_release(area: &mut [u8], mut m: PaxosRelease) -> Result<(), PaxosError> {
        let now = Time::from_nanos(2_000_000_000_000);
        loop {
            if let Some(r) = m.poll_result() {
                return r;
            }
            let io = m.poll_io().expect("release I/O");
            let data = m.write_data().to_vec();
            let out = apply(area, io, &data);
            m.handle_io(now, IoOutcome::Done, &out);
        }
    }

    #[test]
    fn the_lock_value_block_passes_from_holder_to_holder() {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").unwrap(),
            Name::new("r").unwrap(),
            4,
        );
        let lvb_at = Geometry::LEGACY_512.lvb_offset().unwrap() as usize;
        area[lvb_at..lvb_at + 5].copy_from_slice(b"hello");
        let cfg_lvb = PaxosConfig {
            read_lvb: true,
            ..cfg()
        };
        let held = drive_acquire(&mut area, cfg_lvb.clone()).unwrap();
        let lvb = held.lvb.clone().expect("lvb read");
        assert_eq!(lvb.len(), 512);
        assert_eq!(&lvb[..6], b"hello\0");
        // Too large: refused before any I/O.
        assert_eq!(
            PaxosRelease::with_lvb(
                cfg_lvb.clone(),
                held.clone(),
                &[1; 513],
                Time::from_nanos(1)
            )
            .err(),
            Some(PaxosError::LvbTooLarge { len: 513, max: 512 })
        );
        let m =
            PaxosRelease::with_lvb(cfg_lvb.clone(), held, b"next", Time::from_nanos(1)).unwrap();
        drive_release(&mut area, m).unwrap();
        assert_eq!(&area[lvb_at..lvb_at + 5], b"next\0", "written, zero padded");
        // Host 2 acquires after the release and reads what host 1 left.
        let host2 = PaxosConfig {
            host_id: 2,
            ..cfg_lvb
        };
        let held2 = drive_acquire(&mut area, host2).unwrap();
        assert_eq!(&held2.lvb.unwrap()[..5], b"next\0");
        assert_eq!(held2.lver, 2);
        // Without read_lvb there is no LVB in the result.
        let mut area2 = area.clone();
        let host3 = PaxosConfig {
            host_id: 3,
            ..cfg()
        };
        assert_eq!(drive_acquire(&mut area2, host3).unwrap().lvb, None);
    }

    #[test]
    fn an_lvb_outside_the_area_is_refused_before_any_io() {
        let g = Geometry::new(
            tenure_format::SectorSize::B4096,
            tenure_format::AlignSize::M1,
        )
        .unwrap();
        let cfg = PaxosConfig {
            geometry: g,
            read_lvb: true,
            ..cfg()
        };
        let mut m = PaxosAcquire::new(cfg, Time::from_nanos(1));
        assert_eq!(m.poll_io(), None, "no I/O");
        assert!(
            matches!(m.poll_result(), Some(Err(PaxosError::LvbUnavailable(msg))) if msg.contains("outside"))
        );
    }

    #[test]
    fn shared_holders_coexist_and_keep_an_exclusive_acquirer_out_until_they_release() {
        let g = Geometry::LEGACY_512;
        let (ls, r) = (Name::new("LS").unwrap(), Name::new("r").unwrap());
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(&mut area, g, ls, r, 4);
        let host = |id: u64, shared: bool| PaxosConfig {
            host_id: id,
            shared,
            ..cfg()
        };
        let s2 = drive_acquire(&mut area, host(2, true)).unwrap();
        let s3 = drive_acquire_with(&mut area, host(3, true), |_| HostStatus::Live).unwrap();
        assert!(s2.shared && s3.shared);
        let o = owners_from_area(&area, g, &ls, Some(&r)).unwrap();
        assert_eq!(o.exclusive, None, "a shared acquire frees the leader again");
        let shared: Vec<u64> = o.shared.iter().map(|h| h.host_id).collect();
        assert_eq!(shared, vec![2, 3]);
        // Exclusive while they live: busy, and the leader it won is given back.
        let e = drive_acquire_with(&mut area, host(1, false), |_| HostStatus::Live).unwrap_err();
        assert_eq!(
            e,
            PaxosError::SharedBusy {
                host_id: 2,
                generation: 1
            }
        );
        let o = owners_from_area(&area, g, &ls, Some(&r)).unwrap();
        assert!(o.exclusive.is_none(), "unwound: {o:?}");
        // A dead shared holder does not count; a live one still does.
        let e = drive_acquire_with(&mut area, host(1, false), |h| {
            if h == 2 {
                HostStatus::Dead
            } else {
                HostStatus::Live
            }
        })
        .unwrap_err();
        assert!(
            matches!(e, PaxosError::SharedBusy { host_id: 3, .. }),
            "{e}"
        );
        // Both release (one write each: mode block zeroed): exclusive succeeds.
        for (id, held) in [(2, s2), (3, s3)] {
            drive_release(
                &mut area,
                PaxosRelease::new(host(id, true), held, Time::from_nanos(1)),
            )
            .unwrap();
        }
        let x = drive_acquire_with(&mut area, host(1, false), |_| HostStatus::Live).unwrap();
        assert!(!x.shared);
        let o = owners_from_area(&area, g, &ls, Some(&r)).unwrap();
        assert_eq!(o.exclusive.map(|h| h.host_id), Some(1));
        assert!(o.shared.is_empty());
        // Now a shared acquirer meets a live exclusive owner.
        let e = drive_acquire_with(&mut area, host(2, true), |_| HostStatus::Live).unwrap_err();
        assert!(
            matches!(e, PaxosError::OwnerAlive { host_id: 1, .. }),
            "{e}"
        );
    }

    /// Drives an acquire where `fault(n, io)` decides the fate of the n-th I/O: None = done;
    /// Some((landed, outcome)) = fails with `outcome`, its write landing or not.
    fn drive_with_faults(
        area: &mut [u8],
        mut m: PaxosAcquire,
        fault: &mut dyn FnMut(usize, PaxosIo) -> Option<(bool, IoOutcome)>,
    ) -> (Result<Acquired, PaxosError>, usize) {
        let mut now = Time::from_nanos(1_000_000_000_000);
        let mut n = 0;
        loop {
            if let Some(r) = m.poll_result() {
                return (r, n);
            }
            now = now.saturating_add(Duration::from_millis(1));
            if let Some(io) = m.poll_io() {
                let data = m.write_data().to_vec();
                match fault(n, io) {
                    None => {
                        let out = apply(area, io, &data);
                        m.handle_io(now, IoOutcome::Done, &out);
                    }
                    Some((landed, outcome)) => {
                        if landed {
                            apply(area, io, &data);
                        }
                        m.handle_io(now, outcome, &[]);
                    }
                }
                n += 1;
            } else if m.poll_owner_query().is_some() {
                m.handle_owner_status(now, HostStatus::Live, true);
            } else if let Some(t) = m.poll_timeout() {
                now = now.max(t);
                m.handle_timeout(now);
            } else {
                panic!("acquire stalled");
            }
        }
    }

    fn formatted_area() -> Vec<u8> {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            8,
        );
        area
    }

    const EIO: IoOutcome = IoOutcome::Failed { errno: libc::EIO };

    /// A host reset after its phase 2 landed and before its commit, rejoined in a new
    /// generation and acquiring again, finds its old value in its dblock and commits it: that
    /// win is its old incarnation's (the leader names generation 1), not this acquire's.
    /// Found by the whole-cluster simulation; without the generation check the acquire
    /// reported success while the other hosts saw the lease's owner as gone.
    #[test]
    fn a_ballot_that_commits_our_earlier_generations_value_is_not_ours() {
        let mut area = formatted_area();
        let now = Time::from_nanos(1_000_000_000);
        let mut m = PaxosAcquire::new(cfg(), now);
        // The area read, phase 1 and phase 2 land; the host is reset before committing.
        for _ in 0..3 {
            let io = m.poll_io().expect("next I/O");
            let data = m.write_data().to_vec();
            let out = apply(&mut area, io, &data);
            m.handle_io(now, IoOutcome::Done, &out);
        }
        assert!(m.poll_result().is_none(), "not committed yet");
        drop(m);
        let reborn = PaxosConfig {
            generation: 2,
            ..cfg()
        };
        let e = drive_acquire_with(&mut area, reborn, |_| HostStatus::Dead).unwrap_err();
        assert_eq!(e, PaxosError::AcquiredByOther { host_id: 1 });
        let leader = LeaderRecord::decode(&area[..512]).expect("leader");
        assert_eq!((leader.owner_id, leader.owner_generation), (1, 1));
    }

    #[test]
    fn a_failure_before_phase_2_is_reported_without_retracting() {
        let mut area = formatted_area();
        let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
        // I/O 0 reads the area, I/O 1 is phase 1.
        let (r, ios) = drive_with_faults(&mut area, m, &mut |n, _| (n == 1).then_some((true, EIO)));
        assert_eq!(
            r,
            Err(PaxosError::Io {
                what: "phase 1",
                outcome: EIO
            })
        );
        assert_eq!(ios, 2, "nothing more was done");
    }

    #[test]
    fn a_commit_that_landed_but_failed_is_retracted_and_the_lease_left_free() {
        for landed in [true, false] {
            let mut area = formatted_area();
            let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
            // I/O 3 is the commit: read, phase 1, phase 2, commit.
            let (r, ios) =
                drive_with_faults(&mut area, m, &mut |n, _| (n == 3).then_some((landed, EIO)));
            assert_eq!(
                r,
                Err(PaxosError::Io {
                    what: "commit",
                    outcome: EIO
                }),
                "landed {landed}"
            );
            assert!(ios > 4, "the retract ran its own ballot and release");
            let leader = LeaderRecord::decode(&area[..512]).expect("leader");
            assert_eq!(
                leader.timestamp, 0,
                "landed {landed}: the leader is free again"
            );
            let ours = Dblock::decode(&area[512 * 2..512 * 3]).expect("dblock");
            assert_ne!(ours.flags & DBLOCK_FLAG_RELEASED, 0, "landed {landed}");
            // Another host acquires it at once.
            let mut other = cfg();
            other.host_id = 2;
            drive_acquire(&mut area, other).expect("free for host 2");
        }
    }

    #[test]
    fn a_phase_2_failure_whose_value_was_chosen_is_retracted() {
        let mut area = formatted_area();
        let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
        // Phase 2's write lands, its read fails: our value is chosen on disk.
        let (r, _) = drive_with_faults(&mut area, m, &mut |n, _| (n == 2).then_some((true, EIO)));
        assert_eq!(
            r,
            Err(PaxosError::Io {
                what: "phase 2",
                outcome: EIO
            })
        );
        // Without the retract host 2 would commit host 1's value for it ("acquired by
        // another") and find the lease stuck with host 1; after it, the lease is free.
        let mut other = cfg();
        other.host_id = 2;
        let held = drive_acquire(&mut area, other).expect("free for host 2");
        assert_eq!(held.leader.owner_id, 2);
    }

    #[test]
    fn a_retract_that_keeps_failing_reports_the_lease_as_possibly_held() {
        let mut area = formatted_area();
        let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
        // The disk breaks for good at the commit (the write lands).
        let (r, ios) =
            drive_with_faults(&mut area, m, &mut |n, _| (n >= 3).then_some((n == 3, EIO)));
        assert_eq!(
            r,
            Err(PaxosError::IoMaybeHeld {
                what: "commit",
                outcome: EIO
            })
        );
        assert_eq!(
            ios,
            4 + RETRACTS_MAX as usize,
            "one failed read per retract attempt"
        );
        let leader = LeaderRecord::decode(&area[..512]).expect("leader");
        assert_eq!(
            (leader.owner_id, leader.lver),
            (1, 1),
            "the commit is on disk"
        );
        assert_ne!(leader.timestamp, 0);
    }

    #[test]
    fn a_conversion_whose_mode_clearing_write_fails_still_holds_exclusively() {
        let mut area = formatted_area();
        let mut shared = cfg();
        shared.shared = true;
        let held = drive_acquire(&mut area, shared).expect("shared");
        assert!(held.shared);
        let m = PaxosAcquire::convert_to_exclusive(cfg(), &held, Time::from_nanos(1));
        // Host 1's dblock is sector 2: the only plain write there is the last one, clearing
        // the SHARED mode block.
        let (r, _) = drive_with_faults(&mut area, m, &mut |_, io| {
            matches!(io, PaxosIo::Write { offset } if offset == 2 * 512).then_some((false, EIO))
        });
        let won = r.expect("exclusive despite the failed clearing write");
        assert!(!won.shared);
        let leader = LeaderRecord::decode(&area[..512]).expect("leader");
        assert_eq!((leader.owner_id, leader.lver), (1, won.lver));
        // Its release clears the mode block; host 2 then gets the lease exclusively.
        drive_release(
            &mut area,
            PaxosRelease::new(cfg(), won, Time::from_nanos(2)),
        )
        .expect("released");
        assert!(!ModeBlock::decode_from_sector(&area[2 * 512..3 * 512])
            .expect("mode")
            .is_shared());
        let mut other = cfg();
        other.host_id = 2;
        drive_acquire(&mut area, other).expect("host 2 acquires");
    }
}
