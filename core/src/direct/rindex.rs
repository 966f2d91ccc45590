//! The resource index (sanlock's "rindex", spec/ONDISK.md "Resource index"): a table of
//! resource names and lease offsets in one align-size area after the lockspace, plus a private
//! paxos lease (`rindex_lease`) in the next area that serialises create / delete / rebuild.
//! Resource N's lease lives at `rx_offset + 2 * align + N * align`.
//!
//! These are the disk operations; taking the private lease around create, delete and rebuild
//! is the caller's job (tenured does it through the lockspace's own paxos engine). Observed
//! behaviour of sanlock 3.8.5 that is kept: create takes the first empty entry and does not
//! refuse a name that already exists; delete finds the entry by name (an offset given with it
//! is not checked); update writes or clears the entry its offset maps to, whatever the name;
//! rebuild keeps the entries whose lease area holds a valid (not cleared) lease of this
//! lockspace. Deliberate difference: an offset outside the table (before the first lease area
//! or past `max_resources`) is refused with [`RindexError::Offset`] instead of being written.
//!
//! Invariant: every write covers whole sectors, built from the area as last read, and is
//! durable (O_DSYNC) before the call returns.

use std::path::Path;

use serde::Serialize;
use tenure_format::area::encode_resource_area;
use tenure_format::leader::{LeaderKind, PAXOS_CLEARED_MAGIC};
use tenure_format::rindex::{
    RindexEntry, RindexHeader, RINDEX_ENTRY_LEN, RINDEX_HEADER_LEN, RINDEX_LEASE_NAME,
    RINDEX_MAGIC, RINDEX_MAX_RESOURCES_DEFAULT, RINDEX_VERSION,
};
use tenure_format::{DecodeError, Geometry, LeaderRecord, Name};

use super::{
    check_fits, choose_geometry, refuse_or_note, Access, BackendKind, DirectDisk, DirectError,
    FormatOptions, FormatReport,
};

/// Why a resource-index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RindexError {
    /// Device I/O or geometry.
    #[error(transparent)]
    Direct(#[from] DirectError),
    /// No resource index at that offset (bad magic).
    #[error("no resource index at offset {offset}: {source}")]
    Magic {
        /// Index offset.
        offset: u64,
        /// What was wrong.
        source: DecodeError,
    },
    /// A resource index of an unsupported version.
    #[error("resource index at offset {offset}: {source}")]
    Version {
        /// Index offset.
        offset: u64,
        /// What was wrong.
        source: DecodeError,
    },
    /// The index belongs to another lockspace.
    #[error(
        "the resource index at offset {offset} belongs to lockspace {found:?}, not {expected:?}"
    )]
    Lockspace {
        /// Index offset.
        offset: u64,
        /// Its lockspace.
        found: Name,
        /// The one asked for.
        expected: Name,
    },
    /// An offset that is not a lease slot of this index.
    #[error("offset {res_offset} is not a resource lease slot of the index at {rx_offset} (slots start at {first} every {align} bytes, {max} of them)")]
    Offset {
        /// Given offset.
        res_offset: u64,
        /// Index offset.
        rx_offset: u64,
        /// First slot.
        first: u64,
        /// Slot size.
        align: u64,
        /// Slots.
        max: u32,
    },
    /// The name and offset given do not match the entry.
    #[error("{name:?} is at offset {found}, not {given}")]
    Diff {
        /// Name.
        name: Name,
        /// Offset on disk.
        found: u64,
        /// Offset given.
        given: u64,
    },
    /// No entry of that name.
    #[error("no resource {0:?} in the index")]
    NotFound(Name),
    /// Every entry is used.
    #[error("the resource index is full ({0} entries)")]
    Full(u32),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

impl RindexError {
    /// sanlock's result code for this error (spec/SANLOCK-WIRE.md §5).
    pub fn sanlock_result(&self) -> i32 {
        match self {
            RindexError::Direct(DirectError::Device(_)) => -libc::ENODEV,
            RindexError::Direct(DirectError::TimedOut { .. }) => -202,
            RindexError::Direct(_) => -201,
            RindexError::Magic { .. } => -274,
            RindexError::Version { .. } => -275,
            RindexError::Lockspace { .. } => -276,
            RindexError::Offset { .. } => -277,
            RindexError::Diff { .. } => -278,
            RindexError::NotFound(_) => -libc::ENOENT,
            RindexError::Full(_) => -libc::ENOSPC,
            RindexError::Usage(_) => -libc::EINVAL,
        }
    }
}

/// One entry as reported: name and lease offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Resource name (empty for "the next free slot").
    pub name: Name,
    /// Lease offset.
    pub offset: u64,
}

/// Formats a resource index at `rx_offset` on `path` for `lockspace`: header and empty table
/// in the first area, the private `rindex_lease` (free) in the second. `max_resources` 0
/// means sanlock's default, 4096.
pub fn format(
    path: &Path,
    rx_offset: u64,
    lockspace: Name,
    max_resources: u32,
    opts: FormatOptions,
) -> Result<FormatReport, RindexError> {
    let mut dev = DirectDisk::open(path, Access::ReadWrite, opts.backend)?;
    let g = choose_geometry(&dev, opts)?;
    check_fits(&dev, g, rx_offset)?;
    check_fits(&dev, g, rx_offset + g.area_bytes())?;
    let max = if max_resources == 0 {
        RINDEX_MAX_RESOURCES_DEFAULT
    } else {
        max_resources
    };
    let fits = (g.area_bytes() - u64::from(g.sector_size_bytes())) / RINDEX_ENTRY_LEN as u64;
    if u64::from(max) > fits {
        return Err(RindexError::Usage(format!(
            "max_resources {max} does not fit one {} area ({fits} entries)",
            g.align()
        )));
    }
    let replaced = refuse_or_note(&mut dev, rx_offset, opts.force)?;
    let header = RindexHeader {
        magic: RINDEX_MAGIC,
        version: RINDEX_VERSION,
        flags: g.align().rindex_flag(),
        sector_size: g.sector_size_bytes(),
        max_resources: max,
        unused: 0,
        rx_offset,
        lockspace_name: lockspace,
    };
    let len = usize::try_from(g.area_bytes()).unwrap_or(usize::MAX);
    let mut area = vec![0u8; len];
    encode_resource_area(&mut area, g, lockspace, lease_name(), g.hosts_max());
    dev.write(rx_offset + g.area_bytes(), &area)?;
    area.fill(0);
    area[..RINDEX_HEADER_LEN].copy_from_slice(&header.to_bytes());
    dev.write(rx_offset, &area)?;
    Ok(FormatReport {
        path: path.to_owned(),
        offset: rx_offset,
        geometry: g,
        replaced,
        io_backend: dev.io_backend,
        io_fallback_reason: dev.fallback_reason.clone(),
    })
}

/// The name of the private lease.
pub fn lease_name() -> Name {
    Name::new(RINDEX_LEASE_NAME).expect("a valid name")
}

/// An open resource index: its header and table as last read.
#[derive(Debug)]
pub struct Rindex {
    dev: DirectDisk,
    header: RindexHeader,
    geometry: Geometry,
    rx_offset: u64,
    area: Vec<u8>,
}

impl Rindex {
    /// Opens the index at `rx_offset` and checks it belongs to `lockspace`.
    pub fn open(
        path: &Path,
        rx_offset: u64,
        lockspace: &Name,
        backend: BackendKind,
    ) -> Result<Self, RindexError> {
        let mut dev = DirectDisk::open(path, Access::ReadWrite, backend)?;
        let first = dev.read(
            rx_offset,
            4096.min(dev_len(&dev, rx_offset)),
            <[u8]>::to_vec,
        )?;
        let header = RindexHeader::decode(&first).map_err(|source| match source {
            DecodeError::BadVersion { .. } => RindexError::Version {
                offset: rx_offset,
                source,
            },
            _ => RindexError::Magic {
                offset: rx_offset,
                source,
            },
        })?;
        if header.lockspace_name != *lockspace {
            return Err(RindexError::Lockspace {
                offset: rx_offset,
                found: header.lockspace_name,
                expected: *lockspace,
            });
        }
        let geometry = header.geometry().map_err(|source| RindexError::Magic {
            offset: rx_offset,
            source,
        })?;
        let fits = (geometry.area_bytes() - u64::from(geometry.sector_size_bytes()))
            / RINDEX_ENTRY_LEN as u64;
        if u64::from(header.max_resources) > fits {
            return Err(RindexError::Magic {
                offset: rx_offset,
                source: DecodeError::Short {
                    needed: header.max_resources as usize * RINDEX_ENTRY_LEN,
                    found: fits as usize * RINDEX_ENTRY_LEN,
                },
            });
        }
        let len = usize::try_from(geometry.area_bytes()).unwrap_or(usize::MAX);
        let area = dev.read(rx_offset, len, <[u8]>::to_vec)?;
        Ok(Rindex {
            dev,
            header,
            geometry,
            rx_offset,
            area,
        })
    }

    /// The header.
    pub fn header(&self) -> &RindexHeader {
        &self.header
    }

    /// Geometry of the index and its leases.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Offset of the private lease's area.
    pub fn lease_offset(&self) -> u64 {
        self.rx_offset + self.geometry.area_bytes()
    }

    fn first_slot(&self) -> u64 {
        self.rx_offset + 2 * self.geometry.area_bytes()
    }

    /// Lease offset of entry `i`.
    pub fn slot_offset(&self, i: u32) -> u64 {
        self.first_slot() + u64::from(i) * self.geometry.area_bytes()
    }

    fn index_of(&self, res_offset: u64) -> Result<u32, RindexError> {
        let align = self.geometry.area_bytes();
        let bad = || RindexError::Offset {
            res_offset,
            rx_offset: self.rx_offset,
            first: self.first_slot(),
            align,
            max: self.header.max_resources,
        };
        let rel = res_offset.checked_sub(self.first_slot()).ok_or_else(bad)?;
        if rel % align != 0 {
            return Err(bad());
        }
        u32::try_from(rel / align)
            .ok()
            .filter(|i| *i < self.header.max_resources)
            .ok_or_else(bad)
    }

    /// Entry `i` as last read.
    pub fn entry(&self, i: u32) -> RindexEntry {
        let at = usize::try_from(self.header.entry_offset(u64::from(i))).unwrap_or(usize::MAX);
        self.area
            .get(at..at + RINDEX_ENTRY_LEN)
            .and_then(|b| RindexEntry::decode(b).ok())
            .unwrap_or(RindexEntry {
                res_offset: 0,
                flags: 0,
                unused: 0,
                name: Name::from_raw([0; 48]),
            })
    }

    /// Every used entry.
    pub fn entries(&self) -> Vec<Entry> {
        (0..self.header.max_resources)
            .map(|i| self.entry(i))
            .filter(|e| !e.is_empty())
            .map(|e| Entry {
                name: e.name,
                offset: e.res_offset,
            })
            .collect()
    }

    fn find(&self, name: &Name) -> Option<(u32, RindexEntry)> {
        (0..self.header.max_resources)
            .map(|i| (i, self.entry(i)))
            .find(|(_, e)| e.res_offset != 0 && e.name == *name)
    }

    fn write_entry(&mut self, i: u32, e: &RindexEntry) -> Result<(), RindexError> {
        let at = usize::try_from(self.header.entry_offset(u64::from(i))).unwrap_or(usize::MAX);
        let ss = self.geometry.sector_size_bytes() as usize;
        self.area[at..at + RINDEX_ENTRY_LEN].copy_from_slice(&e.to_bytes());
        let sector = at / ss * ss;
        let bytes = self.area[sector..sector + ss].to_vec();
        self.dev.write(self.rx_offset + sector as u64, &bytes)?;
        Ok(())
    }

    /// LOOKUP: by name (and, if given, checks the offset); by offset alone (the name there);
    /// neither: the first free slot.
    pub fn lookup(&self, name: Option<&Name>, offset: u64) -> Result<Entry, RindexError> {
        match name {
            Some(n) => {
                let (_, e) = self.find(n).ok_or(RindexError::NotFound(*n))?;
                if offset != 0 && offset != e.res_offset {
                    return Err(RindexError::Diff {
                        name: *n,
                        found: e.res_offset,
                        given: offset,
                    });
                }
                Ok(Entry {
                    name: e.name,
                    offset: e.res_offset,
                })
            }
            None if offset != 0 => {
                let e = self.entry(self.index_of(offset)?);
                Ok(Entry {
                    name: e.name,
                    offset: e.res_offset,
                })
            }
            None => {
                let i = (0..self.header.max_resources)
                    .find(|i| self.entry(*i).is_empty())
                    .ok_or(RindexError::Full(self.header.max_resources))?;
                Ok(Entry {
                    name: Name::from_raw([0; 48]),
                    offset: self.slot_offset(i),
                })
            }
        }
    }

    /// UPDATE add: writes the entry `offset` maps to (replacing whatever was there).
    pub fn add(&mut self, name: &Name, offset: u64) -> Result<(), RindexError> {
        if offset == 0 || name.is_empty() {
            return Err(RindexError::Usage(
                "adding an index entry needs a name and an offset".into(),
            ));
        }
        let i = self.index_of(offset)?;
        self.write_entry(
            i,
            &RindexEntry {
                res_offset: offset,
                flags: 0,
                unused: 0,
                name: *name,
            },
        )
    }

    /// UPDATE remove: clears the entry `offset` maps to, whatever its name.
    pub fn remove(&mut self, offset: u64) -> Result<(), RindexError> {
        if offset == 0 {
            return Err(RindexError::Usage(
                "removing an index entry needs its offset".into(),
            ));
        }
        let i = self.index_of(offset)?;
        self.write_entry(i, &empty_entry())
    }

    /// CREATE (caller holds the private lease): a free lease written in the first empty slot,
    /// then its entry. `num_hosts` 0 = the geometry's maximum.
    pub fn create(&mut self, name: &Name, num_hosts: u64) -> Result<u64, RindexError> {
        if name.is_empty() {
            return Err(RindexError::Usage("a resource needs a name".into()));
        }
        let g = self.geometry;
        let n = if num_hosts == 0 {
            g.hosts_max()
        } else {
            num_hosts
        };
        if n > g.hosts_max() {
            return Err(RindexError::Usage(format!(
                "num_hosts {n} above the geometry's {}",
                g.hosts_max()
            )));
        }
        let i = (0..self.header.max_resources)
            .find(|i| self.entry(*i).is_empty())
            .ok_or(RindexError::Full(self.header.max_resources))?;
        let offset = self.slot_offset(i);
        check_fits(&self.dev, g, offset)?;
        let mut area = vec![0u8; usize::try_from(g.area_bytes()).unwrap_or(usize::MAX)];
        encode_resource_area(&mut area, g, self.header.lockspace_name, *name, n);
        self.dev.write(offset, &area)?;
        self.write_entry(
            i,
            &RindexEntry {
                res_offset: offset,
                flags: 0,
                unused: 0,
                name: *name,
            },
        )?;
        Ok(offset)
    }

    /// DELETE (caller holds the private lease): the lease of the entry named `name` gets the
    /// cleared magic, then the entry is cleared. Returns the lease offset.
    pub fn delete(&mut self, name: &Name) -> Result<u64, RindexError> {
        let (i, e) = self.find(name).ok_or(RindexError::NotFound(*name))?;
        let g = self.geometry;
        let ss = g.sector_size_bytes() as usize;
        let offset = e.res_offset;
        if self.index_of(offset).is_ok() {
            let current = self
                .dev
                .read(offset, ss, |b| LeaderRecord::decode(b).ok())?;
            let mut leader = current.unwrap_or_else(|| {
                LeaderRecord::new_paxos_free(g, self.header.lockspace_name, *name, g.hosts_max())
            });
            leader.magic = PAXOS_CLEARED_MAGIC;
            let mut sector = vec![0u8; ss];
            leader.encode_into(&mut sector);
            self.dev.write(offset, &sector)?;
        }
        self.write_entry(i, &empty_entry())?;
        Ok(offset)
    }

    /// REBUILD (caller holds the private lease): every slot whose area holds a valid lease of
    /// this lockspace gets an entry with its name; every other entry is cleared. Slots past
    /// the end of the device count as empty. Returns the number of entries.
    pub fn rebuild(&mut self) -> Result<usize, RindexError> {
        let g = self.geometry;
        let ss = g.sector_size_bytes() as usize;
        let size = self.dev.size_bytes;
        let mut table = vec![0u8; self.header.max_resources as usize * RINDEX_ENTRY_LEN];
        let mut found = 0;
        for i in 0..self.header.max_resources {
            let offset = self.slot_offset(i);
            if offset + g.area_bytes() > size {
                break;
            }
            let leader = self.dev.read(offset, ss, |b| {
                LeaderRecord::decode_expect(
                    b,
                    LeaderKind::Paxos,
                    g,
                    &self.header.lockspace_name,
                    None,
                )
                .ok()
            })?;
            if let Some(l) = leader {
                let e = RindexEntry {
                    res_offset: offset,
                    flags: 0,
                    unused: 0,
                    name: l.resource_name,
                };
                let at = i as usize * RINDEX_ENTRY_LEN;
                table[at..at + RINDEX_ENTRY_LEN].copy_from_slice(&e.to_bytes());
                found += 1;
            }
        }
        let start = usize::try_from(self.header.entry_offset(0)).unwrap_or(usize::MAX);
        self.area[start..start + table.len()].copy_from_slice(&table);
        let end = (start + table.len()).div_ceil(ss) * ss;
        let bytes = self.area[ss..end].to_vec();
        self.dev.write(self.rx_offset + ss as u64, &bytes)?;
        Ok(found)
    }
}

fn empty_entry() -> RindexEntry {
    RindexEntry {
        res_offset: 0,
        flags: 0,
        unused: 0,
        name: Name::from_raw([0; 48]),
    }
}

fn dev_len(dev: &DirectDisk, offset: u64) -> usize {
    usize::try_from(dev.size_bytes.saturating_sub(offset)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    #[test]
    fn create_lookup_delete_update_and_rebuild_on_a_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("lun");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(6 << 20))
            .expect("file");
        let opts = FormatOptions {
            backend: BackendKind::Sync,
            ..FormatOptions::default()
        };
        format(&path, 1 << 20, n("LS"), 0, opts).expect("format");
        let mut rx = Rindex::open(&path, 1 << 20, &n("LS"), BackendKind::Sync).expect("open");
        assert_eq!(rx.header().max_resources, 4096);
        assert_eq!(rx.lease_offset(), 2 << 20);
        assert!(matches!(
            Rindex::open(&path, 1 << 20, &n("OTHER"), BackendKind::Sync),
            Err(RindexError::Lockspace { .. })
        ));
        assert!(matches!(
            Rindex::open(&path, 0, &n("LS"), BackendKind::Sync),
            Err(RindexError::Magic { .. })
        ));
        assert_eq!(rx.create(&n("a"), 0).expect("a"), 3 << 20);
        assert_eq!(rx.create(&n("b"), 7).expect("b"), 4 << 20);
        // The device ends after the slot at 5 MiB (6 MiB): a fourth does not fit.
        assert!(rx.create(&n("c"), 0).is_ok());
        assert!(matches!(rx.create(&n("d"), 0), Err(RindexError::Direct(_))));
        assert_eq!(
            rx.lookup(Some(&n("b")), 0).expect("b"),
            Entry {
                name: n("b"),
                offset: 4 << 20
            }
        );
        assert!(matches!(
            rx.lookup(Some(&n("b")), 3 << 20),
            Err(RindexError::Diff { .. })
        ));
        assert_eq!(rx.lookup(None, 3 << 20).expect("by offset").name, n("a"));
        assert!(matches!(
            rx.lookup(Some(&n("zz")), 0),
            Err(RindexError::NotFound(_))
        ));
        assert_eq!(rx.delete(&n("a")).expect("delete"), 3 << 20);
        assert_eq!(rx.lookup(None, 0).expect("free").offset, 3 << 20);
        // Reopened: what was written is on disk; b's lease has num_hosts 7, a's is cleared.
        let mut rx = Rindex::open(&path, 1 << 20, &n("LS"), BackendKind::Sync).expect("open");
        assert_eq!(
            rx.entries().iter().map(|e| e.name).collect::<Vec<_>>(),
            [n("b"), n("c")]
        );
        let mut dev = DirectDisk::open(&path, Access::Read, BackendKind::Sync).expect("dev");
        let b = dev
            .read(4 << 20, 512, |s| LeaderRecord::decode(s).expect("leader"))
            .expect("read");
        assert_eq!((b.num_hosts, b.resource_name), (7, n("b")));
        let a = dev
            .read(3 << 20, 512, |s| LeaderRecord::decode(s).expect("leader"))
            .expect("read");
        assert_eq!(a.magic, PAXOS_CLEARED_MAGIC);
        // Update: add writes the slot's entry whatever was there; remove clears by offset.
        rx.add(&n("x"), 3 << 20).expect("add");
        rx.remove(4 << 20).expect("remove");
        assert!(matches!(
            rx.add(&n("x"), (3 << 20) + 512),
            Err(RindexError::Offset { .. })
        ));
        assert!(matches!(
            rx.add(&n("x"), 1 << 20),
            Err(RindexError::Offset { .. })
        ));
        assert!(matches!(rx.remove(0), Err(RindexError::Usage(_))));
        assert_eq!(
            rx.entries().iter().map(|e| e.name).collect::<Vec<_>>(),
            [n("x"), n("c")]
        );
        // Rebuild: from the leases (a cleared, b and c valid).
        assert_eq!(rx.rebuild().expect("rebuild"), 2);
        let rx = Rindex::open(&path, 1 << 20, &n("LS"), BackendKind::Sync).expect("open");
        assert_eq!(
            rx.entries(),
            [
                Entry {
                    name: n("b"),
                    offset: 4 << 20
                },
                Entry {
                    name: n("c"),
                    offset: 5 << 20
                }
            ]
        );
    }
}
