//! What the fuzz targets check (`daemon/fuzz`), and the tests on captured and random inputs
//! (`daemon/tests/fuzz_decoders.rs`): whatever bytes a local client sends, both socket decoders
//! end in a typed outcome, consume only what they were given, make progress, and decode
//! nothing beyond the protocol's limits. A violated check panics (the fuzzer's crash).

use crate::proto::{self, Request, Split};
use crate::sanlock_wire::{self as w, Body, Parsed};

/// The largest message of sanlock's protocol: an ACQUIRE of 8 resources on 4 disks each,
/// with its options.
pub const SANLOCK_MESSAGE_MAX: usize = w::HEADER_LEN
    + w::MAX_RESOURCES as usize * (w::RES_LEN + w::MAX_DISKS as usize * w::DISK_LEN)
    + w::OPTIONS_LEN;

/// A connection's bytes through sanlock's decoder, message after message as the server takes
/// them: every outcome stays within the bytes given and consumes at least a header; a whole
/// message is within [`SANLOCK_MESSAGE_MAX`], its body within the protocol's counts, decided
/// only once all its bytes are there and the same from exactly its bytes.
pub fn sanlock_wire(data: &[u8]) {
    let mut buf = data;
    while !buf.is_empty() {
        let parsed = w::parse(buf);
        let Some(n) = sanlock_outcome(buf, &parsed) else {
            return;
        };
        buf = &buf[n..];
    }
}

/// Checks one outcome of the decoder on `buf` (see [`sanlock_wire`]); the bytes it consumes,
/// or `None` when it waits for more.
pub fn sanlock_outcome(buf: &[u8], parsed: &Parsed) -> Option<usize> {
    let n = match parsed {
        Parsed::NeedMore => {
            assert!(
                buf.len() < SANLOCK_MESSAGE_MAX + w::HEADER_LEN,
                "waits for more than the largest message: {} bytes buffered",
                buf.len()
            );
            return None;
        }
        Parsed::Ignored(n) | Parsed::Invalid(n, ..) => *n,
        Parsed::Message(n, _, body) => {
            assert!(*n <= SANLOCK_MESSAGE_MAX, "a message of {n} bytes");
            assert!(*n <= buf.len(), "consumed {n} of {} bytes", buf.len());
            body_within_limits(body);
            assert_eq!(&w::parse(&buf[..*n]), parsed, "the same from its own bytes");
            assert_eq!(
                w::parse(&buf[..*n - 1]),
                Parsed::NeedMore,
                "decided before its last byte"
            );
            *n
        }
    };
    assert!(
        n >= w::HEADER_LEN && n <= buf.len(),
        "consumed {n} of {} bytes",
        buf.len()
    );
    Some(n)
}

fn body_within_limits(body: &Body) {
    let resources = |r: &[w::Resource]| {
        assert!(
            r.len() <= w::MAX_RESOURCES as usize,
            "{} resources",
            r.len()
        );
        for x in r {
            assert!(
                x.disks.len() <= w::MAX_DISKS as usize,
                "{} disks",
                x.disks.len()
            );
            // 48-byte fields, decoded lossily (a replacement character per bad byte).
            assert!(x.name.chars().count() <= 48 && x.lockspace.chars().count() <= 48);
        }
    };
    match body {
        Body::Acquire(r, owner) => {
            resources(r);
            assert!(owner.chars().count() <= 48);
        }
        Body::Resources(r) => resources(r),
        Body::ResourceWithDisks(r) => resources(std::slice::from_ref(r)),
        Body::SetLvb(r, lvb) => {
            resources(std::slice::from_ref(r));
            assert!(lvb.len() <= 4096, "an LVB of {} bytes", lvb.len());
        }
        Body::KillPath(path, args) => {
            assert!(path.chars().count() <= 1024 && args.chars().count() <= 1024);
        }
        Body::Empty | Body::Lockspace(_) | Body::Event(..) | Body::Rindex(..) => {}
    }
}

/// A connection's bytes through the native protocol's framing and request decoding, frame
/// after frame as the server takes them: a frame is within [`proto::FRAME_MAX_BYTES`] and the
/// bytes given; a length beyond the limit is refused as such; a request that decodes is
/// decided into a command, a front-end request or a typed refusal, and encodes back to a
/// request equal to itself.
pub fn native_frame(data: &[u8]) {
    let mut buf = data;
    loop {
        match proto::split_frame(buf) {
            Split::Incomplete => {
                if let Some(p) = buf.get(..4) {
                    let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    assert!(len <= proto::FRAME_MAX_BYTES && buf.len() < 4 + len);
                }
                return;
            }
            Split::TooLarge(len) => {
                assert!(len > proto::FRAME_MAX_BYTES);
                return;
            }
            Split::Frame(len) => {
                assert!(len <= proto::FRAME_MAX_BYTES && 4 + len <= buf.len());
                native_request(&buf[4..4 + len]);
                buf = &buf[4 + len..];
            }
        }
    }
}

/// One frame's body: JSON that decodes as a request is decided without a panic and
/// round-trips.
pub fn native_request(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<Request>(body) else {
        return;
    };
    let bytes = proto::encode(&req);
    if let Ok(bytes) = bytes {
        let back: Request = proto::read_frame(&mut &bytes[..]).expect("a request re-reads");
        assert_eq!(back, req, "a request encodes back to itself");
    }
    match req.decode() {
        proto::Decoded::Refused(e) => assert!(!e.message.is_empty(), "a refusal says why"),
        proto::Decoded::Host(_) | proto::Decoded::Rindex(_) | proto::Decoded::Front(_) => {}
    }
}

/// Supervision that accepts everything, for driving a [`crate::host::Host`] without a
/// supervisor thread (the sequence fuzzer, the host-core tests); it records what it is told of
/// "used", in order.
#[derive(Debug, Default)]
pub struct Accepting {
    /// Every `set_used` value, in order.
    pub used: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
}

impl crate::host::Supervision for Accepting {
    fn add_space(&mut self, _: &str, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn joined(&mut self, _: &str, _: u64, _: tenure_core::clock::Time) -> Result<(), String> {
        Ok(())
    }
    fn renewed(
        &mut self,
        _: &str,
        _: tenure_core::clock::Time,
        _: tenure_core::clock::Time,
        _: tenure_watchdog::fence::RenewalNote,
    ) {
    }
    fn renewal_failed(&mut self, _: &str, _: tenure_watchdog::fence::RenewalNote) {}
    fn lost(&mut self, _: &str, _: tenure_core::clock::Time) {}
    fn add_holder(
        &mut self,
        _: &str,
        _: i32,
        _: Option<(String, Vec<String>)>,
        _: u32,
    ) -> Result<(), String> {
        Ok(())
    }
    fn remove_holder(&mut self, _: &str, _: i32) {}
    fn set_used(&mut self, _: &str, used: bool) -> Result<(), String> {
        if let Ok(mut u) = self.used.lock() {
            u.push(used);
        }
        Ok(())
    }
    fn remove_space(&mut self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn take_cleared(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

// ---------------------------------------------------------------------------------------
// Command sequences through the host core.

pub use host_seq::host_sequence;

mod host_seq {
    use std::time::Duration;

    use tenure_core::clock::{Clock, SimClock, Time};
    use tenure_core::io::shared_sim::SharedSim;
    use tenure_core::io::sim::{SimBackend, SimConfig};
    use tenure_core::io::{DiskId, EngineConfig};
    use tenure_core::lockspace::{LockspaceSet, LockspaceState};
    use tenure_format::area::{encode_lockspace_area, encode_resource_area, lockspace_sector0};
    use tenure_format::paxos::ModeBlock;
    use tenure_format::{
        DiskLocation, Geometry, LeaderRecord, LeaseRef, LockspaceSpec, Name, ResourceMode,
        ResourceSpec,
    };

    use crate::host::command::{Command, Holder, Leases};
    use crate::host::registry::{ClientKey, Owner};
    use crate::host::reply::{Done, Reply};
    use crate::host::{ClientInfo, Host, HostConfig, Output};
    use crate::proto::ErrorCode;

    const AREA: u64 = 1 << 20;
    const PATH: &str = "/sim/disk";
    const RESOURCES: usize = 3;
    const CLIENTS: usize = 4;

    fn name(n: &str) -> Name {
        Name::new(n).expect("name")
    }

    /// What a client waits for.
    #[derive(Clone, Debug)]
    enum Asked {
        Acquire(Vec<Name>),
        Release,
        Other,
    }

    struct Client {
        key: ClientKey,
        pid: i32,
        root: bool,
        asked: Option<Asked>,
    }

    struct Bed {
        clock: SimClock,
        storage: SharedSim,
        host: Host,
        clients: Vec<Option<Client>>,
        serial: u64,
        /// Names that came back as "may be held" (an I/O failure past phase 2): ours on disk
        /// without a holder, as documented.
        maybe_held: Vec<Name>,
    }

    /// Reads bytes of the input, zero once it is used up.
    struct Input<'a>(&'a [u8]);

    impl Input<'_> {
        fn byte(&mut self) -> u8 {
            match self.0.split_first() {
                Some((b, rest)) => {
                    self.0 = rest;
                    *b
                }
                None => 0,
            }
        }
    }

    /// Interprets `data` as up to 200 actions of up to four clients of one host on a simulated
    /// disk (a joined lockspace, three resources): connect and disconnect (also mid-command),
    /// acquire (one or two resources, shared, persistent, adopting orphans, for a pid, at an
    /// lver, in an unknown lockspace), release (named, all, orphans, renamed), convert,
    /// inquire, LVBs, lockspace config and removal, pid exits, time passing. Checked after
    /// each step: no panic; a reply only to a client that asked, well formed; every lease the
    /// host says it holds is ours on disk, and nothing is ours on disk that no lease or
    /// operation in flight accounts for; an unprivileged client's command never takes another
    /// client's lease, and acting for a pid is refused to it.
    pub fn host_sequence(data: &[u8]) {
        let mut bed = Bed::new();
        let mut input = Input(data);
        for _ in 0..200 {
            if input.0.is_empty() {
                break;
            }
            bed.act(&mut input);
            bed.check();
        }
        // Everyone goes: everything is released, nothing is left ours but orphans.
        for i in 0..CLIENTS {
            bed.close(i);
        }
        bed.run(Duration::from_secs(5));
        bed.check();
    }

    impl Bed {
        fn new() -> Self {
            let clock = SimClock::new(Time::ZERO.saturating_add(Duration::from_secs(1000)));
            let engine = EngineConfig {
                ring_entries: 256,
                buffer_classes: vec![(512, 64), (8192, 16), (1 << 20, 4)],
                sync_workers: 0,
            };
            let size = (RESOURCES as u64 + 1) * AREA;
            let mut b = SimBackend::new(
                &[(512, size)],
                &engine,
                SimConfig::healthy(7),
                clock.clone(),
            );
            let g = Geometry::LEGACY_512;
            let ls = name("LS");
            let mut area = vec![0u8; AREA as usize];
            encode_lockspace_area(&mut area, g, ls, 1);
            lockspace_sector0(&mut area[..512], g, ls, 1);
            b.load(DiskId(0), 0, &area);
            let mut areas = vec![(0, g)];
            for r in 0..RESOURCES {
                let mut area = vec![0u8; AREA as usize];
                encode_resource_area(&mut area, g, ls, name(&format!("R{r}")), 2000);
                b.load(DiskId(0), (r as u64 + 1) * AREA, &area);
                areas.push(((r as u64 + 1) * AREA, g));
            }
            let view = b.add_view(DiskId(0));
            let storage = SharedSim::new(b);
            let mut host = Host::new(
                HostConfig {
                    host_name: name("node-1"),
                    io_timeout_s: 1,
                    other_hosts_fire_timeout_s: 10,
                    no_local_exclusion: false,
                },
                LockspaceSet::new(Box::new(storage.port())),
                Box::new(super::Accepting::default()),
                0,
            );
            host.add_known_disk(PATH.into(), view, &areas);
            let mut bed = Bed {
                clock,
                storage,
                host,
                clients: (0..CLIENTS).map(|_| None).collect(),
                serial: 0,
                maybe_held: Vec::new(),
            };
            bed.join();
            bed
        }

        fn join(&mut self) {
            let now = self.clock.now();
            let spec = LockspaceSpec::parse(&format!("LS:1:{PATH}:0")).expect("spec");
            let _ = self.host.lockspace_add_configured(now, &spec);
            let end = now.saturating_add(Duration::from_secs(60));
            while self.clock.now() < end && self.generation().is_none() {
                self.run(Duration::from_millis(500));
            }
        }

        /// Our generation in LS while it is joined (not being left: its orphans are forgotten,
        /// owned on disk by a generation about to die).
        fn generation(&self) -> Option<u64> {
            let s = self.host.spaces().iter().find(|s| s.name == "LS")?;
            if self.host.engine().is_leaving(s.id) {
                return None;
            }
            match self.host.space_state(s)? {
                LockspaceState::Joined { generation } if s.lost.is_none() => Some(generation),
                _ => None,
            }
        }

        /// Steps the host for `d` of simulated time, delivering its outputs.
        fn run(&mut self, d: Duration) {
            let end = self.clock.now().saturating_add(d);
            loop {
                let now = self.clock.now();
                self.host.step(now).expect("step");
                self.drain();
                if now >= end {
                    return;
                }
                let next = [self.storage.next_due(), self.host.next_wakeup()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(end)
                    .max(now.saturating_add(Duration::from_micros(10)))
                    .min(end);
                self.clock.advance_to(next);
            }
        }

        fn drain(&mut self) {
            while let Some(o) = self.host.poll_output() {
                match o {
                    Output::Reply(k, r) => self.deliver(k, r),
                    Output::Signal { pid, signal } => {
                        // A signalled client dies (SIGTERM too: these obey).
                        let _ = signal;
                        if let Some(i) = self.client_of_pid(pid) {
                            self.close(i);
                        } else {
                            let now = self.clock.now();
                            self.host.pid_exited(now, pid);
                        }
                    }
                    _ => {}
                }
            }
        }

        fn client_of_pid(&self, pid: i32) -> Option<usize> {
            self.clients
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.pid == pid))
        }

        fn deliver(&mut self, k: ClientKey, r: Reply) {
            let Some(c) = self.clients.iter_mut().flatten().find(|c| c.key == k) else {
                return; // gone meanwhile
            };
            let Some(asked) = c.asked.take() else {
                panic!("a reply nobody asked for: {r:?}");
            };
            trace(|| format!("  -> client {}: {r:?}", k.idx));
            well_formed(&asked, &r);
            if let Reply::Error(e) = &r {
                if e.message.contains("may still be held") {
                    if let Asked::Acquire(names) = asked {
                        self.maybe_held.extend(names);
                    }
                }
            }
        }

        fn close(&mut self, i: usize) {
            if let Some(c) = self.clients[i].take() {
                trace(|| format!("{:?} client {i} closes", self.clock.now()));
                let now = self.clock.now();
                self.host.client_closed(now, c.key);
                self.host.pid_exited(now, c.pid);
                self.drain();
            }
        }

        fn act(&mut self, inp: &mut Input<'_>) {
            let op = inp.byte();
            let i = usize::from(inp.byte()) % CLIENTS;
            match op % 16 {
                0 | 1 => {
                    if self.clients[i].is_none() {
                        self.serial += 1;
                        let key = ClientKey {
                            idx: i,
                            serial: self.serial,
                        };
                        let root = op & 0x10 != 0;
                        let pid = 100 + i as i32;
                        self.host.client_connected(
                            key,
                            ClientInfo {
                                pid,
                                uid: if root { 0 } else { 1000 },
                                name: format!("c{i}"),
                                kill_path: None,
                                restrict: 0,
                            },
                        );
                        self.clients[i] = Some(Client {
                            key,
                            pid,
                            root,
                            asked: None,
                        });
                    }
                }
                2 => self.close(i),
                3 => {
                    let d = Duration::from_millis(u64::from(inp.byte()) * 40);
                    self.run(d);
                }
                4 => {
                    let pid = 100 + i32::from(inp.byte() % CLIENTS as u8);
                    let now = self.clock.now();
                    self.host.pid_exited(now, pid);
                    self.drain();
                }
                _ => {
                    let Some(cmd) = self.command(op, i, inp) else {
                        return;
                    };
                    self.execute(i, cmd);
                }
            }
        }

        fn holder(&self, b: u8) -> Holder {
            match b % 8 {
                0 => Holder::Pid(100 + i32::from(b >> 3) % CLIENTS as i32),
                _ => Holder::Me,
            }
        }

        fn command(&mut self, op: u8, i: usize, inp: &mut Input<'_>) -> Option<(Command, Asked)> {
            self.clients[i].as_ref().filter(|c| c.asked.is_none())?;
            let a = inp.byte();
            let b = inp.byte();
            let r0 = usize::from(a) % RESOURCES;
            let res_name = |r: usize| name(&format!("R{r}"));
            let lease = |r: usize, ls: &str| LeaseRef {
                lockspace: name(ls),
                name: res_name(r),
            };
            let ls = if b & 0x80 != 0 && a & 1 != 0 {
                "LSX"
            } else {
                "LS"
            };
            Some(match op % 16 {
                5..=7 => {
                    let mut rs = vec![r0];
                    if a & 0x10 != 0 {
                        rs.push((r0 + 1) % RESOURCES);
                    }
                    let shared = a & 0x20 != 0;
                    let specs = rs
                        .iter()
                        .map(|&r| ResourceSpec {
                            lockspace: name(ls),
                            name: res_name(r),
                            disks: vec![DiskLocation {
                                path: PATH.into(),
                                offset: (r as u64 + 1) * AREA,
                            }],
                            mode: if shared {
                                ResourceMode::Shared
                            } else if b & 0x40 != 0 {
                                ResourceMode::ExclusiveAtLver(u64::from(b & 3))
                            } else {
                                ResourceMode::Exclusive
                            },
                        })
                        .collect::<Vec<_>>();
                    let names = specs.iter().map(|s| s.name).collect();
                    (
                        Command::Acquire {
                            persistent: vec![a & 0x40 != 0; specs.len()],
                            resources: specs,
                            no_wait: b & 1 != 0,
                            lvb: b & 2 != 0,
                            holder: self.holder(b >> 2),
                            adopt_orphan: a & 0x80 != 0,
                        },
                        Asked::Acquire(names),
                    )
                }
                8 | 9 => {
                    let leases = match b % 5 {
                        0 => Leases::All,
                        1 => Leases::Orphans {
                            space: name(ls),
                            name: (a & 0x10 != 0).then(|| res_name(r0)),
                        },
                        2 => Leases::Renamed {
                            lease: lease(r0, ls),
                            to: res_name(r0),
                        },
                        _ => Leases::These(vec![lease(r0, ls)]),
                    };
                    (
                        Command::Release {
                            leases,
                            holder: self.holder(a >> 3),
                            lvb: None,
                        },
                        Asked::Release,
                    )
                }
                10 => (
                    Command::Convert {
                        lease: lease(r0, ls),
                        shared: b & 1 != 0,
                        holder: self.holder(a >> 3),
                        no_wait: b & 2 != 0,
                    },
                    Asked::Other,
                ),
                11 => (
                    Command::Inquire {
                        holder: self.holder(a),
                    },
                    Asked::Other,
                ),
                12 => (
                    if b & 1 != 0 {
                        Command::LvbSet {
                            lease: lease(r0, ls),
                            value: vec![a; usize::from(b >> 1)],
                            holder: self.holder(a >> 3),
                        }
                    } else {
                        Command::LvbGet {
                            lease: lease(r0, ls),
                            holder: self.holder(a >> 3),
                        }
                    },
                    Asked::Other,
                ),
                13 => (
                    Command::LockspaceConfig {
                        name: name(ls),
                        used: (b & 1 != 0).then_some(b & 2 != 0),
                        used_by_orphans: (b & 4 != 0).then_some(b & 8 != 0),
                    },
                    Asked::Other,
                ),
                14 => (
                    Command::LockspaceRemove {
                        name: name(ls),
                        wait: b & 1 != 0,
                        kill_holders: b & 2 != 0,
                    },
                    Asked::Other,
                ),
                _ => {
                    // The lockspace again (after a removal).
                    let spec = LockspaceSpec::parse(&format!("LS:1:{PATH}:0")).expect("spec");
                    (
                        Command::LockspaceAdd {
                            spec,
                            wait: b & 1 != 0,
                            io_timeout_s: None,
                        },
                        Asked::Other,
                    )
                }
            })
        }

        fn execute(&mut self, i: usize, (cmd, asked): (Command, Asked)) {
            trace(|| format!("{:?} client {i}: {cmd:?}", self.clock.now()));
            let (key, root) = {
                let c = self.clients[i].as_ref().expect("client");
                (c.key, c.root)
            };
            let on_behalf = matches!(
                &cmd,
                Command::Acquire { holder: Holder::Pid(p), .. }
                | Command::Release { holder: Holder::Pid(p), .. }
                | Command::Convert { holder: Holder::Pid(p), .. }
                if *p != 100 + i as i32
            );
            let releases_orphans = matches!(
                &cmd,
                Command::Release {
                    leases: Leases::Orphans { .. },
                    ..
                }
            );
            // Other clients' leases, before: an unprivileged client's command must leave them.
            let others = |h: &Host| -> Vec<(Owner, String, Name)> {
                h.leases()
                    .filter(|l| l.owner != Owner::Conn(key) && l.owner != Owner::Orphan)
                    .filter(|l| l.joining.is_none())
                    .map(|l| (l.owner, l.space.clone(), l.resource))
                    .collect()
            };
            let before = others(&self.host);
            if let Some(c) = self.clients[i].as_mut() {
                c.asked = Some(asked);
            }
            let now = self.clock.now();
            let r = self.host.execute(now, key, cmd);
            if !root && !releases_orphans {
                let after = others(&self.host);
                for l in &before {
                    let n = |v: &[(Owner, String, Name)]| v.iter().filter(|x| *x == l).count();
                    assert!(
                        n(&after) >= n(&before),
                        "an unprivileged client's command took another's lease {l:?}"
                    );
                }
            }
            if let Some(r) = r {
                if !root && on_behalf {
                    assert!(
                        matches!(&r, Reply::Error(e) if e.code == ErrorCode::Permission),
                        "an unprivileged client acted for another pid: {r:?}"
                    );
                }
                self.deliver(key, r);
            }
            self.drain();
        }

        /// The registry and the disk agree (see [`host_sequence`]).
        fn check(&self) {
            let Some(generation) = self.generation() else {
                return;
            };
            let in_flight: Vec<Name> = self
                .host
                .in_flight()
                .iter()
                .filter(|(k, _)| k.space == "LS")
                .map(|(k, _)| k.name)
                .collect();
            let g = Geometry::LEGACY_512;
            for r in 0..RESOURCES {
                let n = name(&format!("R{r}"));
                if in_flight.contains(&n) || self.maybe_held.contains(&n) {
                    continue;
                }
                let at = ((r as u64 + 1) * AREA) as usize;
                let d = at + g.dblock_offset(1) as usize;
                let (leader, ours) = self.storage.with(|b| {
                    let bytes = b.disk_bytes(DiskId(0));
                    (bytes[at..at + 512].to_vec(), bytes[d..d + 512].to_vec())
                });
                let leader = LeaderRecord::decode(&leader).expect("leader");
                let ours_ex = leader.owner_id == 1
                    && leader.owner_generation == generation
                    && leader.timestamp != 0;
                let mode = ModeBlock::decode_from_sector(&ours).expect("mode block");
                let ours_sh = mode.is_shared() && mode.generation == generation;
                let held: Vec<_> = self
                    .host
                    .leases()
                    .filter(|l| l.space == "LS" && l.resource == n)
                    .collect();
                if held.is_empty() {
                    assert!(
                        !ours_ex && !ours_sh,
                        "R{r} is ours on disk (exclusive {ours_ex}, shared {ours_sh}) but no lease or operation of this host accounts for it"
                    );
                    continue;
                }
                for l in held {
                    if l.joining.is_some() || (l.owner == Owner::Orphan && !l.persistent) {
                        continue;
                    }
                    if l.held.acquired.shared {
                        assert!(ours_sh, "R{r} held shared here, not on disk: {mode:?}");
                    } else {
                        assert!(
                            ours_ex && leader.lver == l.held.acquired.lver,
                            "R{r} held exclusive here at lver {}, not on disk: {leader:?}",
                            l.held.acquired.lver
                        );
                    }
                }
            }
        }
    }

    /// Prints a step when TENURE_FUZZ_TRACE is set (replaying a failing input).
    fn trace(f: impl FnOnce() -> String) {
        if std::env::var_os("TENURE_FUZZ_TRACE").is_some() {
            eprintln!("{}", f());
        }
    }

    /// A reply fits what was asked.
    fn well_formed(asked: &Asked, r: &Reply) {
        match (asked, r) {
            (_, Reply::Error(e)) => assert!(!e.message.is_empty(), "an error without a reason"),
            (Asked::Acquire(names), Reply::Done(Done::Acquired(v))) => {
                assert_eq!(v.len(), names.len(), "one lease per resource asked: {v:?}");
                for l in v {
                    assert!(
                        names.iter().any(|n| n.escaped() == l.resource),
                        "a lease not asked for: {l:?}"
                    );
                }
            }
            (Asked::Acquire(_), Reply::Done(d)) => panic!("an acquire answered {d:?}"),
            (Asked::Release, Reply::Done(Done::Released(_) | Done::OrphansReleased(_))) => {}
            (Asked::Release, Reply::Done(d)) => panic!("a release answered {d:?}"),
            (Asked::Other, Reply::Done(_)) => {}
        }
    }
}
