//! Exhaustive model check of the paxos acquire/release state machines (the real
//! `PaxosAcquire` and `PaxosRelease`, not a model of them) for small configurations.
//!
//! The checker explores every interleaving of: each host's writes landing, each host's reads
//! copying **one sector at a time** (a multi-sector read is not atomic, only a sector is —
//! Disk Paxos' assumption), backoff timers firing, releases, and crashes (a crashed host's
//! in-flight write may land or not; once crashed it is dead, so owner queries about it answer
//! Dead — the host-dead time has passed). Ballots per acquire are bounded. States are
//! deduplicated by a 128-bit fingerprint.
//!
//! Checked in every reached state: at most one host holds the lease (a host releasing has
//! already stopped using it, a crashed host is dead), no lver is won twice, and a won leader
//! names the winner. A companion test gives the disk a fault outside the protocol's model
//! (a write reported done that never lands) and requires the checker to find the violation,
//! so the check is known to be able to fail.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use tenure_core::clock::Time;
use tenure_core::delta::HostStatus;
use tenure_core::io::IoOutcome;
use tenure_core::paxos::{Acquired, BallotCache, PaxosAcquire, PaxosConfig, PaxosIo, PaxosRelease};
use tenure_core::timeouts::Timeouts;
use tenure_format::area::encode_resource_area;
use tenure_format::{Geometry, Name};

const SS: usize = 512;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Flight {
    Idle,
    /// A write not yet landed; for a pair, the read that goes with it: after the write lands
    /// (linked), or issued with it (`read_from`: the history indices at issue — the read may
    /// return any value from then until the pair completes, after the write landed).
    Write {
        sector: usize,
        data: Vec<u8>,
        then_read: Option<(usize, usize)>,
        read_from: Option<Vec<u8>>,
    },
    /// A read of `count` sectors from `first`. `from[k]` is the index, in sector
    /// `first + k`'s history, of the value it had when the read was issued: the read may
    /// return any value from there to the current one (it copies each sector at some instant
    /// between issue and completion, and copying has no other effect).
    Read {
        first: usize,
        count: usize,
        from: Vec<u8>,
    },
}

// Test-only state; variant sizes do not matter here.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Op {
    Acquiring(Box<PaxosAcquire>),
    Holding(Acquired),
    Releasing(Box<PaxosRelease>),
    /// Exclusive → shared: holds it exclusively until its RELEASED+SHARED dblock write has
    /// landed (`marked`), shared from then on.
    ConvertingDown(Box<PaxosRelease>, Acquired, bool),
    /// Shared → exclusive: a shared holder until the conversion reports success; on failure
    /// it still holds the lease shared.
    ConvertingUp(Box<PaxosAcquire>, Acquired),
    Finished,
    Crashed,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct HostState {
    op: Op,
    io: Flight,
    attempts: u8,
    /// What its last release left: its next acquire starts from it (as tenured's would).
    cache: Option<BallotCache>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    /// Per sector, the values it held since the oldest pending read of it was issued; the
    /// last is the current value.
    disk: Vec<Vec<Vec<u8>>>,
    hosts: Vec<HostState>,
    now: Time,
    /// Ghost: (lver, winner) of every successful acquire so far.
    won: Vec<(u64, u64)>,
    crashes: u8,
}

#[derive(Clone, Copy, Debug)]
struct Model {
    hosts: u64,
    ballots_max: u32,
    attempts_max: u8,
    crashes_max: u8,
    /// Fault outside the protocol's model: a write may be reported done without landing.
    lost_writes: bool,
    states_max: usize,
    /// Bit h-1 set: host h acquires in shared mode.
    shared_mask: u8,
    /// Reaching `states_max` fails the test (an exhaustive check) instead of ending a
    /// bounded search.
    exhaustive: bool,
    /// Exclusive holders may convert to shared; each conversion counts as an attempt.
    convert: bool,
    /// Shared holders may convert to exclusive; each conversion counts as an attempt.
    convert_up: bool,
}

fn cfg(m: &Model, host_id: u64) -> PaxosConfig {
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
        shared: m.shared_mask & (1 << (host_id - 1)) != 0,
    }
}

/// Bytes of a sector that can be non-zero (a leader record is 200 bytes; a dblock with its
/// mode block ends before that); the rest of every sector stays zero in this model.
const MEANINGFUL: usize = 200;

fn hash_sectors<H: Hasher>(bytes: &[u8], h: &mut H) {
    for chunk in bytes.chunks(SS) {
        h.write(&chunk[..MEANINGFUL.min(chunk.len())]);
    }
}

/// A 64-bit fingerprint of everything that matters in a state (collision odds for a few
/// million states: about one in a million).
fn fingerprint(s: &State) -> u64 {
    let mut h = DefaultHasher::new();
    for history in &s.disk {
        history.len().hash(&mut h);
        for value in history {
            hash_sectors(value, &mut h);
        }
    }
    for host in &s.hosts {
        match &host.op {
            Op::Acquiring(a) => (0u8, a).hash(&mut h),
            Op::Holding(a) => (1u8, a).hash(&mut h),
            Op::Releasing(r) => (2u8, r).hash(&mut h),
            Op::Finished => 3u8.hash(&mut h),
            Op::Crashed => 4u8.hash(&mut h),
            Op::ConvertingDown(r, held, marked) => (6u8, r, held, marked).hash(&mut h),
            Op::ConvertingUp(a, held) => (7u8, a, held).hash(&mut h),
        }
        match &host.io {
            Flight::Idle => 0u8.hash(&mut h),
            Flight::Write {
                sector,
                data,
                then_read,
                read_from,
            } => {
                (1u8, sector, then_read, read_from).hash(&mut h);
                hash_sectors(data, &mut h);
            }
            Flight::Read { first, count, from } => (2u8, first, count, from).hash(&mut h),
        }
        (host.attempts, &host.cache).hash(&mut h);
    }
    (s.now, &s.won, s.crashes).hash(&mut h);
    h.finish()
}

/// What led to a state, packed (formatted only for a counterexample trace).
#[derive(Clone, Copy, Debug)]
enum Event {
    Start,
    WriteLands { host: usize, landed: bool },
    ReadCompletes { host: usize, choice: usize },
    Timer { host: usize },
    Releases { host: usize },
    Retries { host: usize },
    Converts { host: usize },
    Crashes { host: usize, write_landed: bool },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Event::Start => write!(f, "start"),
            Event::WriteLands { host, landed } => {
                write!(
                    f,
                    "host {} write {}",
                    host + 1,
                    if landed { "lands" } else { "is lost" }
                )
            }
            Event::ReadCompletes { host, choice } => {
                write!(
                    f,
                    "host {} read completes (value choice {choice})",
                    host + 1
                )
            }
            Event::Timer { host } => write!(f, "host {} timer", host + 1),
            Event::Releases { host } => write!(f, "host {} releases", host + 1),
            Event::Retries { host } => write!(f, "host {} retries acquire", host + 1),
            Event::Converts { host } => write!(f, "host {} converts", host + 1),
            Event::Crashes { host, write_landed } => {
                write!(
                    f,
                    "host {} crashes (in-flight write lands: {write_landed})",
                    host + 1
                )
            }
        }
    }
}

struct Checker {
    m: Model,
    /// Fingerprint → (parent fingerprint, event that led here), for counterexample traces.
    seen: HashMap<u64, (u64, Event)>,
    current: (u64, Event),
    stack: Vec<(State, u64)>,
    violation: Option<String>,
    acquired_states: u64,
    max_ballots_seen: u32,
    pruned: u64,
    budget_reached: bool,
    shared_held: bool,
    exclusive_held: bool,
    two_shared: bool,
    converted_down: bool,
    converted_up: bool,
    /// Some acquire started from a release's ballot cache.
    cached_starts: bool,
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
            disk,
            hosts: Vec::new(),
            now,
            won: Vec::new(),
            crashes: 0,
        };
        for id in 1..=m.hosts {
            s.hosts.push(HostState {
                op: Op::Acquiring(Box::new(PaxosAcquire::new(cfg(&m, id), now))),
                io: Flight::Idle,
                attempts: 1,
                cache: None,
            });
        }
        let mut c = Checker {
            m,
            seen: HashMap::new(),
            current: (0, Event::Start),
            stack: Vec::new(),
            violation: None,
            acquired_states: 0,
            max_ballots_seen: 0,
            pruned: 0,
            budget_reached: false,
            shared_held: false,
            exclusive_held: false,
            two_shared: false,
            converted_down: false,
            converted_up: false,
            cached_starts: false,
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
            if let Op::Acquiring(a) | Op::ConvertingUp(a, _) = &h.op {
                self.max_ballots_seen = self.max_ballots_seen.max(a.ballots());
                if a.ballots() > self.m.ballots_max || a.short_hold_retries() > self.m.ballots_max {
                    self.pruned += 1;
                    return;
                }
            }
        }
        if let Err(v) = check(&s) {
            let mut trace = vec![self.current.1.to_string()];
            let mut chain = vec![self.current.0];
            let mut at = self.current.0;
            while let Some((parent, ev)) = self.seen.get(&at) {
                trace.push(format!("{ev}"));
                if *parent == at || trace.len() > 10_000 {
                    break;
                }
                at = *parent;
                chain.push(at);
            }
            trace.reverse();
            chain.reverse();
            self.violation = Some(format!(
                "{v}\nstate: {:#?}\ntrace (oldest first):\n  {}\nstates along the trace:\n{}",
                summary(&s),
                trace.join("\n  "),
                explain(self.m, &chain).join("\n")
            ));
            return;
        }
        let fp = fingerprint(&s);
        if !self.seen.contains_key(&fp) {
            self.seen.insert(fp, self.current);
            if s.hosts.iter().any(|h| matches!(h.op, Op::Holding(_))) {
                self.acquired_states += 1;
            }
            let shared_now = s
                .hosts
                .iter()
                .filter(|h| matches!(&h.op, Op::Holding(a) if a.shared))
                .count();
            self.shared_held |= shared_now > 0;
            self.two_shared |= shared_now > 1;
            self.exclusive_held |= s
                .hosts
                .iter()
                .any(|h| matches!(&h.op, Op::Holding(a) if !a.shared));
            self.stack.push((s, fp));
        }
    }

    /// Moves a host's machine forward until it waits for the environment: collects its
    /// result, answers owner queries from the model, takes its next I/O.
    fn drain(&mut self, s: &mut State, i: usize) {
        let host_id = i as u64 + 1;
        loop {
            let now = s.now;
            let crashed: Vec<bool> = s.hosts.iter().map(|h| h.op == Op::Crashed).collect();
            let h = &mut s.hosts[i];
            match &mut h.op {
                Op::Acquiring(a) => {
                    if let Some(r) = a.poll_result() {
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
                    if let Some((owner, _gen)) = a.poll_owner_query() {
                        let status = if crashed[owner as usize - 1] {
                            HostStatus::Dead
                        } else {
                            HostStatus::Live
                        };
                        a.handle_owner_status(now, status, true);
                        continue;
                    }
                    if let Some(io) = a.poll_io() {
                        h.io = flight(io, a.write_data());
                        issue_if_read(s, i);
                        continue;
                    }
                    return;
                }
                Op::ConvertingUp(a, held) => {
                    if let Some(r) = a.poll_result() {
                        match r {
                            Ok(acq) => {
                                s.won.push((acq.lver, host_id));
                                self.converted_up = true;
                                h.op = Op::Holding(acq);
                            }
                            Err(_) => h.op = Op::Holding(a.shared_hold_after_failure(held)),
                        }
                        continue;
                    }
                    if let Some((owner, _gen)) = a.poll_owner_query() {
                        let status = if crashed[owner as usize - 1] {
                            HostStatus::Dead
                        } else {
                            HostStatus::Live
                        };
                        a.handle_owner_status(now, status, true);
                        continue;
                    }
                    if let Some(io) = a.poll_io() {
                        h.io = flight(io, a.write_data());
                        issue_if_read(s, i);
                        continue;
                    }
                    return;
                }
                Op::ConvertingDown(r, held, _) => {
                    if let Some(res) = r.poll_result() {
                        assert!(res.is_ok(), "conversion failed in the model: {res:?}");
                        self.converted_down = true;
                        h.op = Op::Holding(PaxosRelease::as_shared(held));
                        continue;
                    }
                    if let Some(io) = r.poll_io() {
                        h.io = flight(io, r.write_data());
                        issue_if_read(s, i);
                        continue;
                    }
                    return;
                }
                Op::Releasing(r) => {
                    if let Some(res) = r.poll_result() {
                        assert!(res.is_ok(), "release failed in the model: {res:?}");
                        h.cache = r.cache();
                        h.op = Op::Finished;
                        continue;
                    }
                    if let Some(io) = r.poll_io() {
                        h.io = flight(io, r.write_data());
                        issue_if_read(s, i);
                        continue;
                    }
                    return;
                }
                Op::Holding(_) | Op::Finished | Op::Crashed => return,
            }
        }
    }

    fn deliver(&mut self, s: &mut State, i: usize, data: &[u8]) {
        let now = s.now;
        match &mut s.hosts[i].op {
            Op::Acquiring(a) | Op::ConvertingUp(a, _) => a.handle_io(now, IoOutcome::Done, data),
            Op::Releasing(r) | Op::ConvertingDown(r, _, _) => {
                r.handle_io(now, IoOutcome::Done, data)
            }
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
            match &h.io {
                Flight::Write {
                    sector,
                    data,
                    then_read,
                    read_from,
                } => {
                    let mut landed = vec![true];
                    if self.m.lost_writes {
                        landed.push(false);
                    }
                    for land in landed {
                        let mut n = s.clone();
                        if land {
                            n.disk[*sector].push(data.clone());
                            // Its RELEASED+SHARED dblock is on disk: it holds shared now.
                            if let Op::ConvertingDown(_, _, marked) = &mut n.hosts[i].op {
                                *marked = true;
                            }
                        }
                        match then_read {
                            Some((first, count)) => {
                                n.hosts[i].io = match read_from {
                                    None => issue_read(&n, *first, *count),
                                    Some(from) => Flight::Read {
                                        first: *first,
                                        count: *count,
                                        from: from.clone(),
                                    },
                                };
                                prune(&mut n);
                            }
                            None => {
                                n.hosts[i].io = Flight::Idle;
                                prune(&mut n);
                                self.deliver(&mut n, i, &[]);
                            }
                        }
                        self.current = (
                            fp,
                            Event::WriteLands {
                                host: i,
                                landed: land,
                            },
                        );
                        self.push(n);
                    }
                }
                Flight::Read { first, count, from } => {
                    // Completion: every combination of one value per sector, each from its
                    // value at issue to its current one.
                    let ranges: Vec<(usize, usize)> = (0..*count)
                        .map(|k| (usize::from(from[k]), s.disk[first + k].len()))
                        .collect();
                    let mut pick: Vec<usize> = ranges.iter().map(|r| r.0).collect();
                    let mut choice = 0;
                    loop {
                        let mut buf = Vec::with_capacity(count * SS);
                        for (k, &v) in pick.iter().enumerate() {
                            buf.extend_from_slice(&s.disk[first + k][v]);
                        }
                        let mut n = s.clone();
                        n.hosts[i].io = Flight::Idle;
                        prune(&mut n);
                        self.deliver(&mut n, i, &buf);
                        self.current = (fp, Event::ReadCompletes { host: i, choice });
                        self.push(n);
                        choice += 1;
                        // Next combination (odometer).
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
                }
                Flight::Idle => {}
            }
            // Timers (backoff; owner re-query).
            if let Op::Acquiring(a) | Op::ConvertingUp(a, _) = &h.op {
                if let Some(t) = a.poll_timeout() {
                    let mut n = s.clone();
                    n.now = n.now.max(t);
                    let now = n.now;
                    if let Op::Acquiring(a) | Op::ConvertingUp(a, _) = &mut n.hosts[i].op {
                        a.handle_timeout(now);
                    }
                    self.drain(&mut n, i);
                    self.current = (fp, Event::Timer { host: i });
                    self.push(n);
                }
            }
            // A holder releases.
            if let Op::Holding(held) = &h.op {
                let mut n = s.clone();
                let r = PaxosRelease::new(cfg(&self.m, i as u64 + 1), held.clone(), n.now);
                n.hosts[i].op = Op::Releasing(Box::new(r));
                self.drain(&mut n, i);
                self.current = (fp, Event::Releases { host: i });
                self.push(n);
            }
            // An exclusive holder converts to shared (counts as an attempt).
            if let (true, Op::Holding(held)) = (self.m.convert, &h.op) {
                if h.attempts < self.m.attempts_max && !held.shared {
                    let mut n = s.clone();
                    let r =
                        PaxosRelease::to_shared(cfg(&self.m, i as u64 + 1), held.clone(), n.now);
                    n.hosts[i].op = Op::ConvertingDown(Box::new(r), held.clone(), false);
                    n.hosts[i].attempts += 1;
                    self.drain(&mut n, i);
                    self.current = (fp, Event::Converts { host: i });
                    self.push(n);
                }
            }
            // A shared holder converts to exclusive (counts as an attempt).
            if let (true, Op::Holding(held)) = (self.m.convert_up, &h.op) {
                if h.attempts < self.m.attempts_max && held.shared {
                    let mut n = s.clone();
                    let mut c = cfg(&self.m, i as u64 + 1);
                    c.shared = false;
                    let a = PaxosAcquire::convert_to_exclusive(c, held, n.now);
                    n.hosts[i].op = Op::ConvertingUp(Box::new(a), held.clone());
                    n.hosts[i].attempts += 1;
                    self.drain(&mut n, i);
                    self.current = (fp, Event::Converts { host: i });
                    self.push(n);
                }
            }
            // A finished host tries again.
            if h.op == Op::Finished && h.io == Flight::Idle && h.attempts < self.m.attempts_max {
                let mut n = s.clone();
                let c = cfg(&self.m, i as u64 + 1);
                let a = match n.hosts[i].cache.take() {
                    Some(cache) => {
                        self.cached_starts = true;
                        PaxosAcquire::new_cached(c, &cache, n.now)
                    }
                    None => PaxosAcquire::new(c, n.now),
                };
                n.hosts[i].op = Op::Acquiring(Box::new(a));
                n.hosts[i].attempts += 1;
                self.drain(&mut n, i);
                self.current = (fp, Event::Retries { host: i });
                self.push(n);
            }
            // A crash: an in-flight write lands or not.
            if s.crashes < self.m.crashes_max {
                let lands: &[bool] = if matches!(h.io, Flight::Write { .. }) {
                    &[true, false]
                } else {
                    &[false]
                };
                for &land in lands {
                    let mut n = s.clone();
                    if let (true, Flight::Write { sector, data, .. }) = (land, &h.io) {
                        n.disk[*sector].push(data.clone());
                    }
                    n.hosts[i].op = Op::Crashed;
                    n.hosts[i].io = Flight::Idle;
                    prune(&mut n);
                    n.crashes += 1;
                    self.current = (
                        fp,
                        Event::Crashes {
                            host: i,
                            write_landed: land,
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

/// Replays a counterexample's chain of state fingerprints from the initial state and
/// describes every state on the way (the event that led to it, then disk and hosts).
fn explain(m: Model, chain: &[u64]) -> Vec<String> {
    let mut c = Checker::new(m);
    let Some((mut state, fp0)) = c.stack.pop() else {
        return vec!["(no initial state)".into()];
    };
    let mut out = Vec::new();
    if chain.first() != Some(&fp0) {
        return vec!["(replay: initial state differs)".into()];
    }
    let mut fp = fp0;
    for next in &chain[1..] {
        c.stack.clear();
        c.seen.clear();
        c.violation = None;
        c.successors(&state, fp);
        let Some(found) = c.stack.iter().position(|(_, f)| f == next) else {
            out.push("(replay lost the trace)".into());
            break;
        };
        let (s, f) = c.stack.swap_remove(found);
        let event = c
            .seen
            .get(&f)
            .map(|(_, e)| e.to_string())
            .unwrap_or_default();
        out.push(format!("-- {event}"));
        out.extend(summary(&s).into_iter().map(|l| format!("     {l}")));
        state = s;
        fp = f;
    }
    out
}

fn flight(io: PaxosIo, data: &[u8]) -> Flight {
    match io {
        PaxosIo::Write { offset } => Flight::Write {
            sector: offset as usize / SS,
            data: data.to_vec(),
            then_read: None,
            read_from: None,
        },
        PaxosIo::WriteAndRead {
            write_offset,
            read_offset,
            read_len,
        } => Flight::Write {
            sector: write_offset as usize / SS,
            data: data.to_vec(),
            then_read: Some((read_offset as usize / SS, read_len / SS)),
            // Filled in by `issue_if_read`.
            read_from: Some(Vec::new()),
        },
        PaxosIo::WriteThenRead {
            write_offset,
            read_offset,
            read_len,
        } => Flight::Write {
            sector: write_offset as usize / SS,
            data: data.to_vec(),
            then_read: Some((read_offset as usize / SS, read_len / SS)),
            read_from: None,
        },
        PaxosIo::Read { offset, len } => Flight::Read {
            first: offset as usize / SS,
            count: len / SS,
            from: Vec::new(),
        },
    }
}

/// A read issued now: each sector may return its current value or any later one.
fn issue_read(s: &State, first: usize, count: usize) -> Flight {
    let from = (0..count)
        .map(|k| u8::try_from(s.disk[first + k].len() - 1).expect("short history"))
        .collect();
    Flight::Read { first, count, from }
}

/// Turns a plain read just taken from a machine into an issued read.
fn issue_if_read(s: &mut State, i: usize) {
    match &s.hosts[i].io {
        Flight::Read { first, count, .. } => {
            s.hosts[i].io = issue_read(s, *first, *count);
        }
        Flight::Write {
            then_read: Some((first, count)),
            read_from: Some(_),
            ..
        } => {
            let (first, count) = (*first, *count);
            if let Flight::Read { from, .. } = issue_read(s, first, count) {
                if let Flight::Write { read_from, .. } = &mut s.hosts[i].io {
                    *read_from = Some(from);
                }
            }
        }
        _ => {}
    }
}

/// The read of a host's flight that is pending (issued, not completed): (first, count, from).
fn pending_read(f: &mut Flight) -> Option<(usize, usize, &mut Vec<u8>)> {
    match f {
        Flight::Read { first, count, from } => Some((*first, *count, from)),
        Flight::Write {
            then_read: Some((first, count)),
            read_from: Some(from),
            ..
        } => Some((*first, *count, from)),
        _ => None,
    }
}

/// Drops sector values no pending read can return any more, and renumbers the reads'
/// history indices, so equal situations have equal states.
fn prune(s: &mut State) {
    for sector in 0..s.disk.len() {
        let oldest_needed = s
            .hosts
            .iter_mut()
            .filter_map(|h| match pending_read(&mut h.io) {
                Some((first, count, from)) if (first..first + count).contains(&sector) => {
                    from.get(sector - first).copied()
                }
                _ => None,
            })
            .min()
            .map_or(s.disk[sector].len() - 1, usize::from);
        if oldest_needed == 0 {
            continue;
        }
        s.disk[sector].drain(..oldest_needed);
        for h in &mut s.hosts {
            if let Some((first, count, from)) = pending_read(&mut h.io) {
                if (first..first + count).contains(&sector) {
                    if let Some(f) = from.get_mut(sector - first) {
                        *f -= u8::try_from(oldest_needed).expect("short history");
                    }
                }
            }
        }
    }
}

fn check(s: &State) -> Result<(), String> {
    let holders = |shared: bool| -> Vec<usize> {
        s.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| match &h.op {
                Op::Holding(a) => a.shared == shared,
                Op::ConvertingDown(_, _, marked) => *marked == shared,
                Op::ConvertingUp(..) => shared,
                _ => false,
            })
            .map(|(i, _)| i + 1)
            .collect()
    };
    let (exclusive, shared) = (holders(false), holders(true));
    if exclusive.len() > 1 || (!exclusive.is_empty() && !shared.is_empty()) {
        return Err(format!(
            "hosts {exclusive:?} hold the lease exclusively while {shared:?} hold it shared: hold the lease at once"
        ));
    }
    let mut lvers: Vec<u64> = s.won.iter().map(|(l, _)| *l).collect();
    lvers.sort_unstable();
    if lvers.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("an lver was won twice: {:?}", s.won));
    }
    Ok(())
}

fn summary(s: &State) -> Vec<String> {
    use tenure_format::paxos::{Dblock, ModeBlock};
    let cur = |k: usize| s.disk[k].last().expect("value");
    let mut out = Vec::new();
    if let Ok(l) = tenure_format::LeaderRecord::decode(cur(0)) {
        out.push(format!(
            "disk leader: owner {} lver {} ts {} flags {:#x}",
            l.owner_id, l.lver, l.timestamp, l.flags
        ));
    }
    for h in 1..=s.hosts.len() {
        let sec = cur(h + 1);
        let d = Dblock::decode_unchecked(sec).expect("dblock");
        let m = ModeBlock::decode_from_sector(sec).expect("mode");
        out.push(format!(
            "disk dblock {h}: mbal {} bal {} inp {} lver {} flags {} mode {}",
            d.mbal, d.bal, d.inp, d.lver, d.flags, m.flags
        ));
    }
    out.extend(s.hosts.iter().enumerate().map(|(i, h)| {
        let op = match &h.op {
            Op::Acquiring(a) => format!("acquiring (ballot {})", a.ballots()),
            Op::Holding(a) => format!(
                "holding lver {}{}",
                a.lver,
                if a.shared { " shared" } else { "" }
            ),
            Op::Releasing(_) => "releasing".into(),
            Op::ConvertingDown(_, _, m) => {
                format!("converting exclusive → shared (marked {m})")
            }
            Op::ConvertingUp(a, _) => {
                format!("converting shared → exclusive (ballot {})", a.ballots())
            }
            Op::Finished => "finished".into(),
            Op::Crashed => "crashed".into(),
        };
        format!("host {}: {op}; won so far {:?}", i + 1, s.won)
    }));
    out
}

fn explore(m: Model) -> (usize, u64, u32, bool) {
    let mut c = Checker::new(m);
    match c.run() {
        Ok(states) => {
            eprintln!(
                "{m:?}: {states} states{}, {} with a holder, {} pruned at the ballot bound, max ballots {}, cached starts {}",
                if c.budget_reached { " (budget reached: bounded search)" } else { " (exhaustive)" },
                c.acquired_states, c.pruned, c.max_ballots_seen, c.cached_starts
            );
            (
                states,
                c.acquired_states,
                c.max_ballots_seen,
                c.cached_starts,
            )
        }
        Err(v) => panic!("{m:?}: {v}"),
    }
}

#[test]
fn two_hosts_one_disk_two_ballots_with_retries_releases_and_a_crash() {
    let (states, held, ballots, cached) = explore(Model {
        hosts: 2,
        ballots_max: 2,
        attempts_max: 2,
        crashes_max: 1,
        lost_writes: false,
        shared_mask: 0,
        states_max: 3_000_000,
        exhaustive: true,
        convert: false,
        convert_up: false,
    });
    assert!(held > 0, "some interleaving acquires");
    assert!(ballots >= 2, "contention made a second ballot happen");
    assert!(states > 1000);
    assert!(cached, "some acquire started from a release's ballot cache");
}

/// Three hosts, two ballots each: the state space is beyond what CI can exhaust here (more
/// than 9 million states even with one ballot each), so this is a bounded depth-first search
/// of the first 4 million states — every one checked, no claim of completeness.
/// `MODEL_STATES=N` raises the budget for a longer run.
#[test]
fn three_hosts_one_disk_two_ballots_bounded() {
    let (states, held, ballots, cached) = explore(Model {
        hosts: 3,
        ballots_max: 2,
        attempts_max: 1,
        crashes_max: 1,
        lost_writes: false,
        shared_mask: 0,
        states_max: std::env::var("MODEL_STATES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4_000_000),
        exhaustive: false,
        convert: false,
        convert_up: false,
    });
    assert!(states >= 1_000_000, "searched only {states} states");
    assert!(held > 0);
    assert!(ballots >= 2);
    let _ = cached;
}

/// A disk that drops acknowledged writes is outside what Disk Paxos survives: the checker
/// must find two holders, proving it can see a violation at all.
#[test]
fn the_checker_finds_the_violation_lost_writes_cause() {
    let mut c = Checker::new(Model {
        hosts: 2,
        ballots_max: 2,
        attempts_max: 1,
        crashes_max: 0,
        lost_writes: true,
        shared_mask: 0,
        states_max: 3_000_000,
        exhaustive: true,
        convert: false,
        convert_up: false,
    });
    let err = c.run().expect_err("lost writes must break exclusion");
    assert!(
        err.contains("hold the lease at once") || err.contains("won twice"),
        "{err}"
    );
}

/// One exclusive and one shared acquirer, with retries and releases: never both hold,
/// and both modes do get the lease in some interleavings.
#[test]
fn one_exclusive_and_one_shared_host_never_hold_together() {
    let mut c = Checker::new(Model {
        hosts: 2,
        ballots_max: 2,
        attempts_max: 2,
        crashes_max: 0,
        lost_writes: false,
        shared_mask: 0b10,
        states_max: 6_000_000,
        exhaustive: true,
        convert: false,
        convert_up: false,
    });
    let states = c.run().unwrap_or_else(|v| panic!("{v}"));
    eprintln!(
        "exclusive host 1 + shared host 2: {states} states (exhaustive), {} with a holder",
        c.acquired_states
    );
    assert!(
        c.shared_held && c.exclusive_held,
        "both modes acquired somewhere"
    );
}

/// Two shared holders and one exclusive acquirer (bounded search): shared holders coexist,
/// the exclusive one never overlaps them.
#[test]
fn two_shared_and_one_exclusive_host_bounded() {
    let mut c = Checker::new(Model {
        hosts: 3,
        ballots_max: 2,
        attempts_max: 1,
        crashes_max: 0,
        lost_writes: false,
        shared_mask: 0b011,
        states_max: 2_000_000,
        exhaustive: false,
        convert: false,
        convert_up: false,
    });
    let states = c.run().unwrap_or_else(|v| panic!("{v}"));
    eprintln!(
        "shared hosts 1, 2 + exclusive host 3: {states} states{}, both shared at once: {}",
        if c.budget_reached {
            " (bounded)"
        } else {
            " (exhaustive)"
        },
        c.two_shared
    );
    assert!(
        c.two_shared,
        "two shared holders coexisted in some interleaving"
    );
}

/// Conversion exclusive → shared: host 1 acquires exclusively and may convert to shared,
/// host 2 acquires shared, both release and retry: never an exclusive holder together with
/// another holder, never an lver won twice (exhaustive). Shared → exclusive: see
/// `shared_to_exclusive_conversions_keep_exclusion`.
#[test]
fn conversions_keep_exclusion() {
    let mut c = Checker::new(Model {
        hosts: 2,
        ballots_max: 1,
        attempts_max: 3,
        crashes_max: 0,
        lost_writes: false,
        shared_mask: 0b10,
        states_max: 3_000_000,
        exhaustive: true,
        convert: true,
        convert_up: false,
    });
    let states = c.run().unwrap_or_else(|v| panic!("{v}"));
    eprintln!(
        "exclusive → shared conversions, exclusive host 1 + shared host 2: {states} states (exhaustive), converted: {}",
        c.converted_down
    );
    assert!(c.converted_down, "a conversion happens");
}

/// Conversion shared → exclusive (`PaxosAcquire::convert_to_exclusive`), 3 attempts and 1
/// ballot per host, releases and retries: never an exclusive holder together with another
/// holder, never an lver won twice. Shared host 1 + exclusive host 2 converting both ways:
/// exhaustive (3,010,105 states). Two shared hosts converting up: the first 2 M states here;
/// `MODEL_EXHAUSTIVE=1 cargo test --release -p tenure-core --test paxos_model
/// shared_to_exclusive` runs it to the end (28,808,172 states, 8 min, no violation).
///
/// This search found a real hole in the first version: a conversion that failed (SharedBusy
/// after winning the instance, so its dblock said RELEASED at the new lver) left the shared
/// hold's record with the older dblock; releasing the shared hold wrote that older dblock back,
/// erasing our accepted value of the newer instance, and the other host then chose a second
/// value for it — exclusive at lver 3 beside a shared hold at lver 4. A failed conversion now
/// hands back the shared hold with the dblock as last written
/// (`PaxosAcquire::shared_hold_after_failure`), and a shared release writes it back as is.
#[test]
fn shared_to_exclusive_conversions_keep_exclusion() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    // (shared mask, convert down too, exhaustive, budget, what)
    for (mask, down, exhaustive, budget, what) in [
        (
            0b01u8,
            true,
            true,
            4_000_000,
            "shared host 1, exclusive host 2, converting both ways",
        ),
        (0b11, false, false, 2_000_000, "two shared hosts"),
    ] {
        let full = env("MODEL_EXHAUSTIVE", 0) == 1;
        let mut c = Checker::new(Model {
            hosts: 2,
            ballots_max: 1,
            attempts_max: 3,
            crashes_max: 0,
            lost_writes: false,
            shared_mask: mask,
            states_max: if full { 60_000_000 } else { budget },
            exhaustive: exhaustive || full,
            convert: down,
            convert_up: true,
        });
        let states = c.run().unwrap_or_else(|v| panic!("{what}: {v}"));
        eprintln!(
            "shared → exclusive conversions, {what}: {states} states{}, converted up: {}, down: {}",
            if c.budget_reached {
                " (bounded)"
            } else {
                " (exhaustive)"
            },
            c.converted_up,
            c.converted_down
        );
        assert!(c.converted_up, "{what}: a conversion to exclusive happens");
    }
}
