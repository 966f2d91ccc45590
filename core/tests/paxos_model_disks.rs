//! Exhaustive model check of leases on several disks: the real `PaxosAcquire` and
//! `PaxosRelease` machines inside the real `Majority` layer (core/src/paxos/disks.rs), two
//! hosts, three disks.
//!
//! The checker explores every interleaving of: each host's I/O on each disk landing or
//! completing (a read copies each sector at some instant between its issue and completion, so
//! it may return any value a sector held meanwhile), a disk failing an I/O (a failed write may
//! have landed or not; a failed read returns nothing), backoff timers, releases, retries, and
//! a crash (each in-flight write of the crashed host lands or not; once crashed it is dead).
//! Ballots per acquire are bounded; states are deduplicated by a 64-bit fingerprint.
//!
//! Checked in every reached state: at most one host holds the lease, no lver is won by two
//! hosts, and a won leader names the winner. A companion run lets disks drop acknowledged writes —
//! outside the protocol's model — and requires the checker to find the violation.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use tenure_core::clock::Time;
use tenure_core::delta::HostStatus;
use tenure_core::io::IoOutcome;
use tenure_core::paxos::disks::{DiskIo, Majority};
use tenure_core::paxos::{Acquired, PaxosAcquire, PaxosConfig, PaxosIo, PaxosRelease};
use tenure_core::timeouts::Timeouts;
use tenure_format::area::encode_resource_area;
use tenure_format::{Geometry, Name};

const SS: usize = 512;
/// Bytes of a sector that can be non-zero in this model (a leader record is 200 bytes).
const MEANINGFUL: usize = 200;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Flight {
    Idle,
    /// A write not yet landed; for a pair, the read that goes with it: after the write lands
    /// (linked), or issued with it (`read_from`: history indices at issue).
    Write {
        tag: u64,
        sector: usize,
        data: Vec<u8>,
        then_read: Option<(usize, usize)>,
        read_from: Option<Vec<u8>>,
    },
    /// A read; `from[k]` indexes sector `first + k`'s history at issue.
    Read {
        tag: u64,
        first: usize,
        count: usize,
        from: Vec<u8>,
    },
}

// Test-only state; variant sizes do not matter here.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
enum Op {
    Acquiring(Box<Majority<PaxosAcquire>>),
    Holding(Acquired),
    Releasing(Box<Majority<PaxosRelease>>),
    Finished,
    Crashed,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct HostState {
    op: Op,
    /// Per disk.
    io: Vec<Flight>,
    attempts: u8,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct State {
    /// Per disk, per sector, the values it held since the oldest pending read of it was
    /// issued; the last is the current value.
    disks: Vec<Vec<Vec<Vec<u8>>>>,
    hosts: Vec<HostState>,
    now: Time,
    /// Ghost: (lver, winner) of every successful acquire so far.
    won: Vec<(u64, u64)>,
    crashes: u8,
    faults: u8,
}

#[derive(Clone, Copy, Debug)]
struct Model {
    hosts: u64,
    disks: usize,
    ballots_max: u32,
    attempts_max: u8,
    crashes_max: u8,
    /// I/O failures (EIO) the disks may report in all.
    faults_max: u8,
    /// Outside the protocol's model: a write may be reported done without landing.
    lost_writes: bool,
    states_max: usize,
    exhaustive: bool,
}

fn cfg(host_id: u64) -> PaxosConfig {
    PaxosConfig {
        space_name: Name::new("LS").expect("name"),
        resource_name: Name::new("r").expect("name"),
        geometry: Geometry::LEGACY_512,
        area_offset: 0,
        host_id,
        generation: 1,
        timeouts: Timeouts::new(1, 10),
        no_wait: false,
        expect_lver: None,
        read_lvb: false,
        shared: false,
    }
}

fn fingerprint(s: &State) -> u64 {
    let mut h = DefaultHasher::new();
    for disk in &s.disks {
        for history in disk {
            history.len().hash(&mut h);
            for v in history {
                h.write(&v[..MEANINGFUL]);
            }
        }
    }
    for host in &s.hosts {
        match &host.op {
            Op::Acquiring(a) => (0u8, a).hash(&mut h),
            Op::Holding(a) => (1u8, a).hash(&mut h),
            Op::Releasing(r) => (2u8, r).hash(&mut h),
            Op::Finished => 3u8.hash(&mut h),
            Op::Crashed => 4u8.hash(&mut h),
        }
        for f in &host.io {
            match f {
                Flight::Idle => 0u8.hash(&mut h),
                Flight::Write {
                    sector,
                    data,
                    then_read,
                    read_from,
                    ..
                } => {
                    (1u8, sector, then_read, read_from).hash(&mut h);
                    h.write(&data[..MEANINGFUL]);
                }
                Flight::Read {
                    first, count, from, ..
                } => (2u8, first, count, from).hash(&mut h),
            }
        }
        host.attempts.hash(&mut h);
    }
    (s.now, &s.won, s.crashes, s.faults).hash(&mut h);
    h.finish()
}

/// What led to a state (shown through Debug in a counterexample trace).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
enum Event {
    Start,
    WriteLands {
        host: usize,
        disk: usize,
    },
    WriteLost {
        host: usize,
        disk: usize,
    },
    ReadCompletes {
        host: usize,
        disk: usize,
        choice: usize,
    },
    Fails {
        host: usize,
        disk: usize,
        landed: bool,
    },
    Timer {
        host: usize,
    },
    Releases {
        host: usize,
    },
    Retries {
        host: usize,
    },
    Crashes {
        host: usize,
        landed: u8,
    },
}

struct Checker {
    m: Model,
    seen: HashMap<u64, (u64, Event)>,
    current: (u64, Event),
    stack: Vec<(State, u64)>,
    violation: Option<String>,
    held_states: u64,
    max_ballots_seen: u32,
    budget_reached: bool,
    /// Some host acquired while some disk had failed an I/O of that acquire's run.
    held_despite_fault: bool,
    /// Most retract attempts seen in one acquire.
    max_retracts_seen: u32,
}

impl Checker {
    fn new(m: Model) -> Self {
        let n = m.hosts as usize;
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            m.hosts,
        );
        let disk: Vec<Vec<Vec<u8>>> = area
            .chunks(SS)
            .take(n + 2)
            .map(|c| vec![c.to_vec()])
            .collect();
        let now = Time::from_nanos(1_000_000_000_000);
        let mut s = State {
            disks: vec![disk; m.disks],
            hosts: Vec::new(),
            now,
            won: Vec::new(),
            crashes: 0,
            faults: 0,
        };
        for id in 1..=m.hosts {
            let c = cfg(id);
            let a = PaxosAcquire::new(c.clone(), now);
            let maj = Majority::new(a, &c, vec![0; m.disks]).expect("majority");
            s.hosts.push(HostState {
                op: Op::Acquiring(Box::new(maj)),
                io: vec![Flight::Idle; m.disks],
                attempts: 1,
            });
        }
        let mut c = Checker {
            m,
            seen: HashMap::new(),
            current: (0, Event::Start),
            stack: Vec::new(),
            violation: None,
            held_states: 0,
            max_ballots_seen: 0,
            budget_reached: false,
            held_despite_fault: false,
            max_retracts_seen: 0,
        };
        for i in 0..s.hosts.len() {
            c.drain(&mut s, i);
        }
        c.current = (fingerprint(&s), Event::Start);
        c.push(s);
        c
    }

    fn push(&mut self, s: State) {
        if self.violation.is_some() {
            return;
        }
        for h in &s.hosts {
            if let Op::Acquiring(a) = &h.op {
                self.max_ballots_seen = self.max_ballots_seen.max(a.machine_ref().ballots());
                self.max_retracts_seen = self.max_retracts_seen.max(a.machine_ref().retracts());
                if a.machine_ref().ballots() > self.m.ballots_max {
                    return;
                }
            }
        }
        if let Err(v) = check(&s) {
            let mut trace = vec![format!("{:?}", self.current.1)];
            let mut at = self.current.0;
            while let Some((parent, ev)) = self.seen.get(&at) {
                trace.push(format!("{ev:?}"));
                if *parent == at || trace.len() > 10_000 {
                    break;
                }
                at = *parent;
            }
            trace.reverse();
            self.violation = Some(format!(
                "{v}\ntrace (oldest first):\n  {}",
                trace.join("\n  ")
            ));
            return;
        }
        let fp = fingerprint(&s);
        if !self.seen.contains_key(&fp) {
            self.seen.insert(fp, self.current);
            if s.hosts.iter().any(|h| matches!(h.op, Op::Holding(_))) {
                self.held_states += 1;
                self.held_despite_fault |= s.faults > 0;
            }
            self.stack.push((s, fp));
        }
    }

    /// Moves a host forward until it waits for the environment.
    fn drain(&mut self, s: &mut State, i: usize) {
        let host_id = i as u64 + 1;
        loop {
            let now = s.now;
            let crashed: Vec<bool> = s.hosts.iter().map(|h| h.op == Op::Crashed).collect();
            let h = &mut s.hosts[i];
            // As the blocking driver does, an outcome is taken only once every disk answered
            // (stragglers of the last step included).
            let idle = h.io.iter().all(|f| *f == Flight::Idle);
            let dio = match &mut h.op {
                Op::Acquiring(a) => {
                    if let Some(r) = idle.then(|| a.machine().poll_result()).flatten() {
                        match r {
                            Ok(acq) => {
                                s.won.push((acq.lver, host_id));
                                if acq.leader.owner_id != host_id {
                                    self.violation = Some(format!(
                                        "host {host_id} won a leader naming {}",
                                        acq.leader.owner_id
                                    ));
                                }
                                h.op = Op::Holding(acq);
                            }
                            Err(_) => h.op = Op::Finished,
                        }
                        continue;
                    }
                    if let Some((owner, _)) = a.machine().poll_owner_query() {
                        let status = if crashed[owner as usize - 1] {
                            HostStatus::Dead
                        } else {
                            HostStatus::Live
                        };
                        a.machine().handle_owner_status(now, status, true);
                        continue;
                    }
                    a.poll_io().map(|d| (d, a.write_data().to_vec()))
                }
                Op::Releasing(r) => {
                    if let Some(res) = idle.then(|| r.machine().poll_result()).flatten() {
                        // A release that fails (a majority of disks failed it) leaves the
                        // lease possibly held on disk; the holder stopped using it already.
                        let _ = res;
                        h.op = Op::Finished;
                        continue;
                    }
                    r.poll_io().map(|d| (d, r.write_data().to_vec()))
                }
                Op::Holding(_) | Op::Finished | Op::Crashed => return,
            };
            let Some((DiskIo { disk, io, tag }, data)) = dio else {
                return;
            };
            assert_eq!(
                s.hosts[i].io[disk],
                Flight::Idle,
                "two I/Os at once on disk {disk}"
            );
            let flight = match io {
                PaxosIo::Write { offset } => Flight::Write {
                    tag,
                    sector: offset as usize / SS,
                    data,
                    then_read: None,
                    read_from: None,
                },
                PaxosIo::WriteAndRead {
                    write_offset,
                    read_offset,
                    read_len,
                } => {
                    let (first, count) = (read_offset as usize / SS, read_len / SS);
                    let Flight::Read { from, .. } = issue_read(s, disk, tag, first, count) else {
                        unreachable!("issue_read makes a read")
                    };
                    Flight::Write {
                        tag,
                        sector: write_offset as usize / SS,
                        data,
                        then_read: Some((first, count)),
                        read_from: Some(from),
                    }
                }
                PaxosIo::WriteThenRead {
                    write_offset,
                    read_offset,
                    read_len,
                } => Flight::Write {
                    tag,
                    sector: write_offset as usize / SS,
                    data,
                    then_read: Some((read_offset as usize / SS, read_len / SS)),
                    read_from: None,
                },
                PaxosIo::Read { offset, len } => {
                    issue_read(s, disk, tag, offset as usize / SS, len / SS)
                }
            };
            s.hosts[i].io[disk] = flight;
        }
    }

    fn deliver(
        &mut self,
        s: &mut State,
        i: usize,
        disk: usize,
        tag: u64,
        outcome: IoOutcome,
        data: &[u8],
    ) {
        let now = s.now;
        match &mut s.hosts[i].op {
            Op::Acquiring(a) => a.handle_io(now, disk, tag, outcome, data),
            Op::Releasing(r) => r.handle_io(now, disk, tag, outcome, data),
            // A crashed host's flights were dropped; nothing else is waiting.
            other => panic!("I/O completion for a host in {other:?}"),
        }
        self.drain(s, i);
    }

    fn successors(&mut self, s: &State, fp: u64) {
        for i in 0..s.hosts.len() {
            let h = &s.hosts[i];
            if h.op == Op::Crashed {
                continue;
            }
            for d in 0..self.m.disks {
                match &h.io[d] {
                    Flight::Write {
                        tag,
                        sector,
                        data,
                        then_read,
                        read_from,
                    } => {
                        let (tag, sector, then_read) = (*tag, *sector, *then_read);
                        // Lands (or, outside the model, is acknowledged without landing).
                        let mut outcomes = vec![true];
                        if self.m.lost_writes {
                            outcomes.push(false);
                        }
                        for land in outcomes {
                            let mut n = s.clone();
                            if land {
                                n.disks[d][sector].push(data.clone());
                            }
                            match then_read {
                                Some((first, count)) => {
                                    n.hosts[i].io[d] = match read_from {
                                        None => issue_read(&n, d, tag, first, count),
                                        Some(from) => Flight::Read {
                                            tag,
                                            first,
                                            count,
                                            from: from.clone(),
                                        },
                                    };
                                    prune(&mut n);
                                }
                                None => {
                                    n.hosts[i].io[d] = Flight::Idle;
                                    prune(&mut n);
                                    self.deliver(&mut n, i, d, tag, IoOutcome::Done, &[]);
                                }
                            }
                            self.current = (
                                fp,
                                if land {
                                    Event::WriteLands { host: i, disk: d }
                                } else {
                                    Event::WriteLost { host: i, disk: d }
                                },
                            );
                            self.push(n);
                        }
                        // Fails: the data may have reached the disk or not.
                        if s.faults < self.m.faults_max {
                            for land in [false, true] {
                                let mut n = s.clone();
                                if land {
                                    n.disks[d][sector].push(data.clone());
                                }
                                n.faults += 1;
                                n.hosts[i].io[d] = Flight::Idle;
                                prune(&mut n);
                                let eio = IoOutcome::Failed { errno: 5 };
                                self.deliver(&mut n, i, d, tag, eio, &[]);
                                self.current = (
                                    fp,
                                    Event::Fails {
                                        host: i,
                                        disk: d,
                                        landed: land,
                                    },
                                );
                                self.push(n);
                            }
                        }
                    }
                    Flight::Read {
                        tag,
                        first,
                        count,
                        from,
                    } => {
                        let (tag, first, count) = (*tag, *first, *count);
                        let ranges: Vec<(usize, usize)> = (0..count)
                            .map(|k| (usize::from(from[k]), s.disks[d][first + k].len()))
                            .collect();
                        let mut pick: Vec<usize> = ranges.iter().map(|r| r.0).collect();
                        let mut choice = 0;
                        loop {
                            let mut buf = Vec::with_capacity(count * SS);
                            for (k, &v) in pick.iter().enumerate() {
                                buf.extend_from_slice(&s.disks[d][first + k][v]);
                            }
                            let mut n = s.clone();
                            n.hosts[i].io[d] = Flight::Idle;
                            prune(&mut n);
                            self.deliver(&mut n, i, d, tag, IoOutcome::Done, &buf);
                            self.current = (
                                fp,
                                Event::ReadCompletes {
                                    host: i,
                                    disk: d,
                                    choice,
                                },
                            );
                            self.push(n);
                            choice += 1;
                            let mut k = 0;
                            while k < pick.len() {
                                pick[k] += 1;
                                if pick[k] < ranges[k].1 {
                                    break;
                                }
                                pick[k] = ranges[k].0;
                                k += 1;
                            }
                            if k == pick.len() {
                                break;
                            }
                        }
                        if s.faults < self.m.faults_max {
                            let mut n = s.clone();
                            n.faults += 1;
                            n.hosts[i].io[d] = Flight::Idle;
                            prune(&mut n);
                            let eio = IoOutcome::Failed { errno: 5 };
                            self.deliver(&mut n, i, d, tag, eio, &[]);
                            self.current = (
                                fp,
                                Event::Fails {
                                    host: i,
                                    disk: d,
                                    landed: false,
                                },
                            );
                            self.push(n);
                        }
                    }
                    Flight::Idle => {}
                }
            }
            if let Op::Acquiring(a) = &h.op {
                if let Some(t) = a.machine_ref().poll_timeout() {
                    let mut n = s.clone();
                    n.now = n.now.max(t);
                    let now = n.now;
                    if let Op::Acquiring(a) = &mut n.hosts[i].op {
                        a.machine().handle_timeout(now);
                    }
                    self.drain(&mut n, i);
                    self.current = (fp, Event::Timer { host: i });
                    self.push(n);
                }
            }
            if let Op::Holding(held) = &h.op {
                let mut n = s.clone();
                let c = cfg(i as u64 + 1);
                let r = PaxosRelease::new(c.clone(), held.clone(), n.now);
                let maj = Majority::new(r, &c, vec![0; self.m.disks]).expect("majority");
                n.hosts[i].op = Op::Releasing(Box::new(maj));
                self.drain(&mut n, i);
                self.current = (fp, Event::Releases { host: i });
                self.push(n);
            }
            let idle = h.io.iter().all(|f| *f == Flight::Idle);
            if h.op == Op::Finished && idle && h.attempts < self.m.attempts_max {
                let mut n = s.clone();
                let c = cfg(i as u64 + 1);
                let a = PaxosAcquire::new(c.clone(), n.now);
                let maj = Majority::new(a, &c, vec![0; self.m.disks]).expect("majority");
                n.hosts[i].op = Op::Acquiring(Box::new(maj));
                n.hosts[i].attempts += 1;
                self.drain(&mut n, i);
                self.current = (fp, Event::Retries { host: i });
                self.push(n);
            }
            if s.crashes < self.m.crashes_max {
                // Each in-flight write lands or not.
                let writes: Vec<usize> = (0..self.m.disks)
                    .filter(|&d| matches!(h.io[d], Flight::Write { .. }))
                    .collect();
                for mask in 0u8..(1 << writes.len()) {
                    let mut n = s.clone();
                    for (k, &d) in writes.iter().enumerate() {
                        if mask & (1 << k) != 0 {
                            if let Flight::Write { sector, data, .. } = &h.io[d] {
                                n.disks[d][*sector].push(data.clone());
                            }
                        }
                    }
                    n.hosts[i].op = Op::Crashed;
                    n.hosts[i].io = vec![Flight::Idle; self.m.disks];
                    prune(&mut n);
                    n.crashes += 1;
                    self.current = (
                        fp,
                        Event::Crashes {
                            host: i,
                            landed: mask,
                        },
                    );
                    self.push(n);
                }
            }
        }
    }

    fn run(&mut self) -> Result<usize, String> {
        while let Some((s, fp)) = self.stack.pop() {
            if self.seen.len() % 500_000 == 0 && std::env::var_os("MODEL_PROGRESS").is_some() {
                eprintln!("{} states, stack {}", self.seen.len(), self.stack.len());
            }
            if self.seen.len() > self.m.states_max {
                if self.m.exhaustive {
                    return Err(format!("state space above {} states", self.m.states_max));
                }
                self.budget_reached = true;
                return Ok(self.seen.len());
            }
            self.successors(&s, fp);
            if let Some(v) = &self.violation {
                return Err(v.clone());
            }
        }
        Ok(self.seen.len())
    }
}

fn issue_read(s: &State, disk: usize, tag: u64, first: usize, count: usize) -> Flight {
    let from = (0..count)
        .map(|k| u8::try_from(s.disks[disk][first + k].len() - 1).expect("short history"))
        .collect();
    Flight::Read {
        tag,
        first,
        count,
        from,
    }
}

/// Drops sector values no pending read can return any more, and renumbers the reads'
/// history indices, so equal situations have equal states.
fn prune(s: &mut State) {
    for d in 0..s.disks.len() {
        for sector in 0..s.disks[d].len() {
            let oldest_needed = s
                .hosts
                .iter_mut()
                .filter_map(|h| match pending_read(&mut h.io[d]) {
                    Some((first, count, from)) if (first..first + count).contains(&sector) => {
                        from.get(sector - first).copied()
                    }
                    _ => None,
                })
                .min()
                .map_or(s.disks[d][sector].len() - 1, usize::from);
            if oldest_needed == 0 {
                continue;
            }
            s.disks[d][sector].drain(..oldest_needed);
            for h in &mut s.hosts {
                if let Some((first, count, from)) = pending_read(&mut h.io[d]) {
                    if (first..first + count).contains(&sector) {
                        if let Some(f) = from.get_mut(sector - first) {
                            *f -= u8::try_from(oldest_needed).expect("short history");
                        }
                    }
                }
            }
        }
    }
}

/// The read of a flight that is pending (issued, not completed): (first, count, from).
fn pending_read(f: &mut Flight) -> Option<(usize, usize, &mut Vec<u8>)> {
    match f {
        Flight::Read {
            first, count, from, ..
        } => Some((*first, *count, from)),
        Flight::Write {
            then_read: Some((first, count)),
            read_from: Some(from),
            ..
        } => Some((*first, *count, from)),
        _ => None,
    }
}

fn check(s: &State) -> Result<(), String> {
    let holders: Vec<usize> = s
        .hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| matches!(h.op, Op::Holding(_)))
        .map(|(i, _)| i + 1)
        .collect();
    if holders.len() > 1 {
        return Err(format!("hosts {holders:?} hold the lease at once"));
    }
    // One value per instance. (The same host may win its own instance again: after its
    // release failed on disk, a later acquire of its finds the instance still chosen for it.)
    let mut won = s.won.clone();
    won.sort_unstable();
    won.dedup();
    if won.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(format!("an lver was won by two hosts: {:?}", s.won));
    }
    Ok(())
}

fn states_budget(default: usize) -> usize {
    std::env::var("MODEL_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Two hosts, three disks, one acquire each with up to two ballots, a release, one crash and
/// one disk fault: every interleaving within the budget keeps exclusion.
/// `MODEL_EXHAUSTIVE=1` requires the search to finish (no budget).
#[test]
fn two_hosts_three_disks_keep_exclusion() {
    let exhaustive = std::env::var_os("MODEL_EXHAUSTIVE").is_some();
    let m = Model {
        hosts: 2,
        disks: 3,
        // `MODEL_BALLOTS=1` for a configuration an exhaustive run can finish.
        ballots_max: std::env::var("MODEL_BALLOTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
        attempts_max: 1,
        crashes_max: 1,
        faults_max: 1,
        lost_writes: false,
        states_max: if exhaustive {
            usize::MAX
        } else {
            states_budget(1_500_000)
        },
        exhaustive,
    };
    let mut c = Checker::new(m);
    let states = c.run().unwrap_or_else(|v| panic!("{m:?}: {v}"));
    eprintln!(
        "{m:?}: {states} states{}, {} with a holder, max ballots {}, held despite a disk fault: {}",
        if c.budget_reached {
            " (budget reached: bounded search)"
        } else {
            " (exhaustive)"
        },
        c.held_states,
        c.max_ballots_seen,
        c.held_despite_fault
    );
    assert!(c.held_states > 0);
    assert!(
        c.held_despite_fault,
        "a majority carried an acquire past a fault"
    );
    assert!(
        c.max_ballots_seen >= 2,
        "contention made a second ballot happen"
    );
}

/// Two hosts on one disk that fails up to two I/Os: failures past phase 2 make the acquirer
/// retract (run the ballot again and give back what it wins) — every interleaving within the
/// budget keeps exclusion, and retracts do happen.
#[test]
fn io_failures_past_phase_2_are_retracted_safely() {
    let exhaustive = std::env::var_os("MODEL_EXHAUSTIVE").is_some();
    let m = Model {
        hosts: 2,
        disks: 1,
        ballots_max: 3,
        attempts_max: 2,
        crashes_max: 1,
        faults_max: 2,
        lost_writes: false,
        states_max: if exhaustive {
            usize::MAX
        } else {
            states_budget(1_000_000)
        },
        exhaustive,
    };
    let mut c = Checker::new(m);
    let states = c.run().unwrap_or_else(|v| panic!("{m:?}: {v}"));
    eprintln!(
        "{m:?}: {states} states{}, {} with a holder, max ballots {}, max retracts {}",
        if c.budget_reached {
            " (budget reached: bounded search)"
        } else {
            " (exhaustive)"
        },
        c.held_states,
        c.max_ballots_seen,
        c.max_retracts_seen
    );
    assert!(c.held_states > 0);
    assert!(
        c.max_retracts_seen >= 1,
        "some failure past phase 2 was retracted"
    );
}

/// Disks that drop acknowledged writes are outside what Disk Paxos survives: the checker
/// must find the violation, proving it can see one on several disks.
#[test]
fn the_checker_finds_the_violation_lost_writes_cause_on_three_disks() {
    let mut c = Checker::new(Model {
        hosts: 2,
        disks: 3,
        ballots_max: 1,
        attempts_max: 1,
        crashes_max: 0,
        faults_max: 0,
        lost_writes: true,
        states_max: 5_000_000,
        exhaustive: false,
    });
    let err = c.run().expect_err("lost writes must break exclusion");
    assert!(
        err.contains("at once") || err.contains("two hosts"),
        "{err}"
    );
}
