//! The host core (`tenured::host::Host`) driven directly on a simulated disk: decisions that
//! need a precise interleaving, which the whole-cluster simulation reaches only by chance.

use std::time::Duration;

use tenure_core::clock::{Clock, SimClock, Time};
use tenure_core::io::shared_sim::SharedSim;
use tenure_core::io::sim::{SimBackend, SimConfig};
use tenure_core::io::{DiskId, EngineConfig};
use tenure_core::lockspace::{LockspaceSet, LockspaceState};
use tenure_format::area::{encode_lockspace_area, encode_resource_area, lockspace_sector0};
use tenure_format::paxos::RequestRecord;
use tenure_format::{
    DiskLocation, Geometry, LeaseRef, LockspaceSpec, Name, ResourceMode, ResourceSpec,
};
use tenured::host::command::{Command, Holder, Leases};
use tenured::host::guard::KillSignal;
use tenured::host::registry::ClientKey;
use tenured::host::reply::{Done, Reply};
use tenured::host::requests::{request_for, FORCE, GRACEFUL, REQUEST_OLD};
use tenured::host::{ClientInfo, Host, HostConfig, LvbRefusal, Output};

const AREA: u64 = 1 << 20;
const PATH: &str = "/sim/disk";

/// Supervision that accepts everything (these tests are about the lease decisions) and
/// records what it is told of "used".
use tenured::fuzzing::Accepting;

struct Bed {
    clock: SimClock,
    storage: SharedSim,
    view: DiskId,
    host: Host,
    /// What supervision was told of "used", in order.
    used: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    /// When set, the state file is kept as tenured keeps it and checked after every step.
    journal: Option<JournalCheck>,
}

/// The state file as a journal, written as the server writes it (when the state epoch
/// moved) into memory.
struct JournalCheck {
    j: tenured::host::handover::StateJournal,
    file: Vec<u8>,
    epoch: Option<u64>,
    wholes: usize,
    appends: usize,
    largest: usize,
}

impl JournalCheck {
    fn new(j: tenured::host::handover::StateJournal) -> Self {
        JournalCheck {
            j,
            file: Vec::new(),
            epoch: None,
            wholes: 0,
            appends: 0,
            largest: 0,
        }
    }

    /// Writes what changed (when the epoch moved, as the server does), then reads the file
    /// back: it must say what the whole state says.
    fn check(&mut self, host: &mut Host, now: Time) {
        use tenured::host::handover::{HostState, StateWrite};
        let ticks = &mut |pid: i32| pid as u64 * 10;
        let wrote = self.epoch != Some(host.state_epoch());
        if wrote {
            self.epoch = Some(host.state_epoch());
            match host.state_write(now, "boot-1", 4242, 1, ticks, &mut self.j) {
                StateWrite::Whole(b) => {
                    self.file = b;
                    self.wholes += 1;
                }
                StateWrite::Append(b) => {
                    self.file.extend_from_slice(&b);
                    self.appends += 1;
                }
            }
            self.largest = self.largest.max(self.file.len());
        }
        let back = HostState::parse(&self.file).expect("the journal parses");
        let mut whole = host.state(now, "boot-1", 4242, 1, ticks);
        whole.written_at_ns = back.written_at_ns;
        if !wrote {
            // A renewal in flight moves the lockspace's highest timestamp without moving
            // the epoch; the leases, operations in flight and losses always move it.
            whole.spaces.clone_from(&back.spaces);
        }
        assert_eq!(back, whole, "the journal says what the state says");
    }
}

impl Bed {
    fn new() -> Self {
        let clock = SimClock::new(Time::ZERO.saturating_add(Duration::from_secs(1000)));
        let engine = EngineConfig {
            ring_entries: 256,
            buffer_classes: vec![(512, 256), (8192, 64), (1 << 20, 16)],
            sync_workers: 0,
        };
        let mut b = SimBackend::new(
            &[(512, 2 * AREA)],
            &engine,
            SimConfig::healthy(7),
            clock.clone(),
        );
        let g = Geometry::LEGACY_512;
        let ls = Name::new("LS").expect("name");
        let mut area = vec![0u8; AREA as usize];
        encode_lockspace_area(&mut area, g, ls, 1);
        lockspace_sector0(&mut area[..512], g, ls, 1);
        b.load(DiskId(0), 0, &area);
        let mut area = vec![0u8; AREA as usize];
        encode_resource_area(&mut area, g, ls, Name::new("R").expect("name"), 2000);
        b.load(DiskId(0), AREA, &area);
        let view = b.add_view(DiskId(0));
        let storage = SharedSim::new(b);
        let sup = Accepting::default();
        let used = std::sync::Arc::clone(&sup.used);
        let mut host = Host::new(
            HostConfig {
                host_name: Name::new("node-1").expect("name"),
                io_timeout_s: 1,
                other_hosts_fire_timeout_s: 10,
                no_local_exclusion: false,
            },
            LockspaceSet::new(Box::new(storage.port())),
            Box::new(sup),
            0,
        );
        host.add_known_disk(PATH.into(), view, &[(0, g), (AREA, g)]);
        Bed {
            clock,
            storage,
            view,
            host,
            used,
            journal: None,
        }
    }

    /// Steps the host for up to `limit` of simulated time until `done` holds; returns the
    /// replies that went out meanwhile.
    fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Host, &[(ClientKey, Reply)]) -> bool,
    ) -> Vec<(ClientKey, Reply)> {
        let end = self.clock.now().saturating_add(limit);
        let mut replies = Vec::new();
        loop {
            let now = self.clock.now();
            self.host.step(now).expect("step");
            while let Some(o) = self.host.poll_output() {
                if let Output::Reply(k, r) = o {
                    replies.push((k, r));
                }
            }
            if let Some(j) = self.journal.as_mut() {
                j.check(&mut self.host, now);
            }
            if done(&self.host, &replies) {
                return replies;
            }
            assert!(now < end, "not done within {limit:?}");
            let next = [self.storage.next_due(), self.host.next_wakeup()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .max(now.saturating_add(Duration::from_micros(10)))
                .min(now.saturating_add(Duration::from_millis(50)));
            self.clock.advance_to(next);
        }
    }

    fn client(&mut self, idx: usize, pid: i32) -> ClientKey {
        let k = ClientKey { idx, serial: 1 };
        self.host.client_connected(
            k,
            ClientInfo {
                pid,
                uid: 1000,
                name: format!("p{pid}"),
                kill_path: None,
                restrict: 0,
            },
        );
        k
    }

    fn acquire(&mut self, k: ClientKey, shared: bool) -> Reply {
        self.acquire_with(k, shared, false, false)
    }

    /// The leader record of R on disk.
    fn leader(&self) -> tenure_format::LeaderRecord {
        self.storage.with(|b| {
            tenure_format::LeaderRecord::decode(
                &b.disk_bytes(DiskId(0))[AREA as usize..AREA as usize + 512],
            )
            .expect("leader")
        })
    }

    /// Host 1's mode block of R on disk: shared or not.
    fn shared_on_disk(&self) -> bool {
        let at = (AREA + Geometry::LEGACY_512.dblock_offset(1)) as usize;
        self.storage.with(|b| {
            tenure_format::paxos::ModeBlock::decode_from_sector(
                &b.disk_bytes(DiskId(0))[at..at + 512],
            )
            .expect("mode block")
            .is_shared()
        })
    }

    fn acquire_with(
        &mut self,
        k: ClientKey,
        shared: bool,
        persistent: bool,
        adopt_orphan: bool,
    ) -> Reply {
        let cmd = Command::Acquire {
            resources: vec![ResourceSpec {
                lockspace: Name::new("LS").expect("name"),
                name: Name::new("R").expect("name"),
                disks: vec![DiskLocation {
                    path: PATH.into(),
                    offset: AREA,
                }],
                mode: if shared {
                    ResourceMode::Shared
                } else {
                    ResourceMode::Exclusive
                },
            }],
            no_wait: true,
            lvb: false,
            holder: Holder::Me,
            persistent: vec![persistent],
            adopt_orphan,
        };
        self.execute(k, cmd)
    }

    /// `k`'s command, answered at once or after the host ran (30 s at most).
    fn execute(&mut self, k: ClientKey, cmd: Command) -> Reply {
        let now = self.clock.now();
        if let Some(r) = self.host.execute(now, k, cmd) {
            return r;
        }
        let mut got = self.run_until(Duration::from_secs(30), |_, r| {
            r.iter().any(|(c, _)| *c == k)
        });
        got.retain(|(c, _)| *c == k);
        got.remove(0).1
    }

    /// Two clients holding R shared and persistent.
    fn two_persistent_shared_holders(&mut self) -> (ClientKey, ClientKey) {
        let c = self.client(3, 103);
        let d = self.client(4, 104);
        assert!(matches!(
            self.acquire_with(c, true, true, false),
            Reply::Done(_)
        ));
        assert!(matches!(
            self.acquire_with(d, true, true, false),
            Reply::Done(_)
        ));
        (c, d)
    }
}

fn joined_bed() -> Bed {
    let mut bed = Bed::new();
    let now = bed.clock.now();
    let spec = LockspaceSpec::parse(&format!("LS:1:{PATH}:0")).expect("spec");
    let r = bed.host.lockspace_add_configured(now, &spec);
    assert!(matches!(r, Reply::Done(_)), "{r:?}");
    bed.run_until(Duration::from_secs(60), |h, _| {
        matches!(
            h.space_state(&h.spaces()[0]),
            Some(LockspaceState::Joined { .. })
        )
    });
    bed
}

/// A conversion to shared whose write may have landed cannot be reported as failed: the
/// engine holds the lease shared from then on (another host may hold it shared), and a client
/// told "failed" would go on as the exclusive holder. Found by the cluster simulation.
#[test]
fn a_conversion_to_shared_that_fails_on_storage_is_answered_done() {
    let mut bed = joined_bed();
    let a = bed.client(0, 100);
    assert!(matches!(bed.acquire(a, false), Reply::Done(_)));
    let now = bed.clock.now();
    let cmd = Command::Convert {
        lease: LeaseRef::parse("LS:R").expect("lease"),
        shared: true,
        holder: Holder::Me,
        no_wait: false,
    };
    assert!(bed.host.execute(now, a, cmd).is_none());
    // The storage hangs before the conversion's first write: it times out.
    let view = bed.view;
    bed.storage.with(|b| b.set_hung(view, true));
    let replies = bed.run_until(Duration::from_secs(30), |_, r| {
        r.iter().any(|(c, _)| *c == a)
    });
    let (_, r) = replies.iter().find(|(c, _)| *c == a).expect("reply");
    match r {
        Reply::Done(Done::Converted {
            shared, warning, ..
        }) => {
            assert!(*shared, "{r:?}");
            assert!(warning.is_some(), "the error is named: {r:?}");
        }
        Reply::Done(d) => panic!("not a conversion's answer: {d:?}"),
        Reply::Error(e) => panic!("answered as failed: {}", e.message),
    }
    // It is a shared hold now: another local client may join it, not take it exclusively.
    bed.storage.with(|b| b.set_hung(view, false));
    let b = bed.client(1, 101);
    match bed.acquire(b, false) {
        Reply::Error(e) => assert!(e.message.contains("already held"), "{}", e.message),
        Reply::Done(d) => panic!("exclusive granted over a shared hold: {d:?}"),
    }
}

/// The outputs a request record makes the host produce (it is handed the record directly).
fn after_record(bed: &mut Bed, lver: u64, force_mode: u32) -> Vec<Output> {
    let now = bed.clock.now();
    let rec = RequestRecord {
        lver,
        force_mode,
        ..RequestRecord::FORMATTED
    };
    bed.host
        .request_record_read(now, "LS", Name::new("R").expect("name"), &rec);
    std::iter::from_fn(|| bed.host.poll_output()).collect()
}

/// PROTOCOL "Requests": a newer request has the holder give the lease up — FORCE kills,
/// GRACEFUL runs the kill path or sends SIGTERM, a restriction swaps the signal; a request not
/// newer than the holder's lease version, or clearing (force mode 0), does nothing.
#[test]
fn a_request_record_has_its_holder_signalled_as_its_force_mode_says() {
    let mut bed = joined_bed();
    let a = bed.client(0, 100);
    let Reply::Done(Done::Acquired(leases)) = bed.acquire(a, false) else {
        panic!("not acquired")
    };
    let lver = leases[0].lver;
    let outs = after_record(&mut bed, lver + 1, FORCE);
    assert!(
        matches!(
            outs.as_slice(),
            [Output::Signal {
                pid: 100,
                signal: KillSignal::Kill
            }]
        ),
        "{outs:?}"
    );
    let outs = after_record(&mut bed, lver + 1, GRACEFUL);
    assert!(
        matches!(
            outs.as_slice(),
            [Output::Signal {
                pid: 100,
                signal: KillSignal::Term
            }]
        ),
        "{outs:?}"
    );
    assert!(
        after_record(&mut bed, lver, FORCE).is_empty(),
        "not newer: nothing"
    );
    assert!(
        after_record(&mut bed, lver + 1, 0).is_empty(),
        "cleared: nothing"
    );
    // A client that restricted SIGKILL gets SIGTERM for FORCE.
    let now = bed.clock.now();
    let bits = tenured::sanlock_wire::flags::RESTRICT_SIGKILL;
    assert!(matches!(
        bed.host.execute(now, a, Command::Restrict { bits }),
        Some(Reply::Done(_))
    ));
    let outs = after_record(&mut bed, lver + 1, FORCE);
    assert!(
        matches!(
            outs.as_slice(),
            [Output::Signal {
                pid: 100,
                signal: KillSignal::Term
            }]
        ),
        "{outs:?}"
    );
    // With a kill path, GRACEFUL runs it instead of signalling.
    let cmd = Command::KillPath {
        path: "/usr/bin/true".into(),
        args: vec!["x".into()],
    };
    assert!(matches!(
        bed.host.execute(now, a, cmd),
        Some(Reply::Done(_))
    ));
    let outs = after_record(&mut bed, lver + 1, GRACEFUL);
    assert!(
        matches!(outs.as_slice(), [Output::RunKillPath { pid: 100, path, .. }] if path == "/usr/bin/true"),
        "{outs:?}"
    );
}

/// What a request writes, from the lease's leader: the owner's lver + 1 (or the lver asked
/// for), nothing for a free lease, and sanlock's REQUEST_OLD for an lver not newer.
#[test]
fn a_request_writes_a_newer_lver_and_names_the_owner() {
    let mut leader = tenure_format::LeaderRecord::new_paxos_free(
        Geometry::LEGACY_512,
        Name::new("LS").expect("name"),
        Name::new("R").expect("name"),
        2000,
    );
    assert_eq!(request_for(&leader, None, FORCE), Ok(None), "free: nothing");
    leader.timestamp = 77;
    leader.owner_id = 3;
    leader.lver = 9;
    let (rec, owner) = request_for(&leader, None, GRACEFUL)
        .expect("written")
        .expect("held");
    assert_eq!((rec.lver, rec.force_mode, owner), (10, GRACEFUL, Some(3)));
    assert_eq!(request_for(&leader, Some(9), FORCE), Err(REQUEST_OLD));
    let (rec, owner) = request_for(&leader, Some(9), 0)
        .expect("a clear")
        .expect("written");
    assert_eq!((rec.lver, rec.force_mode, owner), (9, 0, None));
}

/// Asked to stop while a lease is held, the host refuses (exiting would leave the watchdog to
/// reset this host) and names the holders; sanlock's SET_LVB on a lease acquired without its
/// LVB, or on no lease, is refused.
#[test]
fn a_stop_is_refused_while_leases_are_held_and_lvbs_need_a_lease_read_with_one() {
    let mut bed = joined_bed();
    let a = bed.client(0, 100);
    assert!(matches!(bed.acquire(a, false), Reply::Done(_)));
    let lease = LeaseRef::parse("LS:R").expect("lease");
    assert_eq!(
        bed.host.set_local_lvb(&lease, vec![1, 2, 3]),
        Err(LvbRefusal::NotRead)
    );
    let none = LeaseRef::parse("LS:other").expect("lease");
    assert_eq!(
        bed.host.set_local_lvb(&none, vec![1]),
        Err(LvbRefusal::NotHeld)
    );
    let now = bed.clock.now();
    assert_eq!(bed.host.stop_if_idle(now), Err(vec![100]));
    assert!(!bed.host.is_stopping(), "a refused stop changes nothing");
    let cmd = Command::Release {
        leases: Leases::All,
        holder: Holder::Me,
        lvb: None,
    };
    assert!(matches!(bed.execute(a, cmd), Reply::Done(_)));
    let now = bed.clock.now();
    assert_eq!(bed.host.stop_if_idle(now), Ok(()));
    assert!(bed.host.is_stopping());
}

fn orphan_count(h: &Host) -> usize {
    h.leases().filter(|l| l.is_orphan()).count()
}

fn code_of(r: &Reply) -> Option<tenured::proto::ErrorCode> {
    match r {
        Reply::Error(e) => Some(e.code),
        Reply::Done(_) => None,
    }
}

/// sanlock 3.2's persistent leases, as lvmlockd uses them: the holder goes, the lease stays
/// ours on disk as an orphan (and keeps a USED_BY_ORPHANS lockspace used); it is refused to
/// every acquire that does not adopt it in its mode, adopted without disk I/O, and released
/// on disk by REL_ORPHAN. (The same steps against the real sanlock daemon:
/// tests/fixtures/sanlock_diff.py, case `orphans`.)
#[test]
fn a_persistent_lease_outlives_its_holder_as_an_orphan_until_adopted_or_released() {
    use tenured::proto::ErrorCode;
    let mut bed = joined_bed();
    let now = bed.clock.now();
    let a = bed.client(1, 101);
    let cfg = Command::LockspaceConfig {
        name: Name::new("LS").expect("name"),
        used: None,
        used_by_orphans: Some(true),
    };
    assert!(matches!(
        bed.host.execute(now, a, cfg),
        Some(Reply::Done(_))
    ));
    assert!(matches!(
        bed.acquire_with(a, false, true, false),
        Reply::Done(_)
    ));
    assert_eq!(bed.used.lock().expect("used").last(), Some(&false));
    let held = bed.leader();
    assert_eq!((held.owner_id, held.timestamp != 0), (1, true));
    let now = bed.clock.now();
    bed.host.client_closed(now, a);
    bed.run_until(Duration::from_secs(5), |_, _| true);
    assert_eq!(orphan_count(&bed.host), 1, "the holder went: an orphan");
    assert_eq!(bed.leader(), held, "still ours on disk");
    assert_eq!(
        bed.used.lock().expect("used").last(),
        Some(&true),
        "used by its orphan: a loss would reset the host"
    );
    // Refused unless adopted in its mode.
    let b = bed.client(2, 102);
    assert_eq!(
        code_of(&bed.acquire_with(b, false, false, false)),
        Some(ErrorCode::Orphan)
    );
    assert_eq!(
        code_of(&bed.acquire_with(b, true, false, true)),
        Some(ErrorCode::Orphan)
    );
    let now = bed.clock.now();
    let rem = Command::LockspaceRemove {
        name: Name::new("LS").expect("name"),
        wait: false,
        kill_holders: false,
    };
    assert_eq!(
        bed.host.execute(now, b, rem).as_ref().and_then(code_of),
        Some(ErrorCode::Busy),
        "an orphan is a lease held in the lockspace"
    );
    // Adopted: answered at once (no disk I/O), now b's and not persistent.
    let cmd = Command::Acquire {
        resources: vec![ResourceSpec {
            lockspace: Name::new("LS").expect("name"),
            name: Name::new("R").expect("name"),
            disks: vec![DiskLocation {
                path: PATH.into(),
                offset: AREA,
            }],
            mode: ResourceMode::Exclusive,
        }],
        no_wait: true,
        lvb: false,
        holder: Holder::Me,
        persistent: vec![false],
        adopt_orphan: true,
    };
    let now = bed.clock.now();
    match bed.host.execute(now, b, cmd) {
        Some(Reply::Done(Done::Acquired(v))) => {
            assert_eq!(
                (v.len(), v[0].lver, v[0].owner),
                (1, held.lver, "connection")
            );
        }
        other => panic!("adoption answered {other:?}"),
    }
    assert_eq!(orphan_count(&bed.host), 0);
    assert_eq!(bed.used.lock().expect("used").last(), Some(&false));
    // b goes: not persistent, so released on disk.
    let now = bed.clock.now();
    bed.host.client_closed(now, b);
    bed.run_until(Duration::from_secs(10), |h, _| {
        h.leases().next().is_none() && h.in_flight().is_empty()
    });
    assert_eq!(bed.leader().timestamp, 0, "released on disk");
    // A persistent shared lease of two local holders: one orphan, once both went.
    let (c, d) = bed.two_persistent_shared_holders();
    let now = bed.clock.now();
    bed.host.client_closed(now, c);
    assert_eq!(orphan_count(&bed.host), 0, "d still holds the shared hold");
    bed.host.client_closed(now, d);
    assert_eq!(orphan_count(&bed.host), 1, "one orphan per resource");
    assert!(
        bed.shared_on_disk(),
        "the orphan keeps the shared hold on disk"
    );
    // REL_ORPHAN (any client) releases it on disk, answered with its name at once.
    let e = bed.client(5, 105);
    let rel = |name: Option<&str>| Command::Release {
        leases: Leases::Orphans {
            space: Name::new("LS").expect("name"),
            name: name.map(|n| Name::new(n).expect("name")),
        },
        holder: Holder::Me,
        lvb: None,
    };
    let now = bed.clock.now();
    assert_eq!(
        bed.host.execute(now, e, rel(Some("other"))),
        Some(Reply::Done(Done::OrphansReleased(vec![])))
    );
    assert_eq!(
        bed.host.execute(now, e, rel(None)),
        Some(Reply::Done(Done::OrphansReleased(vec!["R".into()])))
    );
    bed.run_until(Duration::from_secs(10), |h, _| {
        h.leases().next().is_none() && h.in_flight().is_empty()
    });
    assert!(!bed.shared_on_disk(), "the shared hold is released on disk");
    assert!(
        matches!(bed.acquire(e, false), Reply::Done(_)),
        "free again"
    );
}

/// The host that takes over from `bed`'s after a crash: a fresh `Host` on a new engine over
/// the same storage, the device registered.
fn successor(bed: &Bed) -> Host {
    let g = Geometry::LEGACY_512;
    let mut host = Host::new(
        HostConfig {
            host_name: Name::new("node-1").expect("name"),
            io_timeout_s: 1,
            other_hosts_fire_timeout_s: 10,
            no_local_exclusion: false,
        },
        LockspaceSet::new(Box::new(bed.storage.restart())),
        Box::new(Accepting::default()),
        0,
    );
    host.add_known_disk(PATH.into(), bed.view, &[(0, g), (AREA, g)]);
    host
}

/// Steps `bed` for `d` of simulated time.
fn run_for(bed: &mut Bed, d: Duration) {
    let end = bed.clock.now().saturating_add(d);
    let clock = bed.clock.clone();
    bed.run_until(d.saturating_add(Duration::from_secs(1)), |_, _| {
        clock.now() >= end
    });
}

/// The state file is a journal (crate::host::journal): records of what changed appended
/// after every change, compacted now and then. After every step of a host's life — grants,
/// a kill path and restrictions set after a grant, conversions both ways, an LVB set,
/// releases, a holder gone leaving its persistent lease an orphan, an orphan released,
/// renewals — it reads back as the whole state. Fails when the registry forgets to mark a
/// lease changed through `&mut` (checked: index_mut's touch removed), or when a kill path
/// set after the grant does not move the state (checked).
#[test]
fn the_state_journal_reads_back_as_the_whole_state_after_every_change() {
    let mut bed = joined_bed();
    bed.journal = Some(JournalCheck::new(
        tenured::host::handover::StateJournal::with_compact_slack(8 << 10),
    ));
    let step = |bed: &mut Bed| {
        bed.run_until(Duration::from_secs(1), |_, _| true);
    };
    let lease = || LeaseRef {
        lockspace: Name::new("LS").expect("name"),
        name: Name::new("R").expect("name"),
    };
    let a = bed.client(0, 100);
    assert!(matches!(bed.acquire(a, false), Reply::Done(_)));
    let now = bed.clock.now();
    let kp = Command::KillPath {
        path: "/bin/kill-me".into(),
        args: vec!["x".into()],
    };
    assert!(matches!(bed.host.execute(now, a, kp), Some(Reply::Done(_))));
    step(&mut bed);
    assert!(matches!(
        bed.host.execute(now, a, Command::Restrict { bits: 0x4 }),
        Some(Reply::Done(_))
    ));
    step(&mut bed);
    let lvb = Command::LvbSet {
        lease: lease(),
        value: b"hello".to_vec(),
        holder: Holder::Me,
    };
    let _ = bed.host.execute(now, a, lvb);
    step(&mut bed);
    for shared in [true, false] {
        let conv = Command::Convert {
            lease: lease(),
            shared,
            holder: Holder::Me,
            no_wait: true,
        };
        assert!(matches!(bed.execute(a, conv), Reply::Done(_)));
        assert_eq!(
            bed.host.leases().next().map(|l| l.view().shared),
            Some(shared)
        );
    }
    let rel = Command::Release {
        leases: Leases::All,
        holder: Holder::Me,
        lvb: None,
    };
    assert!(matches!(bed.execute(a, rel), Reply::Done(_)));
    assert!(bed.host.leases().next().is_none());
    // Two shared holders, persistent: an orphan once both went, then released.
    let (c, d) = bed.two_persistent_shared_holders();
    let now = bed.clock.now();
    bed.host.client_closed(now, c);
    step(&mut bed);
    bed.host.client_closed(now, d);
    step(&mut bed);
    assert_eq!(orphan_count(&bed.host), 1);
    let e = bed.client(5, 105);
    let rel = Command::Release {
        leases: Leases::Orphans {
            space: Name::new("LS").expect("name"),
            name: None,
        },
        holder: Holder::Me,
        lvb: None,
    };
    let _ = bed.host.execute(bed.clock.now(), e, rel);
    bed.run_until(Duration::from_secs(10), |h, _| {
        h.leases().next().is_none() && h.in_flight().is_empty()
    });
    // Held again, then renewals for a while: the records outgrow the document and the
    // file is compacted.
    assert!(matches!(bed.acquire(e, false), Reply::Done(_)));
    run_for(&mut bed, Duration::from_secs(60));
    let j = bed.journal.as_ref().expect("journal");
    assert!(j.appends > 30, "{} appends", j.appends);
    assert!(j.wholes >= 2, "compacted: {} whole writes", j.wholes);
    let whole = state_of(&bed).to_bytes().len();
    assert!(
        j.largest < 2 * whole + (8 << 10) + 4096,
        "the file stays within a factor of the state: {} bytes, the state {whole}",
        j.largest
    );
    // Released, and the lockspace left: the journal says it is gone.
    let rel = Command::Release {
        leases: Leases::All,
        holder: Holder::Me,
        lvb: None,
    };
    assert!(matches!(bed.execute(e, rel), Reply::Done(_)));
    let rem = Command::LockspaceRemove {
        name: Name::new("LS").expect("name"),
        wait: false,
        kill_holders: false,
    };
    let _ = bed.host.execute(bed.clock.now(), e, rem);
    bed.run_until(Duration::from_secs(30), |h, _| h.spaces().is_empty());
    let j = bed.journal.as_ref().expect("journal");
    let back = tenured::host::handover::HostState::parse(&j.file).expect("parse");
    assert!(back.spaces.is_empty() && back.leases.is_empty(), "{back:?}");
}

/// A journal cut anywhere inside a record (a write cut short), a record of a lease the
/// file does not have, two leases of one id, or a record that is not one: a typed error,
/// never a panic and never a guess. Cut at a record's end, it is the state as of that write.
#[test]
fn damaged_state_journals_are_refused_with_typed_errors() {
    use tenured::host::handover::{HostState, StateError};
    let mut bed = joined_bed();
    bed.journal = Some(JournalCheck::new(
        tenured::host::handover::StateJournal::new(),
    ));
    let a = bed.client(0, 100);
    assert!(matches!(bed.acquire(a, false), Reply::Done(_)));
    let b = bed.client(1, 101);
    let now = bed.clock.now();
    bed.host.client_closed(now, a);
    bed.run_until(Duration::from_secs(10), |h, _| {
        h.leases().next().is_none() && h.in_flight().is_empty()
    });
    assert!(matches!(bed.acquire(b, false), Reply::Done(_)));
    run_for(&mut bed, Duration::from_secs(3));
    let j = bed.journal.take().expect("journal");
    assert_eq!(j.wholes, 1);
    let file = j.file;
    let doc_end = file
        .iter()
        .position(|&c| c == b'\n')
        .expect("a document line");
    assert!(file.len() > doc_end + 1000, "records follow the document");
    let mut cuts_refused = 0;
    for cut in doc_end + 1..file.len() {
        match HostState::parse(&file[..cut]) {
            Ok(_) => assert_eq!(file[cut - 1], b'\n', "cut at {cut} inside a record parsed"),
            Err(StateError::Damaged(_)) => {
                assert_ne!(file[cut - 1], b'\n', "cut at a record's end at {cut}");
                cuts_refused += 1;
            }
            Err(e) => panic!("cut at {cut}: {e}"),
        }
    }
    assert!(cuts_refused > 1000);
    let last = HostState::parse(&file).expect("whole journal");
    assert_eq!(last.leases.len(), 1);
    let id = last.leases[0].id;
    let with = |extra: &str| {
        let mut f = file.clone();
        f.extend_from_slice(extra.as_bytes());
        HostState::parse(&f)
    };
    for extra in [
        "{\"lease_gone\":999999}\n".to_owned(),
        format!("{{\"lease_gone\":{id}}}\n{{\"lease_gone\":{id}}}\n"),
        "{\"space_gone\":\"5a5a\"}\n".to_owned(),
        "{\"head\":{}}\n".to_owned(),
        "{\"bogus\":1}\n".to_owned(),
        "[]\n".to_owned(),
        "{\"lease_gone\":1}".to_owned(),
    ] {
        assert!(
            matches!(with(&extra), Err(StateError::Damaged(_))),
            "{extra:?} appended: {:?}",
            with(&extra).map(|_| ())
        );
    }
    // A lease record again under the id of another one: two leases of one id.
    let rec = format!(
        "{{\"lease\":{}}}\n",
        serde_json::to_string(&last.leases[0]).expect("json")
    );
    assert!(
        with(&rec).is_ok(),
        "a lease record replaces the one of its id"
    );
    let mut twice = last.clone();
    twice.leases.push(last.leases[0].clone());
    let mut f = twice.to_bytes();
    f.push(b'\n');
    assert!(matches!(HostState::parse(&f), Err(StateError::Damaged(_))));
    // Random byte damage of the records: never a panic.
    let mut x: u64 = 0x2545_f491;
    for _ in 0..2000 {
        let mut f = file.clone();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = doc_end + 1 + (x as usize) % (f.len() - doc_end - 1);
        f[i] = (x >> 40) as u8;
        let _ = HostState::parse(&f);
    }
}

fn state_of(bed: &Bed) -> tenured::host::handover::HostState {
    let now = bed.clock.now();
    let s = bed
        .host
        .state(now, "boot-1", 4242, 1, &mut |pid| pid as u64 * 10);
    // What is written is what is read back.
    let back = tenured::host::handover::HostState::parse(&s.to_bytes()).expect("parse");
    assert_eq!(back, s);
    back
}

/// Issue 18, restart after a crash: the successor adopts the lockspace (same generation, not
/// re-joined) and the lease (same lver, owned by the dead connection's pid), keeps renewing,
/// refuses the lease to another local client, and releases it when that pid exits. A holder
/// that died while no tenured ran has its lease released at once.
#[test]
fn a_successor_adopts_the_lockspace_and_leases_of_a_crashed_host() {
    for holder_survives in [true, false] {
        let mut bed = joined_bed();
        let a = bed.client(0, 100);
        let Reply::Done(Done::Acquired(got)) = bed.acquire(a, false) else {
            panic!("not acquired")
        };
        let lver = got[0].lver;
        let generation = bed.leader().owner_generation;
        run_for(&mut bed, Duration::from_millis(2500));
        let state = state_of(&bed);
        assert!(state.in_flight.is_empty(), "{:?}", state.in_flight);
        assert_eq!(state.spaces.len(), 1);
        assert_eq!(state.leases.len(), 1);
        state.adoptable("boot-1").expect("adoptable");
        bed.storage.crash(0);
        // Back 3 s later (the renewal deadline is 8 s after the last renewal).
        bed.clock
            .advance_to(bed.clock.now().saturating_add(Duration::from_secs(3)));
        let mut host = successor(&bed);
        let now = bed.clock.now();
        let report = host
            .adopt(
                now,
                &state,
                &|pid, ticks| holder_survives && pid == 100 && ticks == 1000,
                &|_| None,
            )
            .expect("adopted");
        assert_eq!(report.spaces, vec![("LS".to_owned(), generation)]);
        bed.host = host;
        if !holder_survives {
            assert_eq!(report.released, 1);
            bed.run_until(Duration::from_secs(10), |h, _| h.leases().next().is_none());
            run_for(&mut bed, Duration::from_secs(2));
            assert_eq!(bed.leader().timestamp, 0, "released on disk");
            continue;
        }
        assert_eq!(report.leases, 1);
        let outs: Vec<Output> = std::iter::from_fn(|| bed.host.poll_output()).collect();
        assert!(
            outs.iter().any(|o| matches!(o, Output::WatchPid(100))),
            "the holder pid is watched: {outs:?}"
        );
        let l = bed.host.leases().next().expect("lease").view();
        assert_eq!((l.lver, l.pid, l.owner), (lver, 100, "pid"));
        // Renewing on: 20 s is well past the 8 s deadline of the old renewals.
        let start = bed.clock.now();
        bed.run_until(Duration::from_secs(30), |h, _| {
            assert!(
                matches!(
                    h.space_state(&h.spaces()[0]),
                    Some(LockspaceState::Joined { generation: g }) if g == generation
                ),
                "the adopted lockspace stays joined in generation {generation}"
            );
            h.engine()
                .renewal_deadline(h.spaces()[0].id)
                .is_some_and(|d| d > start.saturating_add(Duration::from_secs(20)))
        });
        let leader = bed.leader();
        assert_eq!(
            (leader.owner_id, leader.owner_generation, leader.lver),
            (1, generation, lver)
        );
        // Local exclusion holds for the adopted lease.
        let b = bed.client(1, 101);
        match bed.acquire(b, false) {
            Reply::Error(e) => assert!(e.message.contains("already held"), "{}", e.message),
            Reply::Done(d) => panic!("granted over an adopted lease: {d:?}"),
        }
        let now = bed.clock.now();
        bed.host.pid_exited(now, 100);
        bed.run_until(Duration::from_secs(10), |h, _| h.leases().next().is_none());
        run_for(&mut bed, Duration::from_secs(2));
        assert_eq!(
            bed.leader().timestamp,
            0,
            "released on disk when its pid exited"
        );
    }
}

/// The adoption rule's refusals: past the renewal deadline with leases, with a lease
/// operation in flight, in another boot, or while the writer still runs. A refused adoption
/// leaves the successor empty.
#[test]
fn adoption_is_refused_past_the_deadline_in_flight_or_from_another_boot() {
    let mut bed = joined_bed();
    let a = bed.client(0, 100);
    assert!(matches!(bed.acquire(a, false), Reply::Done(_)));
    let state = state_of(&bed);
    assert!(state.adoptable("boot-2").is_err(), "another boot");
    let mine = tenured::host::handover::HostState {
        pid: std::process::id() as i32,
        pid_start_ticks: tenure_watchdog::marker::pid_start_ticks(std::process::id() as i32)
            .expect("ticks"),
        ..state.clone()
    };
    assert!(mine.adoptable("boot-1").is_err(), "the writer runs");
    // 9 s later: past 8T of the last renewal.
    bed.clock
        .advance_to(bed.clock.now().saturating_add(Duration::from_secs(9)));
    let mut host = successor(&bed);
    let now = bed.clock.now();
    let e = host
        .adopt(now, &state, &|_, _| true, &|_| None)
        .expect_err("past the deadline");
    assert!(e.to_string().contains("renewal deadline"), "{e}");
    assert!(host.spaces().is_empty() && host.leases().next().is_none());

    // An acquire in flight when the state was written.
    let mut bed = joined_bed();
    let a = bed.client(0, 100);
    let now = bed.clock.now();
    let cmd = Command::Acquire {
        resources: vec![ResourceSpec::parse(&format!("LS:R:{PATH}:{AREA}")).expect("spec")],
        no_wait: true,
        lvb: false,
        holder: Holder::Me,
        persistent: vec![false],
        adopt_orphan: false,
    };
    assert!(bed.host.execute(now, a, cmd).is_none(), "in flight");
    let state = state_of(&bed);
    let e = state.adoptable("boot-1").expect_err("in flight");
    assert!(e.to_string().contains("in flight"), "{e}");
}

/// The state file is external input: every field of a real state set to odd values (zero,
/// huge, off by one, empty or broken hex, wrong types) and random byte damage give a typed
/// error from parse or adopt, never a panic; an adoption that succeeds holds leases only as
/// the disk has them (the successor's first renewal checks the slot).
#[test]
fn damaged_state_files_are_refused_with_typed_errors() {
    let mut bed = joined_bed();
    let a = bed.client(0, 100);
    assert!(matches!(bed.acquire(a, false), Reply::Done(_)));
    let state = state_of(&bed);
    let good: serde_json::Value = serde_json::from_slice(&state.to_bytes()).expect("json");
    let mut leaves = Vec::new();
    fn walk(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    walk(x, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(i.to_string());
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }
    walk(&good, &mut Vec::new(), &mut leaves);
    assert!(leaves.len() > 40, "{} fields", leaves.len());
    let odd = [
        serde_json::json!(0),
        serde_json::json!(u64::MAX),
        serde_json::json!(513),
        serde_json::json!(-1),
        serde_json::json!(""),
        serde_json::json!("zz"),
        serde_json::json!("00"),
        serde_json::json!(null),
        serde_json::json!([]),
    ];
    let mut refused = 0;
    let mut tried = 0;
    for leaf in &leaves {
        for v in &odd {
            let mut doc = good.clone();
            let mut at = &mut doc;
            for k in leaf {
                at = match at {
                    serde_json::Value::Object(m) => m.get_mut(k).expect("key"),
                    serde_json::Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
                    _ => unreachable!(),
                };
            }
            *at = v.clone();
            tried += 1;
            let bytes = serde_json::to_vec(&doc).expect("json");
            let Ok(st) = tenured::host::handover::HostState::parse(&bytes) else {
                refused += 1;
                continue;
            };
            let mut host = successor(&bed);
            let now = bed.clock.now();
            if host.adopt(now, &st, &|_, _| true, &|_| None).is_err() {
                refused += 1;
            }
        }
    }
    // Random byte damage of the document.
    let bytes = state.to_bytes();
    let mut x: u64 = 0x9e37_79b9;
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..1 + (x % 4) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.truncate(b.len() - (x as usize % 3) * (x as usize % 97));
        if let Ok(st) = tenured::host::handover::HostState::parse(&b) {
            let mut host = successor(&bed);
            let now = bed.clock.now();
            let _ = host.adopt(now, &st, &|_, _| true, &|_| None);
        }
    }
    assert!(
        refused * 2 > tried,
        "most odd values are refused: {refused} of {tried}"
    );
}
