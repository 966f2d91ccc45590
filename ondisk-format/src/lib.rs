//! tenure-format: the bytes tenure shares with sanlock 3.x on disk (spec/ONDISK.md).
//!
//! Byte-exact records (leader, delta sector with host bitmap, request record, dblock, mode
//! block, resource-index header and entries), lease-area geometry, sanlock's CRC-32C variant,
//! whole-area images and decoding for `format` and `dump`, and the lockspace/resource string
//! forms. No I/O and no clock: callers pass bytes in and get typed values or typed errors out.
//! Nothing here panics on bytes read from disk.
//!
//! # Glossary
//! - **lockspace**: a set of hosts sharing one area of delta leases; each host holds a
//!   **host_id** (a sector) in it, with a **generation** bumped on every join.
//! - **delta lease**: one host's slot, renewed by rewriting its timestamp.
//! - **resource** / **paxos lease**: one lease area decided by Disk Paxos ballots.
//! - **leader record**: the 200-byte record at sector 0 of a resource, or at each slot of a
//!   lockspace.
//! - **dblock**: a host's ballot state (mbal, bal, inp) in a resource area.
//! - **lver**: a resource's lease version, +1 per committed ballot.
//! - **mbal / bal / inp**: ballot promised, ballot of the last written proposal, the proposal.
//! - **LVB**: lock value block, one sector of application data per resource.

#![forbid(unsafe_code)]

pub mod area;
pub mod crc;
pub mod delta;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod geometry;
pub mod leader;
pub mod name;
pub mod paxos;
pub mod rindex;
pub mod spec;

pub use area::{AreaKind, AreaProbe, AreaReport, Problem};
pub use crc::checksum;
pub use delta::{DeltaSector, HostBitmap};
pub use error::{DecodeError, GeometryError, NameError, SpecError};
pub use geometry::{AlignSize, Geometry, SectorSize};
pub use leader::{LeaderKind, LeaderRecord};
pub use name::Name;
pub use paxos::{Dblock, ModeBlock, RequestRecord};
pub use rindex::{RindexEntry, RindexHeader};
pub use spec::{
    DiskLocation, DumpTarget, LeaseRef, LockspaceSpec, ResourceMode, ResourceSpec, RindexSpec,
};
