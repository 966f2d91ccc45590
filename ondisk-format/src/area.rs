//! Whole lease areas: building the image `format` writes, recognising what an area holds from
//! its first bytes, and decoding every record of an area into a report (what `tenure dump`
//! shows). Pure functions over byte slices; the caller does the I/O.
//!
//! Invariant: decoding never panics and never stops at the first bad record — each record
//! that fails is reported as a [`Problem`] with its sector, and the others are still shown.

use serde::Serialize;

use crate::delta::DeltaSector;
use crate::error::DecodeError;
use crate::geometry::{AlignSize, Geometry, SectorSize};
use crate::leader::{LeaderKind, LeaderRecord, DELTA_MAGIC, PAXOS_CLEARED_MAGIC, PAXOS_MAGIC};
use crate::name::Name;
use crate::paxos::{Dblock, ModeBlock, RequestRecord, REQUEST_MAGIC};
use crate::rindex::{RindexEntry, RindexHeader, RINDEX_ENTRY_LEN, RINDEX_MAGIC};

/// Bytes needed to recognise an area and learn its geometry: two sectors of the larger size,
/// so that sector 1 can stand in when sector 0 is damaged.
pub const PROBE_LEN: usize = 8192;

/// Fills `area` (exactly one area of `geometry`) with a formatted lockspace: every slot a free
/// delta lease, the rest zero, except that sector 0's magic is left zero. The caller writes
/// this in one I/O, then writes [`lockspace_sector0`] over sector 0, so that a reader of a
/// half-written area sees a bad magic instead of a lockspace (ONDISK.md: format is atomic).
pub fn encode_lockspace_area(
    area: &mut [u8],
    geometry: Geometry,
    space_name: Name,
    io_timeout_s: u16,
) {
    assert_eq!(area.len() as u64, geometry.area_bytes(), "area buffer size");
    area.fill(0);
    let leader = LeaderRecord::new_delta_free(geometry, space_name, io_timeout_s);
    let ss = geometry.sector_size_bytes() as usize;
    for sector in area
        .chunks_exact_mut(ss)
        .take(usize::try_from(geometry.hosts_max()).unwrap_or(usize::MAX))
    {
        leader.encode_into(sector);
    }
    area[..4].fill(0);
}

/// Sector 0 of a formatted lockspace, with its real magic: written last by `format`.
/// `sector` must be exactly one sector of `geometry` (asserted).
pub fn lockspace_sector0(
    sector: &mut [u8],
    geometry: Geometry,
    space_name: Name,
    io_timeout_s: u16,
) {
    assert_eq!(
        sector.len(),
        geometry.sector_size_bytes() as usize,
        "sector buffer size"
    );
    sector.fill(0);
    LeaderRecord::new_delta_free(geometry, space_name, io_timeout_s).encode_into(sector);
}

/// Fills `area` with a formatted resource: leader (free, lver 0), request record, zeros.
pub fn encode_resource_area(
    area: &mut [u8],
    geometry: Geometry,
    space_name: Name,
    resource_name: Name,
    num_hosts: u64,
) {
    assert_eq!(area.len() as u64, geometry.area_bytes(), "area buffer size");
    area.fill(0);
    let ss = geometry.sector_size_bytes() as usize;
    LeaderRecord::new_paxos_free(geometry, space_name, resource_name, num_hosts)
        .encode_into(&mut area[..ss]);
    RequestRecord::FORMATTED.encode_into(&mut area[ss..2 * ss]);
}

/// What the first bytes of an area announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AreaKind {
    /// Delta leases.
    Lockspace,
    /// A paxos lease.
    Resource,
    /// A paxos lease that was deliberately cleared.
    ClearedResource,
    /// A resource-index header.
    Rindex,
    /// All zero.
    Empty,
    /// Something else.
    Unrecognised,
}

/// Result of [`identify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AreaProbe {
    /// What the area seems to hold.
    pub kind: AreaKind,
    /// Geometry, when the area says it.
    pub geometry: Option<Geometry>,
    /// The magic of sector 0.
    pub magic: u32,
    /// Why the geometry or kind came from somewhere other than an intact sector 0.
    pub note: Option<String>,
}

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    bytes
        .get(off..off + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Recognises an area from its first [`PROBE_LEN`] bytes (fewer are accepted; what is
/// missing counts as zero).
pub fn identify(head: &[u8]) -> AreaProbe {
    let magic = u32_at(head, 0);
    if head.iter().take(PROBE_LEN).all(|&b| b == 0) {
        return AreaProbe {
            kind: AreaKind::Empty,
            geometry: None,
            magic,
            note: None,
        };
    }
    let leader_geometry =
        |at: usize| Geometry::from_leader_fields(u32_at(head, at + 12), u32_at(head, at + 8)).ok();
    let sector0 = match magic {
        DELTA_MAGIC => Some(AreaKind::Lockspace),
        PAXOS_MAGIC => Some(AreaKind::Resource),
        PAXOS_CLEARED_MAGIC => Some(AreaKind::ClearedResource),
        RINDEX_MAGIC => Some(AreaKind::Rindex),
        _ => None,
    };
    if let Some(kind) = sector0 {
        let geometry = if kind == AreaKind::Rindex {
            RindexHeader::decode(head)
                .ok()
                .and_then(|h| h.geometry().ok())
        } else {
            leader_geometry(0)
        };
        if geometry.is_some() {
            return AreaProbe {
                kind,
                geometry,
                magic,
                note: None,
            };
        }
    }
    // Sector 0 is damaged or half-written: let sector 1 tell what the area is.
    for ss in [SectorSize::B512, SectorSize::B4096] {
        let at = ss.bytes() as usize;
        match u32_at(head, at) {
            DELTA_MAGIC => {
                if let Some(g) = leader_geometry(at).filter(|g| g.sector_size() == ss) {
                    let why = if magic == 0 {
                        "format incomplete or interrupted"
                    } else {
                        "damaged"
                    };
                    return AreaProbe {
                        kind: AreaKind::Lockspace,
                        geometry: Some(g),
                        magic,
                        note: Some(format!("sector 0 is not a valid delta lease ({why}); geometry taken from sector 1")),
                    };
                }
            }
            REQUEST_MAGIC => {
                let g = Geometry::legacy(ss);
                return AreaProbe {
                    kind: AreaKind::Resource,
                    geometry: Some(g),
                    magic,
                    note: Some(format!("resource leader in sector 0 is unreadable; assuming geometry {g} from the request record")),
                };
            }
            _ => {}
        }
    }
    AreaProbe {
        kind: AreaKind::Unrecognised,
        geometry: None,
        magic,
        note: None,
    }
}

/// A record that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Sector index inside the area.
    pub sector: u64,
    /// Host id the sector belongs to, where it belongs to one.
    pub host_id: Option<u64>,
    /// Which record: "leader", "delta lease", "request record", "dblock", "area".
    pub record: &'static str,
    /// Machine-readable class: "bad_checksum", "bad_magic", ...
    pub error_kind: &'static str,
    /// What is wrong, in words.
    pub error: String,
}

impl Problem {
    fn new(sector: u64, host_id: Option<u64>, record: &'static str, e: &DecodeError) -> Self {
        Problem {
            sector,
            host_id,
            record,
            error_kind: e.kind_code(),
            error: e.to_string(),
        }
    }
}

impl DecodeError {
    /// A short stable code for scripts.
    pub fn kind_code(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short",
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::BadVersion { .. } => "bad_version",
            DecodeError::BadChecksum { .. } => "bad_checksum",
            DecodeError::Geometry(_) => "bad_geometry",
            DecodeError::SectorSizeMismatch { .. } => "sector_size_mismatch",
            DecodeError::LockspaceNameMismatch { .. } => "lockspace_name_mismatch",
            DecodeError::ResourceNameMismatch { .. } => "resource_name_mismatch",
            DecodeError::NumHosts { .. } => "bad_num_hosts",
        }
    }
}

/// One lockspace slot in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    /// Host id (sector index + 1).
    pub host_id: u64,
    /// owner_id as written (equals host_id for a well-formed slot).
    pub owner_id: u64,
    /// The holder's host name.
    pub owner_name: Name,
    /// Generation (+1 per join).
    pub generation: u64,
    /// Holder's monotonic seconds at its last renewal; 0 = free.
    pub timestamp: u64,
    /// Holder's io_timeout in seconds.
    pub io_timeout: u16,
    /// Host ids whose bits are set in this slot's bitmap.
    pub bitmap: Vec<u64>,
    /// Host-event fields.
    pub write_id: u64,
    /// Host-event fields.
    pub write_generation: u64,
    /// Host-event fields.
    pub write_timestamp: u64,
}

/// A non-zero dblock or mode block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DblockReport {
    /// Host id (sector index - 1).
    pub host_id: u64,
    /// The dblock.
    pub dblock: Dblock,
    /// The mode block, when not zero.
    pub mode_block: Option<ModeBlock>,
}

/// Everything a dump found in one area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Reports are built once per area by `dump`, never on a data path: size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum AreaReport {
    /// A lockspace.
    Lockspace {
        /// Device offset.
        offset: u64,
        /// Geometry.
        geometry: Geometry,
        /// Lockspace name (from sector 0, or the first readable slot).
        name: Option<Name>,
        /// Slots whose content differs from a free slot.
        slots_in_use: Vec<SlotReport>,
        /// Records that failed to decode.
        problems: Vec<Problem>,
        /// How the area was recognised, when not from an intact sector 0.
        note: Option<String>,
    },
    /// A resource (paxos lease).
    Resource {
        /// Device offset.
        offset: u64,
        /// Geometry.
        geometry: Geometry,
        /// True when the leader carries the cleared magic.
        cleared: bool,
        /// The leader, when readable.
        leader: Option<LeaderRecord>,
        /// The request record, when readable.
        request: Option<RequestRecord>,
        /// Non-zero dblocks and mode blocks.
        dblocks: Vec<DblockReport>,
        /// Hex of the lock value block up to its last non-zero byte, when any byte is set.
        lvb_hex: Option<String>,
        /// Records that failed to decode.
        problems: Vec<Problem>,
        /// How the area was recognised, when not from an intact sector 0.
        note: Option<String>,
    },
    /// A resource index.
    Rindex {
        /// Device offset.
        offset: u64,
        /// Geometry.
        geometry: Geometry,
        /// Header.
        header: RindexHeader,
        /// Used entries with their index.
        entries: Vec<(u64, RindexEntry)>,
    },
    /// Areas whose first sector this tool cannot parse.
    Unrecognised {
        /// Device offset of the first such area.
        offset: u64,
        /// How many consecutive 1 MiB areas (the scan step) were not recognised.
        count: u64,
        /// Magic (first four bytes) of the first one.
        magic: u32,
        /// Why, in words.
        reason: String,
    },
}

fn slot_is_free(leader: &LeaderRecord, bitmap_empty: bool) -> bool {
    leader.owner_id == 0
        && leader.owner_generation == 0
        && leader.timestamp == 0
        && leader.resource_name.is_empty()
        && leader.write_id == 0
        && bitmap_empty
}

/// Decodes a lockspace area (`area` holds the whole area of `geometry`).
pub fn decode_lockspace_area(
    offset: u64,
    area: &[u8],
    geometry: Geometry,
    note: Option<String>,
) -> AreaReport {
    let ss = geometry.sector_size_bytes() as usize;
    let hosts = usize::try_from(geometry.hosts_max()).unwrap_or(usize::MAX);
    // The name comes from sector 0, else from the first slot whose leader decodes.
    let name = area.chunks_exact(ss).take(hosts).find_map(|s| {
        LeaderRecord::decode(s)
            .ok()
            .filter(|l| l.magic == DELTA_MAGIC)
            .map(|l| l.space_name)
    });
    let mut slots_in_use = Vec::new();
    let mut problems = Vec::new();
    if area.len() < hosts * ss {
        problems.push(Problem::new(
            0,
            None,
            "area",
            &DecodeError::Short {
                needed: hosts * ss,
                found: area.len(),
            },
        ));
    }
    for (i, sector) in area.chunks_exact(ss).take(hosts).enumerate() {
        let host_id = i as u64 + 1;
        let Some(space) = name else {
            problems.push(Problem::new(
                i as u64,
                Some(host_id),
                "delta lease",
                &LeaderRecord::decode(sector)
                    .err()
                    .unwrap_or(DecodeError::BadMagic {
                        found: u32_at(sector, 0),
                        expected: "delta lease 0x12212010",
                    }),
            ));
            continue;
        };
        match DeltaSector::decode(sector, geometry, &space) {
            Ok(d) => {
                if slot_is_free(&d.leader, d.bitmap.is_empty()) {
                    continue;
                }
                slots_in_use.push(SlotReport {
                    host_id,
                    owner_id: d.leader.owner_id,
                    owner_name: d.leader.resource_name,
                    generation: d.leader.owner_generation,
                    timestamp: d.leader.timestamp,
                    io_timeout: d.leader.io_timeout,
                    bitmap: d.bitmap.iter().collect(),
                    write_id: d.leader.write_id,
                    write_generation: d.leader.write_generation,
                    write_timestamp: d.leader.write_timestamp,
                });
                if d.leader.owner_id != host_id && d.leader.owner_id != 0 {
                    problems.push(Problem {
                        sector: i as u64,
                        host_id: Some(host_id),
                        record: "delta lease",
                        error_kind: "owner_id_mismatch",
                        error: format!(
                            "slot of host id {host_id} names owner_id {}",
                            d.leader.owner_id
                        ),
                    });
                }
            }
            Err(e) => problems.push(Problem::new(i as u64, Some(host_id), "delta lease", &e)),
        }
    }
    AreaReport::Lockspace {
        offset,
        geometry,
        name,
        slots_in_use,
        problems,
        note,
    }
}

/// Decodes a resource area (`area` holds the whole area of `geometry`).
pub fn decode_resource_area(
    offset: u64,
    area: &[u8],
    geometry: Geometry,
    note: Option<String>,
) -> AreaReport {
    let ss = geometry.sector_size_bytes() as usize;
    let mut problems = Vec::new();
    let sector = |n: usize| area.get(n * ss..(n + 1) * ss).unwrap_or(&[]);
    let leader = match LeaderRecord::decode(sector(0)).and_then(|l| {
        if l.kind() == Some(LeaderKind::Delta) {
            return Err(DecodeError::BadMagic {
                found: l.magic,
                expected: "paxos lease 0x06152010",
            });
        }
        l.check_area(geometry, &l.space_name, None).map(|()| l)
    }) {
        Ok(l) => Some(l),
        Err(e) => {
            problems.push(Problem::new(0, None, "leader", &e));
            None
        }
    };
    let cleared = leader.is_some_and(|l| l.magic == PAXOS_CLEARED_MAGIC);
    let request = match RequestRecord::decode(sector(1)) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(Problem::new(1, None, "request record", &e));
            None
        }
    };
    let mut dblocks = Vec::new();
    for host_id in 1..=geometry.hosts_max() {
        let n = usize::try_from(host_id + 1).unwrap_or(usize::MAX);
        let s = sector(n);
        if s.is_empty() {
            problems.push(Problem::new(
                n as u64,
                Some(host_id),
                "dblock",
                &DecodeError::Short {
                    needed: ss,
                    found: 0,
                },
            ));
            break;
        }
        if s.iter().all(|&b| b == 0) {
            continue;
        }
        let mode = ModeBlock::decode_from_sector(s)
            .ok()
            .filter(|m| *m != ModeBlock::default());
        match Dblock::decode(s) {
            Ok(dblock) => dblocks.push(DblockReport {
                host_id,
                dblock,
                mode_block: mode,
            }),
            Err(e) => problems.push(Problem::new(n as u64, Some(host_id), "dblock", &e)),
        }
    }
    let lvb_hex = geometry.lvb_offset().ok().and_then(|off| {
        let off = usize::try_from(off).ok()?;
        let lvb = area.get(off..off + ss)?;
        let end = lvb.iter().rposition(|&b| b != 0)? + 1;
        Some(lvb[..end].iter().map(|b| format!("{b:02x}")).collect())
    });
    AreaReport::Resource {
        offset,
        geometry,
        cleared,
        leader,
        request,
        dblocks,
        lvb_hex,
        problems,
        note,
    }
}

/// Decodes a resource-index area.
pub fn decode_rindex_area(
    offset: u64,
    area: &[u8],
    geometry: Geometry,
) -> Result<AreaReport, DecodeError> {
    let header = RindexHeader::decode(area)?;
    let mut entries = Vec::new();
    for n in 0..u64::from(header.max_resources) {
        let at = usize::try_from(header.entry_offset(n)).unwrap_or(usize::MAX);
        let Some(bytes) = area.get(at..at.saturating_add(RINDEX_ENTRY_LEN)) else {
            break;
        };
        let e = RindexEntry::decode(bytes)?;
        if !e.is_empty() {
            entries.push((n, e));
        }
    }
    Ok(AreaReport::Rindex {
        offset,
        geometry,
        header,
        entries,
    })
}

/// Decodes an area recognised by [`identify`]; `area` holds the whole area of the probe's
/// geometry (or as much of it as exists). Returns `None` for empty areas.
pub fn decode_area(offset: u64, probe: &AreaProbe, area: &[u8]) -> Option<AreaReport> {
    let unrecognised = |reason: String| AreaReport::Unrecognised {
        offset,
        count: 1,
        magic: probe.magic,
        reason,
    };
    let Some(geometry) = probe.geometry else {
        return match probe.kind {
            AreaKind::Empty => None,
            AreaKind::Unrecognised => Some(unrecognised(format!(
                "first sector magic {:#010x} is not a sanlock/tenure lockspace, resource or resource index",
                probe.magic
            ))),
            kind => Some(unrecognised(format!("{kind:?} magic, but its geometry fields are invalid"))),
        };
    };
    Some(match probe.kind {
        AreaKind::Lockspace => decode_lockspace_area(offset, area, geometry, probe.note.clone()),
        AreaKind::Resource | AreaKind::ClearedResource => {
            decode_resource_area(offset, area, geometry, probe.note.clone())
        }
        AreaKind::Rindex => decode_rindex_area(offset, area, geometry)
            .unwrap_or_else(|e| unrecognised(e.to_string())),
        AreaKind::Empty | AreaKind::Unrecognised => unrecognised("no geometry".into()),
    })
}

/// The align size a probe implies, for stepping to the next area (1 MiB when unknown).
pub fn step_bytes(probe: &AreaProbe) -> u64 {
    probe
        .geometry
        .map_or(AlignSize::M1.bytes(), |g| g.area_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockspace(g: Geometry) -> Vec<u8> {
        let mut area = vec![0u8; g.area_bytes() as usize];
        let name = Name::new("ls1").unwrap();
        encode_lockspace_area(&mut area, g, name, 10);
        let ss = g.sector_size_bytes() as usize;
        lockspace_sector0(&mut area[..ss], g, name, 10);
        area
    }

    #[test]
    fn format_then_identify_and_decode() {
        for g in [
            Geometry::LEGACY_512,
            Geometry::new(SectorSize::B4096, AlignSize::M1).unwrap(),
            Geometry::LEGACY_4096,
        ] {
            let area = lockspace(g);
            let p = identify(&area[..PROBE_LEN]);
            assert_eq!((p.kind, p.geometry), (AreaKind::Lockspace, Some(g)));
            match decode_area(0, &p, &area).unwrap() {
                AreaReport::Lockspace {
                    slots_in_use,
                    problems,
                    ..
                } => {
                    assert!(slots_in_use.is_empty());
                    assert!(problems.is_empty(), "{problems:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn half_formatted_lockspace_is_recognised_with_note() {
        let g = Geometry::LEGACY_512;
        let mut area = vec![0u8; g.area_bytes() as usize];
        encode_lockspace_area(&mut area, g, Name::new("x").unwrap(), 10);
        let p = identify(&area);
        assert_eq!(p.kind, AreaKind::Lockspace);
        assert!(p.note.as_deref().unwrap().contains("incomplete"));
        let AreaReport::Lockspace { problems, .. } = decode_area(0, &p, &area).unwrap() else {
            panic!()
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].error_kind, "bad_magic");
        assert_eq!(problems[0].host_id, Some(1));
    }

    #[test]
    fn flipped_byte_is_a_checksum_problem_for_that_slot() {
        let g = Geometry::LEGACY_512;
        let mut area = lockspace(g);
        area[4 * 512 + 40] ^= 0x04;
        let p = identify(&area);
        let AreaReport::Lockspace { problems, .. } = decode_area(0, &p, &area).unwrap() else {
            panic!()
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].host_id, problems[0].error_kind),
            (Some(5), "bad_checksum")
        );
    }

    #[test]
    fn resource_format_decode() {
        for g in [
            Geometry::LEGACY_512,
            Geometry::new(SectorSize::B4096, AlignSize::M1).unwrap(),
        ] {
            let mut area = vec![0u8; g.area_bytes() as usize];
            encode_resource_area(
                &mut area,
                g,
                Name::new("ls").unwrap(),
                Name::new("r").unwrap(),
                5,
            );
            let p = identify(&area);
            assert_eq!(p.kind, AreaKind::Resource);
            let AreaReport::Resource {
                leader,
                request,
                dblocks,
                problems,
                lvb_hex,
                ..
            } = decode_area(0, &p, &area).unwrap()
            else {
                panic!()
            };
            assert_eq!(leader.unwrap().num_hosts, 5);
            assert_eq!(request.unwrap(), RequestRecord::FORMATTED);
            assert!(dblocks.is_empty() && problems.is_empty() && lvb_hex.is_none());
        }
    }

    #[test]
    fn garbage_and_empty() {
        assert_eq!(identify(&[0u8; PROBE_LEN]).kind, AreaKind::Empty);
        let junk: Vec<u8> = (0..PROBE_LEN).map(|i| (i * 7 + 3) as u8).collect();
        let p = identify(&junk);
        assert_eq!(p.kind, AreaKind::Unrecognised);
        assert!(matches!(
            decode_area(0, &p, &junk),
            Some(AreaReport::Unrecognised { .. })
        ));
        // Short input must not panic either.
        let _ = identify(&junk[..3]);
    }
}
