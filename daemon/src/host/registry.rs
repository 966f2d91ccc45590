//! The lease registry: every lease this host's clients hold (or are joining), who owns it, and
//! the local exclusion that decides who may get one ([`super::admission`]).
//!
//! A lease is one holder's: an exclusive lease has one entry; a shared lease may have several
//! (one per local holder), all copies of this host's one hold on disk. Invariants, kept by the
//! admission checks ([`Registry::admit_acquire`], [`Registry::admit_convert`]) and asserted by
//! the tests at the bottom:
//!
//! - per resource, either one exclusive entry (or orphan), or any number of shared entries;
//! - a resource with an operation in flight ([`Claims`]) gets no new entry until it ends,
//!   except the acquire's own result;
//! - a hold is released on disk once, by the last of its entries to go
//!   ([`Registry::split_release`]).
//!
//! No I/O: the server decides with it and then acts.

use std::collections::HashMap;
use tenure_core::lockspace::{HeldResource, OpId};
use tenure_format::Name;

use super::admission::{Admit, Claims, InFlight, LocalHold, Refusal, ResourceKey};

/// A client connection's handle: its slot and a serial that tells a reused slot apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Slot in the server's connection table.
    pub idx: usize,
    /// Serial of the connection in that slot.
    pub serial: u64,
}

/// Who a lease is released for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Released when this connection closes.
    Conn(ClientKey),
    /// Acquired on behalf of a pid: released when that pid exits.
    Pid(i32),
    /// No holder: a persistent lease whose holder went (sanlock's orphan, adoptable with
    /// ACQUIRE_ORPHAN), or a lease whose release failed (still ours on disk; `persistent`
    /// false). Released by REL_ORPHAN, dropped when the lockspace is left.
    Orphan,
}

/// One holder's lease.
#[derive(Debug)]
pub struct Lease {
    /// Lockspace name.
    pub space: String,
    /// Resource name.
    pub resource: Name,
    /// The path and offset the client named (its first disk).
    pub location: (String, u64),
    /// Its further disks (a lease on several disks), as the client named them.
    pub mirrors: Vec<(String, u64)>,
    /// What the acquire left on disk (shared entries of one hold carry copies).
    pub held: HeldResource,
    /// Who it is released for.
    pub owner: Owner,
    /// The holder pid (0 for an orphan).
    pub pid: i32,
    /// The client's name, for status.
    pub client_name: String,
    /// Wall-clock time of the grant, for status.
    pub acquired_unix_ms: u64,
    /// Set with lvb_set; written by the release.
    pub lvb_to_write: Option<Vec<u8>>,
    /// A conversion runs: a release waits for it (its result replaces `held`; releasing the
    /// record from before would be unsafe), and an owner gone meanwhile releases after it.
    pub converting: bool,
    /// A joiner of this host's shared hold whose acquire (this operation) still runs for its
    /// other resources: not granted yet, but it keeps the shared hold from being released.
    pub joining: Option<OpId>,
    /// Kept on disk as an orphan when its holder goes (sanlock's RES_PERSISTENT).
    pub persistent: bool,
    /// A joiner adopting an orphan: if its acquire fails, it is an orphan again.
    pub adopting: bool,
    /// The name its release gives the freed leader (sanlock's REL_RENAME).
    pub rename_to: Option<Name>,
    /// Set by the registry when the lease goes in: names it in the state file's records
    /// (handover::StateJournal). 0 until then.
    pub journal_id: u64,
}

impl Lease {
    /// `owner`'s lease of `held` (the resource is the hold's), granted at `acquired_unix_ms`.
    pub fn new(
        space: &str,
        location: (String, u64),
        held: HeldResource,
        owner: Owner,
        pid: i32,
        client_name: &str,
        acquired_unix_ms: u64,
    ) -> Lease {
        Lease {
            space: space.to_owned(),
            resource: held.target.name,
            location,
            mirrors: Vec::new(),
            held,
            owner,
            pid,
            client_name: client_name.to_owned(),
            acquired_unix_ms,
            lvb_to_write: None,
            converting: false,
            joining: None,
            persistent: false,
            adopting: false,
            rename_to: None,
            journal_id: 0,
        }
    }

    /// An adoptable orphan: a persistent lease whose holder went.
    pub fn is_orphan(&self) -> bool {
        self.owner == Owner::Orphan && self.persistent
    }

    /// The resource as local exclusion knows it.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(&self.space, self.resource)
    }

    /// Whether this lease is of `key`.
    pub fn is(&self, key: &ResourceKey) -> bool {
        self.space == key.space && self.resource == key.name
    }

    /// Every disk of the lease: the first, then the mirrors.
    pub fn disks(&self) -> impl Iterator<Item = &(String, u64)> {
        std::iter::once(&self.location).chain(&self.mirrors)
    }

    /// `LS:NAME:PATH:OFFSET[:PATH:OFFSET...]:LVER`, the migration hand-off's state string.
    pub fn state_string(&self) -> String {
        let disks: Vec<String> = self
            .disks()
            .map(|(p, o)| format!("{}:{o}", tenure_format::spec::escape_field(p)))
            .collect();
        format!(
            "{}:{}:{}:{}",
            self.space,
            self.resource.escaped(),
            disks.join(":"),
            self.held.acquired.lver
        )
    }

    /// The lease as replies and `status` show it.
    pub fn view(&self) -> super::reply::LeaseView {
        super::reply::LeaseView {
            lockspace: self.space.clone(),
            resource: self.resource.escaped(),
            path: self.location.0.clone(),
            offset: self.location.1,
            lver: self.held.acquired.lver,
            shared: self.held.acquired.shared,
            pid: self.pid,
            client: self.client_name.clone(),
            owner: match self.owner {
                Owner::Conn(_) => "connection",
                Owner::Pid(_) => "pid",
                Owner::Orphan if self.persistent => "orphan",
                Owner::Orphan => "orphan (release failed)",
            },
            persistent: self.persistent,
            acquired_unix_ms: self.acquired_unix_ms,
            state: self.state_string(),
            lvb_hex: None,
        }
    }
}

/// The leases of this host's clients, and the operations in flight on their resources.
#[derive(Debug)]
pub struct Registry {
    /// Boxed: taking one out moves pointers, not leases (840 bytes each).
    #[allow(clippy::vec_box)]
    leases: Vec<Box<Lease>>,
    /// How many leases each resource has here: a resource without any (a new acquire's
    /// usual case) is answered without a walk over every lease. A lease's lockspace and
    /// resource never change once it is in.
    keys: HashMap<ResourceKey, usize>,
    claims: Claims,
    /// Counts changes (leases or claims): the state file is rewritten when it moves.
    changes: u64,
    /// The journal ids of leases added, changed (any `&mut` access) or taken out since
    /// [`Registry::take_touched`] last ran: what the state file's next records are of.
    touched: std::collections::HashSet<u64>,
    /// The last journal id given.
    last_id: u64,
}

impl Registry {
    /// An empty registry; `no_exclusion` turns local exclusion off (the test that shows it
    /// bites, TENURE_UNSAFE_NO_LOCAL_EXCLUSION).
    pub fn new(no_exclusion: bool) -> Self {
        Registry {
            leases: Vec::new(),
            keys: HashMap::new(),
            claims: Claims::new(no_exclusion),
            changes: 0,
            touched: std::collections::HashSet::new(),
            last_id: 0,
        }
    }

    /// A number that moves whenever a lease or claim may have changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn changed(&mut self) {
        self.changes = self.changes.wrapping_add(1);
    }

    /// `l` goes in: a fresh journal id, touched, counted under its key.
    fn enter(&mut self, mut l: Lease) {
        self.last_id += 1;
        l.journal_id = self.last_id;
        self.touched.insert(l.journal_id);
        *self.keys.entry(l.key()).or_insert(0) += 1;
        self.leases.push(Box::new(l));
    }

    /// `l` went out: touched, no longer counted.
    fn left(&mut self, l: &Lease) {
        self.touched.insert(l.journal_id);
        let key = l.key();
        match self.keys.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.keys.remove(&key);
            }
            None => debug_assert!(false, "a lease left that was not counted"),
        }
    }

    /// The journal ids touched since the last call (see `touched`), cleared.
    pub fn take_touched(&mut self) -> std::collections::HashSet<u64> {
        std::mem::take(&mut self.touched)
    }

    /// Marks the leases matching `pred` touched: what the state says of them changed outside
    /// the registry (their client's kill path or restrictions).
    pub fn touch_where(&mut self, mut pred: impl FnMut(&Lease) -> bool) {
        let mut any = false;
        for l in self.leases.iter().filter(|l| pred(l)) {
            self.touched.insert(l.journal_id);
            any = true;
        }
        if any {
            self.changed();
        }
    }

    /// Every lease, joiners included.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Lease> + Clone + '_ {
        self.leases.iter().map(|l| &**l)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No lease at all.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Adds granted (or joining) leases.
    pub fn extend(&mut self, leases: impl IntoIterator<Item = Lease>) {
        self.changed();
        for l in leases {
            self.enter(l);
        }
    }

    /// Adds one lease.
    pub fn push(&mut self, lease: Lease) {
        self.changed();
        self.enter(lease);
    }

    /// Takes the lease at `i` out.
    pub fn remove(&mut self, i: usize) -> Lease {
        self.changed();
        let l = *self.leases.remove(i);
        self.left(&l);
        l
    }

    /// Takes every lease matching `pred` out, keeping the order of the rest.
    pub fn take(&mut self, mut pred: impl FnMut(&Lease) -> bool) -> Vec<Lease> {
        self.changed();
        if !self.leases.iter().any(|l| pred(l)) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut keep = Vec::with_capacity(self.leases.len());
        for l in std::mem::take(&mut self.leases) {
            if pred(&l) {
                out.push(*l);
            } else {
                keep.push(l);
            }
        }
        self.leases = keep;
        for l in &out {
            self.left(l);
        }
        out
    }

    /// The operations in flight.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// An operation on `key` started (asked for first).
    pub fn begin(&mut self, key: ResourceKey, op: InFlight) {
        self.changed();
        self.claims.begin(key, op);
    }

    /// The operation `op` on `key` ended.
    pub fn end(&mut self, key: &ResourceKey, op: InFlight) {
        self.changed();
        self.claims.end(key, op);
    }

    /// What this host's clients hold of `key` (joiners included; an orphan counts as
    /// exclusive: it is ours on disk and nobody may join it).
    pub fn local_hold(&self, key: &ResourceKey) -> LocalHold {
        if !self.keys.contains_key(key) {
            return LocalHold::Free;
        }
        let mut holders = 0;
        let mut shared = true;
        for l in self.leases.iter().filter(|l| l.is(key)) {
            holders += 1;
            shared &= l.held.acquired.shared && l.owner != Owner::Orphan;
        }
        match (holders, shared) {
            (0, _) => LocalHold::Free,
            (n, true) => LocalHold::Shared { holders: n },
            _ => LocalHold::Exclusive,
        }
    }

    /// The adoptable orphan of `key` (one per resource at most).
    pub fn orphan(&self, key: &ResourceKey) -> Option<&Lease> {
        if !self.keys.contains_key(key) {
            return None;
        }
        self.iter().find(|l| l.is(key) && l.is_orphan())
    }

    /// A lease of this host's shared hold of `key`, to copy its record from.
    pub fn shared_hold(&self, key: &ResourceKey) -> Option<&Lease> {
        if !self.keys.contains_key(key) {
            return None;
        }
        self.iter().find(|l| l.is(key) && l.held.acquired.shared)
    }

    /// Decides an acquire of `names` in `space` (all shared or all exclusive): how each one
    /// proceeds, or the first refusal — all or nothing.
    pub fn admit_acquire(
        &self,
        space: &str,
        names: &[Name],
        shared: bool,
    ) -> Result<Vec<Admit>, (ResourceKey, Refusal)> {
        names
            .iter()
            .map(|n| {
                let key = ResourceKey::new(space, *n);
                self.claims
                    .admit_acquire(&key, self.local_hold(&key), shared)
                    .map_err(|r| (key, r))
            })
            .collect()
    }

    /// Decides a conversion of `key` to shared or exclusive.
    pub fn admit_convert(&self, key: &ResourceKey, to_shared: bool) -> Result<(), Refusal> {
        self.claims
            .admit_convert(key, self.local_hold(key), to_shared)
    }

    /// An acquire's disk part started as operation `op`: its resources `on_disk` are claimed,
    /// and its joiners of shared holds wait here (holding those holds) until it ends.
    pub fn acquire_started(&mut self, op: OpId, on_disk: &[ResourceKey], joins: Vec<Lease>) {
        self.changed();
        for key in on_disk {
            self.claims.begin(key.clone(), InFlight::Acquire);
        }
        for mut j in joins {
            j.joining = Some(op);
            self.enter(j);
        }
    }

    /// The acquire `op` ended: its claims end, and its joiners (those whose owner did not go
    /// away meanwhile) come out, to be granted with its result or released.
    pub fn acquire_ended(&mut self, op: OpId, on_disk: &[ResourceKey]) -> Vec<Lease> {
        self.changed();
        for key in on_disk {
            self.claims.end(key, InFlight::Acquire);
        }
        let mut joined = self.take(|l| l.joining == Some(op));
        for j in &mut joined {
            j.joining = None;
        }
        joined
    }

    /// A release of `leases` (taken out, and split: each one its hold's last) started.
    pub fn release_started(&mut self, leases: &[Lease]) {
        self.changed();
        for l in leases {
            self.claims.begin(l.key(), InFlight::Release);
        }
    }

    /// That release ended, whatever its result.
    pub fn release_ended(&mut self, leases: &[Lease]) {
        self.changed();
        for l in leases {
            self.claims.end(&l.key(), InFlight::Release);
        }
    }

    /// Splits leases taken out for release into those that go without disk I/O — other
    /// local holders (or joiners) keep the shared hold, or an earlier lease of this batch is
    /// that hold's release — and those whose release must be written.
    pub fn split_release(&self, leases: Vec<Lease>) -> (Vec<Lease>, Vec<Lease>) {
        let mut local = Vec::new();
        let mut to_disk: Vec<Lease> = Vec::with_capacity(leases.len());
        let mut released = std::collections::HashSet::new();
        for l in leases {
            let key = l.key();
            if self.keys.contains_key(&key) || released.contains(&key) {
                local.push(l);
            } else {
                released.insert(key);
                to_disk.push(l);
            }
        }
        (local, to_disk)
    }
}

impl std::ops::Index<usize> for Registry {
    type Output = Lease;

    fn index(&self, i: usize) -> &Lease {
        &self.leases[i]
    }
}

impl std::ops::IndexMut<usize> for Registry {
    fn index_mut(&mut self, i: usize) -> &mut Lease {
        self.changed();
        self.touched.insert(self.leases[i].journal_id);
        &mut self.leases[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_core::io::DiskId;
    use tenure_core::lockspace::ResourceTarget;
    use tenure_core::paxos::{Acquired, PaxosConfig};
    use tenure_core::timeouts::Timeouts;
    use tenure_format::{AlignSize, Dblock, Geometry, LeaderRecord, SectorSize};

    fn name(n: &str) -> Name {
        Name::new(n).expect("name")
    }

    fn lease(n: &str, shared: bool, owner: Owner) -> Lease {
        let geometry =
            Geometry::new(SectorSize::B512, AlignSize::M1).expect("512-byte sectors, 1M areas");
        Lease {
            space: "R".into(),
            resource: name(n),
            location: ("/dev/x".into(), 1 << 20),
            mirrors: Vec::new(),
            held: HeldResource {
                target: ResourceTarget {
                    name: name(n),
                    disk: DiskId(0),
                    area_offset: 1 << 20,
                    geometry,
                    expect_lver: None,
                    mirrors: Vec::new(),
                },
                cfg: PaxosConfig {
                    space_name: name("R"),
                    resource_name: name(n),
                    geometry,
                    area_offset: 1 << 20,
                    host_id: 1,
                    generation: 1,
                    timeouts: Timeouts::new(1, 60),
                    no_wait: false,
                    expect_lver: None,
                    read_lvb: false,
                    shared,
                },
                acquired: Acquired {
                    lver: 1,
                    leader: LeaderRecord::new_paxos_free(geometry, name("R"), name(n), 8),
                    dblock: Dblock::default(),
                    ballots: 1,
                    lvb: None,
                    shared,
                },
            },
            owner,
            pid: 1,
            client_name: String::new(),
            acquired_unix_ms: 0,
            lvb_to_write: None,
            converting: false,
            joining: None,
            persistent: false,
            adopting: false,
            rename_to: None,
            journal_id: 0,
        }
    }

    fn conn(i: usize) -> Owner {
        Owner::Conn(ClientKey { idx: i, serial: 0 })
    }

    #[test]
    fn a_state_string_parses_back_to_its_lease_whatever_the_path() {
        let mut l = lease("a", false, conn(1));
        l.location = (r"/dev/disk/by-path/pci-0:1\\x".into(), 1 << 20);
        let spec = tenure_format::ResourceSpec::parse(&l.state_string()).expect("parses");
        assert_eq!(spec.disks[0].path, l.location.0);
        assert_eq!(spec.disks[0].offset, 1 << 20);
        assert_eq!(spec.mode, tenure_format::ResourceMode::ExclusiveAtLver(1));
    }

    #[test]
    fn holds_are_counted_per_resource_and_orphans_are_exclusive() {
        let mut r = Registry::new(false);
        let k = ResourceKey::new("R", name("a"));
        assert_eq!(r.local_hold(&k), LocalHold::Free);
        r.push(lease("a", true, conn(1)));
        r.push(lease("a", true, conn(2)));
        r.push(lease("b", false, conn(1)));
        assert_eq!(r.local_hold(&k), LocalHold::Shared { holders: 2 });
        assert_eq!(
            r.admit_acquire("R", &[name("a")], true),
            Ok(vec![Admit::Join])
        );
        assert_eq!(
            r.admit_acquire("R", &[name("c"), name("b")], false),
            Err((ResourceKey::new("R", name("b")), Refusal::Held)),
            "all or nothing: the first refusal"
        );
        r.push(lease("o", true, Owner::Orphan));
        assert_eq!(
            r.local_hold(&ResourceKey::new("R", name("o"))),
            LocalHold::Exclusive
        );
    }

    #[test]
    fn a_shared_hold_is_released_on_disk_once_by_its_last_holder() {
        let mut r = Registry::new(false);
        r.push(lease("a", true, conn(1)));
        r.push(lease("a", true, conn(2)));
        r.push(lease("a", true, conn(3)));
        // One holder goes: the others keep the hold.
        let gone = r.take(|l| l.owner == conn(1));
        let (local, disk) = r.split_release(gone);
        assert_eq!((local.len(), disk.len()), (1, 0));
        // The other two go at once: one release is written, for both.
        let gone = r.take(|_| true);
        let (local, disk) = r.split_release(gone);
        assert_eq!((local.len(), disk.len()), (1, 1));
        assert!(r.is_empty());
    }

    /// A seeded walk of clients of one host doing what clients do — acquire one or two of
    /// three resources (shared or exclusive), release, convert, die — while their operations
    /// end in any order, some failing, driven through the registry's decisions as the server
    /// drives them. Checked after every step: no resource has two granted holders unless all
    /// are shared; a ballot (disk acquire) starts only for a resource this host neither holds
    /// nor works on; a release is written only by a hold's last holder.
    struct Walk {
        reg: Registry,
        rng: u64,
        next_op: u64,
        pending: Vec<Pending>,
        grants: usize,
    }

    enum Pending {
        Acquire {
            op: OpId,
            client: usize,
            disk: Vec<(Name, bool)>,
            on_disk: Vec<ResourceKey>,
        },
        Release(Vec<Lease>),
        Convert(ResourceKey, usize, bool),
    }

    const NAMES: [&str; 3] = ["a", "b", "c"];

    impl Walk {
        fn new(seed: u64, no_exclusion: bool) -> Self {
            Walk {
                reg: Registry::new(no_exclusion),
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                next_op: 0,
                pending: Vec::new(),
                grants: 0,
            }
        }

        fn below(&mut self, n: usize) -> usize {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }

        /// Releases leases taken out: the hold's last ones are written (asserted free here).
        fn release(&mut self, gone: Vec<Lease>) {
            let (_, to_disk) = self.reg.split_release(gone);
            for l in &to_disk {
                assert_eq!(
                    self.reg.local_hold(&l.key()),
                    LocalHold::Free,
                    "a release written while a local holder keeps the hold"
                );
            }
            if !to_disk.is_empty() {
                self.reg.release_started(&to_disk);
                self.pending.push(Pending::Release(to_disk));
            }
        }

        fn acquire(&mut self, client: usize) {
            let first = self.below(3);
            let mut names = vec![name(NAMES[first])];
            if self.below(2) == 0 {
                names.push(name(NAMES[(first + 1 + self.below(2)) % 3]));
            }
            let shared = self.below(2) == 0;
            let Ok(admits) = self.reg.admit_acquire("R", &names, shared) else {
                return;
            };
            let (mut joins, mut disk, mut on_disk) = (Vec::new(), Vec::new(), Vec::new());
            for (n, a) in names.iter().zip(&admits) {
                let key = ResourceKey::new("R", *n);
                match a {
                    Admit::Join => {
                        let h = self.reg.shared_hold(&key).expect("a hold to join");
                        let mut j = lease(NAMES[0], true, conn(client));
                        j.resource = *n;
                        j.held = h.held.clone();
                        joins.push(j);
                    }
                    Admit::Disk => {
                        if !self.reg.claims().disabled() {
                            assert_eq!(self.reg.local_hold(&key), LocalHold::Free);
                            assert_eq!(self.reg.claims().in_flight(&key), None);
                        }
                        disk.push((*n, shared));
                        on_disk.push(key);
                    }
                }
            }
            if disk.is_empty() {
                self.grants += joins.len();
                self.reg.extend(joins);
                return;
            }
            let op = OpId(self.next_op);
            self.next_op += 1;
            self.reg.acquire_started(op, &on_disk, joins);
            self.pending.push(Pending::Acquire {
                op,
                client,
                disk,
                on_disk,
            });
        }

        fn complete(&mut self, i: usize) {
            match self.pending.swap_remove(i) {
                Pending::Acquire {
                    op,
                    client,
                    disk,
                    on_disk,
                } => {
                    let joined = self.reg.acquire_ended(op, &on_disk);
                    if self.below(5) == 0 {
                        self.release(joined);
                        return;
                    }
                    for (n, shared) in disk {
                        let mut l = lease(NAMES[0], shared, conn(client));
                        l.resource = n;
                        self.reg.push(l);
                        self.grants += 1;
                    }
                    self.grants += joined.len();
                    self.reg.extend(joined);
                }
                Pending::Release(leases) => self.reg.release_ended(&leases),
                Pending::Convert(key, client, to_shared) => {
                    self.reg.end(&key, InFlight::Convert);
                    for i in 0..self.reg.len() {
                        let l = &mut self.reg[i];
                        if l.is(&key) && l.converting && l.owner == conn(client) {
                            l.converting = false;
                            l.held.acquired.shared = to_shared;
                        }
                    }
                }
            }
        }

        fn convert(&mut self, client: usize) {
            let Some(i) = (0..self.reg.len()).find(|&i| {
                let l = &self.reg[i];
                l.owner == conn(client) && l.joining.is_none() && !l.converting
            }) else {
                return;
            };
            let (key, to_shared) = (self.reg[i].key(), !self.reg[i].held.acquired.shared);
            if self.reg.admit_convert(&key, to_shared).is_ok() {
                self.reg.begin(key.clone(), InFlight::Convert);
                self.reg[i].converting = true;
                self.pending.push(Pending::Convert(key, client, to_shared));
            }
        }

        fn step(&mut self) {
            let client = self.below(4);
            match self.below(10) {
                0..=2 => self.acquire(client),
                3..=5 if !self.pending.is_empty() => {
                    let i = self.below(self.pending.len());
                    self.complete(i);
                }
                6 | 7 => {
                    // Release what it holds (not what converts, nor joins still running).
                    let gone = self
                        .reg
                        .take(|l| l.owner == conn(client) && l.joining.is_none() && !l.converting);
                    self.release(gone);
                }
                8 => {
                    // Dies: its joiners go too; a conversion's lease goes when it ends.
                    let gone = self.reg.take(|l| l.owner == conn(client) && !l.converting);
                    self.release(gone);
                }
                _ => self.convert(client),
            }
        }

        /// No two granted holders of one resource unless all hold it shared.
        fn violation(&self) -> Option<String> {
            for n in NAMES {
                let key = ResourceKey::new("R", name(n));
                let granted: Vec<&Lease> = self
                    .reg
                    .iter()
                    .filter(|l| l.is(&key) && l.joining.is_none())
                    .collect();
                let exclusive = granted.iter().any(|l| !l.held.acquired.shared);
                if exclusive && granted.len() > 1 {
                    return Some(format!("{n}: {} holders, one exclusive", granted.len()));
                }
            }
            None
        }
    }

    fn walk(seed: u64, steps: usize, no_exclusion: bool) -> (Option<String>, usize) {
        let mut w = Walk::new(seed, no_exclusion);
        for _ in 0..steps {
            w.step();
            if let Some(v) = w.violation() {
                return (Some(format!("seed {seed}: {v}")), w.grants);
            }
        }
        (None, w.grants)
    }

    #[test]
    fn random_local_interleavings_keep_process_level_exclusion() {
        let mut grants = 0;
        for seed in 0..200 {
            let (v, g) = walk(seed, 2_000, false);
            assert_eq!(v, None);
            grants += g;
        }
        eprintln!("200 walks × 2,000 steps: {grants} grants, no two holders");
        assert!(grants > 10_000, "the walks grant leases: {grants}");
    }

    #[test]
    fn without_local_exclusion_the_walk_finds_two_holders() {
        let found = (0..50)
            .filter(|&s| walk(s, 2_000, true).0.is_some())
            .count();
        eprintln!("local exclusion off: {found} of 50 walks found two holders");
        assert!(
            found > 0,
            "the checker must catch the bug local exclusion prevents"
        );
    }
}
