//! The state file as a journal: its first line is a whole [`HostState`] document, each
//! further line one [`Record`] of what changed since. A write appends only the records of
//! what changed (a lease granted or released, a lockspace renewed), so its cost follows the
//! change, not the number of leases held; once the records outgrow half the document (and
//! [`COMPACT_SLACK`]), the next write is the whole state again (written aside and renamed
//! over the file), so the file stays within a constant factor of the state.
//!
//! Reading (`HostState::parse`) replays the records over the document. A record that does
//! not parse, a last line without its newline (a write cut short) or a record naming a lease
//! the file does not have is damage: the state is refused, as any damaged state is (a crash
//! then resets the host, as without adoption). Nothing of a damaged file is guessed at.
//!
//! Invariant: after every write, replaying the file gives what [`super::Host::state`] gave
//! at that moment (the test `the_state_journal_reads_back_as_the_whole_state_after_every_change`
//! checks it step by step).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::handover::{HostState, LeaseState, SpaceState, StateError};
use tenure_core::delta::DeltaHandover;
use tenure_core::lockspace::LockspaceId;

/// What a lockspace's recorded state is made of that can change: which joined lockspace it
/// is (a lockspace left and joined again under its name is another), its renewal state,
/// `used` and `used_by_orphans`. Equal keys, equal states.
pub type SpaceKey = (LockspaceId, DeltaHandover, bool, bool);

/// A joined lockspace as a write sees it: its name (hex), its key, and its state when that
/// changed since the last write.
pub type SpaceChange = (String, SpaceKey, Option<SpaceState>);

/// Records may grow to half the document and this much before the file is compacted.
pub const COMPACT_SLACK: u64 = 1 << 20;

/// The head of the state: what changes with every write apart from lockspaces and leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadState {
    /// When written (CLOCK_MONOTONIC, ns).
    pub written_at_ns: u64,
    /// Lease operations in flight.
    pub in_flight: Vec<String>,
}

/// One line after the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // one record at a time, written or read
pub enum Record {
    /// The head, and the lockspaces lost, as of this write (every write has one).
    Head {
        /// See [`HeadState`].
        head: HeadState,
        /// Lockspaces lost.
        lost: Vec<String>,
    },
    /// A lockspace joined or changed (replaces the one of its name).
    Space(SpaceState),
    /// A lockspace no longer in the state (by its name, hex).
    SpaceGone(String),
    /// A lease granted or changed (replaces the one of its id).
    Lease(LeaseState),
    /// A lease no longer held (by its id).
    LeaseGone(u64),
}

/// What to do with the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    /// Write these bytes as the whole file (aside, then renamed over it).
    Whole(Vec<u8>),
    /// Append these bytes to the file.
    Append(Vec<u8>),
}

/// The writer's memory of what the state file says, so that a write appends only what
/// changed. After a write that failed, [`StateJournal::reset`]: the next one is whole.
#[derive(Debug)]
pub struct StateJournal {
    /// The file holds a document written through this journal.
    written: bool,
    /// The lockspaces written, by name (hex): what their state was made of when written.
    spaces: BTreeMap<String, SpaceKey>,
    leases: HashSet<u64>,
    document_bytes: u64,
    record_bytes: u64,
    /// [`COMPACT_SLACK`], or a test's.
    slack: u64,
}

impl Default for StateJournal {
    fn default() -> Self {
        Self::new()
    }
}

impl StateJournal {
    /// A journal of a file not written yet.
    pub fn new() -> Self {
        Self::with_compact_slack(COMPACT_SLACK)
    }

    /// One that compacts once the records outgrow half the document and `slack` (tests).
    pub fn with_compact_slack(slack: u64) -> Self {
        StateJournal {
            written: false,
            spaces: BTreeMap::new(),
            leases: HashSet::new(),
            document_bytes: 0,
            record_bytes: 0,
            slack,
        }
    }

    /// The file is gone or damaged: the next write is the whole state.
    pub fn reset(&mut self) {
        *self = Self::with_compact_slack(self.slack);
    }

    /// Bytes in the file as written: the document and the records after it.
    pub fn file_bytes(&self) -> u64 {
        self.document_bytes + self.record_bytes
    }

    /// The next write should be the whole state: none written yet, or the records
    /// outgrew the document.
    pub(super) fn wants_whole(&self) -> bool {
        !self.written || self.record_bytes > self.document_bytes / 2 + self.slack
    }

    /// Whether the lockspace `name_hex` was written with this key (its state is as written).
    pub(super) fn space_unchanged(&self, name_hex: &str, key: &SpaceKey) -> bool {
        self.spaces.get(name_hex) == Some(key)
    }

    /// The whole state as the file's new content, its lockspaces made of `keys`; remembered
    /// as written.
    pub(super) fn whole(&mut self, st: &HostState, keys: Vec<(String, SpaceKey)>) -> Vec<u8> {
        let mut bytes = st.to_bytes();
        bytes.push(b'\n');
        self.written = true;
        self.spaces = keys.into_iter().collect();
        self.leases = st.leases.iter().map(|l| l.id).collect();
        self.document_bytes = bytes.len() as u64;
        self.record_bytes = 0;
        bytes
    }

    /// The records that bring the file from what it says to `head`, `lost` and `spaces`
    /// (every joined lockspace by name and key, with its state where the key changed), with
    /// the leases of `touched` ids that are still held as in `leases` (those not in it are
    /// gone); remembered as written.
    pub(super) fn append(
        &mut self,
        head: HeadState,
        lost: Vec<String>,
        spaces: Vec<SpaceChange>,
        touched: HashSet<u64>,
        leases: Vec<LeaseState>,
    ) -> Vec<u8> {
        let mut records = vec![Record::Head { head, lost }];
        let mut now: BTreeMap<String, SpaceKey> = BTreeMap::new();
        for (name, key, state) in spaces {
            if let Some(st) = state {
                records.push(Record::Space(st));
            }
            now.insert(name, key);
        }
        for name in self.spaces.keys() {
            if !now.contains_key(name) {
                records.push(Record::SpaceGone(name.clone()));
            }
        }
        self.spaces = now;
        let mut held = HashSet::new();
        for l in leases {
            held.insert(l.id);
            self.leases.insert(l.id);
            records.push(Record::Lease(l));
        }
        let mut gone: Vec<u64> = touched
            .into_iter()
            .filter(|id| !held.contains(id) && self.leases.remove(id))
            .collect();
        gone.sort_unstable();
        records.extend(gone.into_iter().map(Record::LeaseGone));
        let mut bytes = Vec::new();
        for r in &records {
            // Plain data: serialising cannot fail.
            if serde_json::to_writer(&mut bytes, r).is_ok() {
                bytes.push(b'\n');
            }
        }
        self.record_bytes += bytes.len() as u64;
        bytes
    }
}

/// Replays the records `rest` (the lines after the document) over `st`. Lease ids are
/// given in the order leases go in, so the leases come out in the writer's order.
pub(super) fn replay(st: &mut HostState, rest: &[u8]) -> Result<(), StateError> {
    if rest.last().is_some_and(|&b| b != b'\n') {
        return Err(StateError::Damaged(
            "its last record has no end (a write was cut short)".into(),
        ));
    }
    let mut plain = Vec::new();
    let mut by_id: BTreeMap<u64, LeaseState> = BTreeMap::new();
    for l in std::mem::take(&mut st.leases) {
        if l.id == 0 {
            plain.push(l);
        } else if let Some(dup) = by_id.insert(l.id, l) {
            return Err(StateError::Damaged(format!(
                "two leases have the id {}",
                dup.id
            )));
        }
    }
    for (n, line) in rest.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: Record = serde_json::from_slice(line)
            .map_err(|e| StateError::Damaged(format!("record {}: {e}", n + 1)))?;
        match r {
            Record::Head { head, lost } => {
                st.written_at_ns = head.written_at_ns;
                st.in_flight = head.in_flight;
                st.lost = lost;
            }
            Record::Space(s) => match st.spaces.iter_mut().find(|x| x.name_hex == s.name_hex) {
                Some(x) => *x = s,
                None => st.spaces.push(s),
            },
            Record::SpaceGone(name) => {
                let before = st.spaces.len();
                st.spaces.retain(|x| x.name_hex != name);
                if st.spaces.len() == before {
                    return Err(StateError::Damaged(format!(
                        "record {} removes lockspace {name}, which the state does not have",
                        n + 1
                    )));
                }
            }
            Record::Lease(l) => {
                if l.id == 0 {
                    return Err(StateError::Damaged(format!(
                        "record {} is of a lease without an id",
                        n + 1
                    )));
                }
                by_id.insert(l.id, l);
            }
            Record::LeaseGone(id) => {
                if by_id.remove(&id).is_none() {
                    return Err(StateError::Damaged(format!(
                        "record {} removes lease {id}, which the state does not have",
                        n + 1
                    )));
                }
            }
        }
    }
    plain.extend(by_id.into_values());
    st.leases = plain;
    Ok(())
}
