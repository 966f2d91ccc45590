//! Local exclusion: which of this host's processes may start an operation on a resource.
//!
//! Disk Paxos excludes host ids, not processes: two ballots run by one host both win. So the
//! daemon serializes its own clients here, before any ballot starts (DESIGN.md, "Safety is owed
//! to processes"). Invariants kept by [`Claims`]:
//!
//! - a resource (lockspace, resource name — however a client named its disk) has at most one
//!   operation in flight on this host: an acquire, a conversion or a release;
//! - a grant is checked against held **and** in-flight leases: an exclusive lease has one local
//!   holder; a shared lease may have several local holders, which share this host's one hold
//!   on disk (one SHARED mode block), and exclusive and shared never mix locally;
//! - a shared hold is released on disk only when its last local holder, and the last joiner
//!   waiting to become one, has gone.
//!
//! The answers follow the real sanlock 3.8.5 daemon, asked with two registered clients of one
//! host (docs/sanlock-compat.md, "Local exclusion"): a resource held here → −EEXIST (a second
//! shared holder of a shared lease is granted); another local acquire or conversion in flight →
//! −EBUSY (for shared requests too); another local client's release in flight → −EAGAIN.
//!
//! Pure bookkeeping: no I/O, no clock; the server asks before it starts an operation and tells
//! when one ends, in the same reactor step, so nothing can slip between a check and a claim.

use std::collections::HashMap;

use tenure_format::Name;

/// A resource as this host's clients contend for it: the lockspace and the resource name.
/// The name is what sanlock keys its local resources by, and what the leader record on disk
/// must carry, so two paths or offsets naming one lease still meet here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    /// Lockspace name (escaped, as the server keys lockspaces).
    pub space: String,
    /// Resource name.
    pub name: Name,
}

impl ResourceKey {
    /// The key of `name` in lockspace `space`.
    pub fn new(space: &str, name: Name) -> Self {
        ResourceKey {
            space: space.to_owned(),
            name,
        }
    }
}

/// The kind of operation this host runs on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlight {
    /// An acquire (a client's, or the resource index's private lease).
    Acquire,
    /// A conversion between shared and exclusive.
    Convert,
    /// A release on disk.
    Release,
}

/// What this host's clients hold of a resource now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalHold {
    /// Nothing.
    Free,
    /// One exclusive holder (or an orphan: still ours on disk, no holder).
    Exclusive,
    /// Shared by `holders` local holders (joiners waiting to become holders included).
    Shared {
        /// At least 1.
        holders: usize,
    },
}

/// Why a local request for a resource is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Held on this host in a mode that excludes the request (sanlock: −EEXIST).
    #[error("already held on this host")]
    Held,
    /// Another local acquire or conversion works on it (sanlock: −EBUSY).
    #[error("another operation of this host is working on it")]
    Busy,
    /// Another local client's release is being written (sanlock: −EAGAIN).
    #[error("being released on this host; try again")]
    Releasing,
    /// A conversion to exclusive while other processes of this host hold the lease shared
    /// (answered as busy: −EBUSY).
    #[error("held shared by other processes of this host")]
    SharedHere,
}

/// How a request that was not refused proceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Run the protocol on disk.
    Disk,
    /// Join this host's shared hold: no disk I/O, one more local holder.
    Join,
}

/// Whether a new acquire of a resource (shared or exclusive) may go ahead, given what this
/// host holds of it and what it is doing with it.
pub fn admit_acquire(
    hold: LocalHold,
    in_flight: Option<InFlight>,
    shared: bool,
) -> Result<Admit, Refusal> {
    match in_flight {
        Some(InFlight::Acquire | InFlight::Convert) => return Err(Refusal::Busy),
        Some(InFlight::Release) => return Err(Refusal::Releasing),
        None => {}
    }
    match (hold, shared) {
        (LocalHold::Free, _) => Ok(Admit::Disk),
        (LocalHold::Shared { .. }, true) => Ok(Admit::Join),
        (LocalHold::Shared { .. } | LocalHold::Exclusive, _) => Err(Refusal::Held),
    }
}

/// Whether a holder may convert its lease: nothing else in flight, and to exclusive only as the
/// lease's sole local holder (real sanlock converts a shared lease to exclusive while other
/// local processes still hold it shared; tenure refuses — docs/sanlock-compat.md).
pub fn admit_convert(
    hold: LocalHold,
    in_flight: Option<InFlight>,
    to_shared: bool,
) -> Result<(), Refusal> {
    match in_flight {
        Some(InFlight::Acquire | InFlight::Convert) => return Err(Refusal::Busy),
        Some(InFlight::Release) => return Err(Refusal::Releasing),
        None => {}
    }
    match hold {
        LocalHold::Shared { holders } if !to_shared && holders > 1 => Err(Refusal::SharedHere),
        _ => Ok(()),
    }
}

/// This host's operations in flight, one per resource at most. (Joiners of shared holds whose
/// acquire still runs for other resources are leases of the server's, marked joining: they
/// count as holders in [`LocalHold`].)
#[derive(Debug, Default)]
pub struct Claims {
    in_flight: HashMap<ResourceKey, InFlight>,
    /// Test hook: no refusal at all (TENURE_UNSAFE_NO_LOCAL_EXCLUSION), to show the checks bite.
    disabled: bool,
}

impl Claims {
    /// An empty table; `disabled` turns every check off (tests that show the check bites).
    pub fn new(disabled: bool) -> Self {
        Claims {
            disabled,
            ..Claims::default()
        }
    }

    /// Whether the checks are off.
    pub fn disabled(&self) -> bool {
        self.disabled
    }

    /// The operation this host runs on `key`.
    pub fn in_flight(&self, key: &ResourceKey) -> Option<InFlight> {
        self.in_flight.get(key).copied()
    }

    /// Decides a new acquire (see [`admit_acquire`]).
    pub fn admit_acquire(
        &self,
        key: &ResourceKey,
        hold: LocalHold,
        shared: bool,
    ) -> Result<Admit, Refusal> {
        if self.disabled {
            return Ok(Admit::Disk);
        }
        admit_acquire(hold, self.in_flight(key), shared)
    }

    /// Decides a conversion (see [`admit_convert`]).
    pub fn admit_convert(
        &self,
        key: &ResourceKey,
        hold: LocalHold,
        to_shared: bool,
    ) -> Result<(), Refusal> {
        if self.disabled {
            return Ok(());
        }
        admit_convert(hold, self.in_flight(key), to_shared)
    }

    /// An operation on `key` started. One at a time: a second is a bug in the caller, which
    /// must have asked first (asserted), unless the checks are disabled.
    pub fn begin(&mut self, key: ResourceKey, op: InFlight) {
        let before = self.in_flight.insert(key, op);
        assert!(
            before.is_none() || self.disabled,
            "two local operations on one resource ({before:?}, then {op:?})"
        );
    }

    /// The operation `op` on `key` ended.
    pub fn end(&mut self, key: &ResourceKey, op: InFlight) {
        match self.in_flight.get(key) {
            Some(o) if *o == op => {
                self.in_flight.remove(key);
            }
            other => assert!(
                self.disabled,
                "end of {op:?} on a resource whose operation is {other:?}"
            ),
        }
    }

    /// Every operation in flight, by resource, in a stable order (for status).
    pub fn in_flight_all(&self) -> Vec<(&ResourceKey, InFlight)> {
        let mut v: Vec<_> = self.in_flight.iter().map(|(k, op)| (k, *op)).collect();
        v.sort_by(|a, b| (&a.0.space, a.0.name.as_bytes()).cmp(&(&b.0.space, b.0.name.as_bytes())));
        v
    }

    /// Nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ResourceKey {
        ResourceKey::new("R", Name::new(n).expect("name"))
    }

    #[test]
    fn answers_as_the_real_sanlock_daemon_does() {
        use InFlight::*;
        use LocalHold::*;
        // Held here: EEXIST, except a shared request of a shared lease.
        assert_eq!(admit_acquire(Exclusive, None, false), Err(Refusal::Held));
        assert_eq!(admit_acquire(Exclusive, None, true), Err(Refusal::Held));
        assert_eq!(
            admit_acquire(Shared { holders: 1 }, None, false),
            Err(Refusal::Held)
        );
        assert_eq!(
            admit_acquire(Shared { holders: 2 }, None, true),
            Ok(Admit::Join)
        );
        assert_eq!(admit_acquire(Free, None, false), Ok(Admit::Disk));
        assert_eq!(admit_acquire(Free, None, true), Ok(Admit::Disk));
        // In flight: EBUSY (shared too), EAGAIN while a release is written.
        for shared in [false, true] {
            assert_eq!(
                admit_acquire(Free, Some(Acquire), shared),
                Err(Refusal::Busy)
            );
            assert_eq!(
                admit_acquire(Shared { holders: 1 }, Some(Convert), shared),
                Err(Refusal::Busy)
            );
            assert_eq!(
                admit_acquire(Free, Some(Release), shared),
                Err(Refusal::Releasing)
            );
        }
    }

    #[test]
    fn a_conversion_to_exclusive_needs_the_sole_holder() {
        use LocalHold::*;
        assert_eq!(admit_convert(Shared { holders: 1 }, None, false), Ok(()));
        assert_eq!(
            admit_convert(Shared { holders: 2 }, None, false),
            Err(Refusal::SharedHere)
        );
        assert_eq!(admit_convert(Exclusive, None, true), Ok(()));
        assert_eq!(
            admit_convert(Exclusive, Some(InFlight::Convert), true),
            Err(Refusal::Busy)
        );
    }

    #[test]
    fn one_operation_per_resource() {
        let mut c = Claims::new(false);
        let (a, b) = (key("a"), key("b"));
        assert_eq!(c.admit_acquire(&a, LocalHold::Free, false), Ok(Admit::Disk));
        c.begin(a.clone(), InFlight::Acquire);
        assert_eq!(
            c.admit_acquire(&a, LocalHold::Free, false),
            Err(Refusal::Busy)
        );
        assert_eq!(c.admit_acquire(&b, LocalHold::Free, false), Ok(Admit::Disk));
        c.end(&a, InFlight::Acquire);
        c.begin(a.clone(), InFlight::Release);
        assert_eq!(
            c.admit_acquire(&a, LocalHold::Free, false),
            Err(Refusal::Releasing)
        );
        c.end(&a, InFlight::Release);
        assert!(c.is_idle());
    }

    #[test]
    #[should_panic(expected = "two local operations")]
    fn a_second_operation_on_one_resource_is_a_bug() {
        let mut c = Claims::new(false);
        c.begin(key("a"), InFlight::Acquire);
        c.begin(key("a"), InFlight::Acquire);
    }

    #[test]
    fn disabled_admits_everything() {
        let mut c = Claims::new(true);
        c.begin(key("a"), InFlight::Acquire);
        assert_eq!(
            c.admit_acquire(&key("a"), LocalHold::Exclusive, false),
            Ok(Admit::Disk)
        );
        c.begin(key("a"), InFlight::Acquire);
        c.end(&key("a"), InFlight::Acquire);
        c.end(&key("a"), InFlight::Acquire);
    }
}
