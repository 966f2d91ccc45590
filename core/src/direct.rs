//! Direct operations on lease areas, with no daemon and no coordination with other hosts:
//! formatting a lockspace or resource, and dumping whatever areas a device holds.
//!
//! Invariants: format never overwrites a valid lockspace, resource or resource index unless
//! forced; a lockspace format is atomic (whole area with sector 0's magic zeroed, then sector
//! 0); every format is read back and decoded before it is reported done.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tenure_format::area::{
    decode_area, encode_lockspace_area, encode_resource_area, identify, lockspace_sector0,
    step_bytes, AreaKind, PROBE_LEN,
};
use tenure_format::{
    AlignSize, AreaReport, DecodeError, Geometry, GeometryError, LeaderKind, LeaderRecord,
    LockspaceSpec, ResourceSpec, RindexHeader, SectorSize,
};

use std::time::Duration;

pub mod rindex;

use crate::dev::{Access, Device, DeviceError, DeviceKind};
use crate::io::drive::{complete, deadline_in};
pub use crate::io::BackendKind;
use crate::io::{
    open_backend, DiskId, EngineConfig, IoBackend, IoError, IoOutcome, IoRequest, SubmitError,
};

/// Errors of the direct commands.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// Device access failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The I/O engine could not be set up or failed.
    #[error(transparent)]
    Engine(#[from] IoError),
    /// The engine refused a request.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The device reported an error.
    #[error("{path}: {op} of {len} bytes at offset {offset} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Io {
        /// Device.
        path: PathBuf,
        /// "read" or "write".
        op: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// errno.
        errno: i32,
    },
    /// The device transferred fewer bytes than asked.
    #[error("{path}: {op} at offset {offset} transferred {transferred} of {len} bytes")]
    Short {
        /// Device.
        path: PathBuf,
        /// "read" or "write".
        op: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Transferred.
        transferred: usize,
    },
    /// No answer within the deadline.
    #[error("{path}: {op} at offset {offset} did not complete within {timeout_s} s (device hung?){}", if *may_land_later { "; the write may still land later" } else { "" })]
    TimedOut {
        /// Device.
        path: PathBuf,
        /// "read" or "write".
        op: &'static str,
        /// Offset.
        offset: u64,
        /// Deadline used.
        timeout_s: u64,
        /// A write that may reach the device later.
        may_land_later: bool,
    },
    /// Invalid sector/align combination.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// --sector-size disagrees with the device.
    #[error("{path} has {probed}-byte logical sectors but --sector-size {requested} was given")]
    SectorSizeMismatch {
        /// Device.
        path: PathBuf,
        /// BLKSSZGET.
        probed: u32,
        /// Requested.
        requested: u32,
    },
    /// The device's sector size is not one sanlock's format supports.
    #[error("{path} has {probed}-byte logical sectors; lease areas need 512 or 4096")]
    UnsupportedDevice {
        /// Device.
        path: PathBuf,
        /// BLKSSZGET.
        probed: u32,
    },
    /// Offset not a multiple of the area size.
    #[error("offset {offset} is not a multiple of the area size {align} (sanlock requires aligned areas)")]
    OffsetAlign {
        /// Offset.
        offset: u64,
        /// Align size.
        align: AlignSize,
    },
    /// The area does not fit.
    #[error("{path}: a {geometry} area at offset {offset} needs {needed} bytes but the device has {size}{hint}")]
    TooSmall {
        /// Device.
        path: PathBuf,
        /// Geometry.
        geometry: Geometry,
        /// Offset.
        offset: u64,
        /// End of the area.
        needed: u64,
        /// Device size.
        size: u64,
        /// How to fix it.
        hint: &'static str,
    },
    /// A valid area is already there.
    #[error("{path} at offset {offset} already holds {what}; use --force to overwrite it")]
    AlreadyFormatted {
        /// Device.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Description of what is there.
        what: String,
    },
    /// num_hosts out of range.
    #[error("--num-hosts {num_hosts} is out of range for a {geometry} area (1..={hosts_max})")]
    NumHosts {
        /// Requested.
        num_hosts: u64,
        /// Geometry.
        geometry: Geometry,
        /// Limit.
        hosts_max: u64,
    },
    /// io_timeout out of range.
    #[error("--io-timeout {0} is out of range (1..=65535 seconds)")]
    IoTimeout(u64),
    /// The read-back after format did not decode.
    #[error("{path} at offset {offset}: read-back after format failed: {source}")]
    Verify {
        /// Device.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Why.
        source: Box<DecodeError>,
    },
    /// A resource spec with a lockspace but no disks cannot happen; bad input otherwise.
    #[error("{0}")]
    Usage(String),
}

/// Geometry options shared by the format commands.
#[derive(Clone, Copy, Debug, Default)]
pub struct FormatOptions {
    /// Requested sector size; probed from block devices, 512 for files when absent.
    pub sector_size: Option<SectorSize>,
    /// Requested align size; the sector size's legacy default when absent.
    pub align: Option<AlignSize>,
    /// Overwrite a valid area.
    pub force: bool,
    /// Which I/O backend to use.
    pub backend: BackendKind,
}

/// What a format did.
#[derive(Clone, Debug, Serialize)]
pub struct FormatReport {
    /// Device.
    pub path: PathBuf,
    /// Offset.
    pub offset: u64,
    /// Geometry used.
    pub geometry: Geometry,
    /// What was there before, when something recognisable was overwritten.
    pub replaced: Option<String>,
    /// I/O backend used ("io_uring" or "sync").
    pub io_backend: &'static str,
    /// Why the sync fallback ran, when it did.
    pub io_fallback_reason: Option<String>,
}

/// io_timeout sanlock writes into free slots by default (seconds).
pub const IO_TIMEOUT_DEFAULT_S: u16 = 10;

/// Deadline of every direct I/O: sanlock's default io_timeout.
pub const DIRECT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One device behind the I/O engine, for the direct commands: blocking reads and writes
/// through [`IoBackend`] with [`DIRECT_IO_TIMEOUT`] deadlines.
pub struct DirectDisk {
    engine: Box<dyn IoBackend + Send>,
    path: PathBuf,
    kind: DeviceKind,
    logical_sector_size: Option<u32>,
    size_bytes: u64,
    io_align: u32,
    /// Backend name.
    pub io_backend: &'static str,
    /// Why the sync fallback runs, when it does.
    pub fallback_reason: Option<String>,
}

impl std::fmt::Debug for DirectDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectDisk")
            .field("path", &self.path)
            .field("io_backend", &self.io_backend)
            .finish()
    }
}

impl DirectDisk {
    /// Opens and probes `path` and sets up an engine sized for whole areas.
    pub fn open(path: &Path, access: Access, backend: BackendKind) -> Result<Self, DirectError> {
        // Two probe-sized buffers and one for the largest area (8 MiB).
        Self::open_with(path, access, backend, vec![(PROBE_LEN, 2), (8 << 20, 1)])
    }

    /// [`DirectDisk::open`] for reads of at most 4096 bytes (a leader, a geometry probe): no
    /// 8 MiB buffer. The daemon probes every lease area it is asked about this way — 40
    /// lockspaces joined at once left 40 probe threads' 8 MiB buffers resident.
    pub fn open_small(
        path: &Path,
        access: Access,
        backend: BackendKind,
    ) -> Result<Self, DirectError> {
        Self::open_with(path, access, backend, vec![(PROBE_LEN, 2)])
    }

    fn open_with(
        path: &Path,
        access: Access,
        backend: BackendKind,
        buffer_classes: Vec<(usize, usize)>,
    ) -> Result<Self, DirectError> {
        let dev = Device::open(path, access)?;
        let (kind, logical_sector_size, size_bytes, io_align) = (
            dev.kind(),
            dev.logical_sector_size(),
            dev.size_bytes(),
            dev.io_align(),
        );
        let config = EngineConfig {
            ring_entries: 4,
            buffer_classes,
            sync_workers: 1,
        };
        let (engine, choice) = open_backend(vec![dev], &config, backend)?;
        Ok(DirectDisk {
            engine,
            path: path.to_owned(),
            kind,
            logical_sector_size,
            size_bytes,
            io_align,
            io_backend: choice.name,
            fallback_reason: choice.fallback_reason,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn run(
        &mut self,
        op: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<crate::io::Completion, DirectError> {
        let c = complete(self.engine.as_mut(), 1)?.remove(0);
        let path = self.path.clone();
        match c.outcome {
            IoOutcome::Done => Ok(c),
            IoOutcome::Failed { errno } => Err(DirectError::Io {
                path,
                op,
                offset,
                len,
                errno,
            }),
            IoOutcome::Short { transferred } => Err(DirectError::Short {
                path,
                op,
                offset,
                len,
                transferred,
            }),
            IoOutcome::Canceled => Err(DirectError::Io {
                path,
                op,
                offset,
                len,
                errno: libc::ECANCELED,
            }),
            IoOutcome::TimedOut => Err(DirectError::TimedOut {
                path,
                op,
                offset,
                timeout_s: DIRECT_IO_TIMEOUT.as_secs(),
                may_land_later: c.may_land_later(),
            }),
        }
    }

    /// Reads `len` bytes at `offset` and hands them to `f`.
    pub fn read<T>(
        &mut self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, DirectError> {
        let id = self.engine.start_read(IoRequest {
            disk: DiskId(0),
            offset,
            len,
            deadline: deadline_in(DIRECT_IO_TIMEOUT),
        })?;
        self.run("read", offset, len)?;
        let out = f(self.engine.read_data(id).unwrap_or(&[]));
        self.engine.release(id);
        Ok(out)
    }

    /// Writes `data` at `offset`; returns once it is durable.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DirectError> {
        self.engine.start_write(
            IoRequest {
                disk: DiskId(0),
                offset,
                len: data.len(),
                deadline: deadline_in(DIRECT_IO_TIMEOUT),
            },
            data,
        )?;
        self.run("write", offset, data.len()).map(drop)
    }
}

fn choose_geometry(dev: &DirectDisk, opts: FormatOptions) -> Result<Geometry, DirectError> {
    let sector_size = match (dev.logical_sector_size, opts.sector_size) {
        (Some(probed), requested) => {
            let probed_ss = SectorSize::from_bytes(u64::from(probed)).map_err(|_| {
                DirectError::UnsupportedDevice {
                    path: dev.path().to_owned(),
                    probed,
                }
            })?;
            if let Some(r) = requested.filter(|r| *r != probed_ss) {
                return Err(DirectError::SectorSizeMismatch {
                    path: dev.path().to_owned(),
                    probed,
                    requested: r.bytes(),
                });
            }
            probed_ss
        }
        (None, requested) => requested.unwrap_or(SectorSize::B512),
    };
    let g = match opts.align {
        Some(a) => Geometry::new(sector_size, a)?,
        None => Geometry::legacy(sector_size),
    };
    Ok(g)
}

fn check_fits(dev: &DirectDisk, g: Geometry, offset: u64) -> Result<(), DirectError> {
    if offset % g.area_bytes() != 0 {
        return Err(DirectError::OffsetAlign {
            offset,
            align: g.align(),
        });
    }
    let needed = offset.saturating_add(g.area_bytes());
    if needed > dev.size_bytes {
        let hint = if dev.kind == DeviceKind::File {
            " (extend the file, e.g. with truncate -s)"
        } else {
            ""
        };
        return Err(DirectError::TooSmall {
            path: dev.path().to_owned(),
            geometry: g,
            offset,
            needed,
            size: dev.size_bytes,
            hint,
        });
    }
    Ok(())
}

/// Describes the valid area at `offset`, if there is one (sector 0 decodes).
fn existing_area(dev: &mut DirectDisk, offset: u64) -> Result<Option<String>, DirectError> {
    let len = PROBE_LEN.min(usize::try_from(dev.size_bytes - offset).unwrap_or(PROBE_LEN));
    dev.read(offset, len, describe_area)
}

fn describe_area(bytes: &[u8]) -> Option<String> {
    match identify(bytes).kind {
        AreaKind::Lockspace | AreaKind::Resource | AreaKind::ClearedResource => {
            LeaderRecord::decode(bytes).ok().map(|l| match l.kind() {
                Some(LeaderKind::Delta) => format!("a valid lockspace \"{}\"", l.space_name),
                _ => format!(
                    "a valid resource \"{}\" of lockspace \"{}\" (owner host id {}, lver {})",
                    l.resource_name, l.space_name, l.owner_id, l.lver
                ),
            })
        }
        AreaKind::Rindex => RindexHeader::decode(bytes)
            .ok()
            .map(|h| format!("a resource index of lockspace \"{}\"", h.lockspace_name)),
        AreaKind::Empty | AreaKind::Unrecognised => None,
    }
}

fn refuse_or_note(
    dev: &mut DirectDisk,
    offset: u64,
    force: bool,
) -> Result<Option<String>, DirectError> {
    let existing = existing_area(dev, offset)?;
    match existing {
        Some(what) if !force => Err(DirectError::AlreadyFormatted {
            path: dev.path().to_owned(),
            offset,
            what,
        }),
        other => Ok(other),
    }
}

fn verify(
    dev: &mut DirectDisk,
    g: Geometry,
    offset: u64,
    check: impl Fn(&[u8]) -> Result<(), DecodeError>,
) -> Result<(), DirectError> {
    let path = dev.path().to_owned();
    dev.read(offset, g.sector_size_bytes() as usize, check)?
        .map_err(|source| DirectError::Verify {
            path,
            offset,
            source: Box::new(source),
        })
}

/// Formats a lockspace area (`spec.host_id` is ignored): every slot free, atomically.
pub fn format_lockspace(
    spec: &LockspaceSpec,
    opts: FormatOptions,
    io_timeout_s: u64,
) -> Result<FormatReport, DirectError> {
    let io_timeout = u16::try_from(io_timeout_s)
        .ok()
        .filter(|&t| t > 0)
        .ok_or(DirectError::IoTimeout(io_timeout_s))?;
    let path = Path::new(&spec.disk.path);
    let mut dev = DirectDisk::open(path, Access::ReadWrite, opts.backend)?;
    let g = choose_geometry(&dev, opts)?;
    let offset = spec.disk.offset;
    check_fits(&dev, g, offset)?;
    let replaced = refuse_or_note(&mut dev, offset, opts.force)?;
    let mut area = vec![0u8; usize::try_from(g.area_bytes()).unwrap_or(usize::MAX)];
    encode_lockspace_area(&mut area, g, spec.name, io_timeout);
    dev.write(offset, &area)?;
    let ss = g.sector_size_bytes() as usize;
    lockspace_sector0(&mut area[..ss], g, spec.name, io_timeout);
    dev.write(offset, &area[..ss])?;
    verify(&mut dev, g, offset, |s| {
        LeaderRecord::decode_expect(s, LeaderKind::Delta, g, &spec.name, None).map(drop)
    })?;
    Ok(FormatReport {
        path: path.to_owned(),
        offset,
        geometry: g,
        replaced,
        io_backend: dev.io_backend,
        io_fallback_reason: dev.fallback_reason.clone(),
    })
}

/// Formats a resource area on every disk of `spec` (free leader, lver 0, request record).
/// All disks are checked before any is written.
pub fn format_resource(
    spec: &ResourceSpec,
    opts: FormatOptions,
    num_hosts: Option<u64>,
) -> Result<Vec<FormatReport>, DirectError> {
    write_resource_area(spec, opts, num_hosts, LeaderKind::Paxos)
}

/// Writes a cleared resource area on every disk of `spec` (`sanlock direct init -z 1`, the
/// daemon's WRITE_RESOURCE with WRITE_CLEAR): the free leader with the cleared magic
/// 0x11282016, which no acquire accepts until the area is formatted again.
pub fn clear_resource(
    spec: &ResourceSpec,
    opts: FormatOptions,
    num_hosts: Option<u64>,
) -> Result<Vec<FormatReport>, DirectError> {
    write_resource_area(spec, opts, num_hosts, LeaderKind::PaxosCleared)
}

fn write_resource_area(
    spec: &ResourceSpec,
    opts: FormatOptions,
    num_hosts: Option<u64>,
    kind: LeaderKind,
) -> Result<Vec<FormatReport>, DirectError> {
    if spec.disks.is_empty() {
        return Err(DirectError::Usage(
            "a resource needs at least one PATH:OFFSET".into(),
        ));
    }
    let mut plan = Vec::with_capacity(spec.disks.len());
    for disk in &spec.disks {
        let mut dev = DirectDisk::open(Path::new(&disk.path), Access::ReadWrite, opts.backend)?;
        let g = choose_geometry(&dev, opts)?;
        check_fits(&dev, g, disk.offset)?;
        let n = num_hosts.unwrap_or(g.hosts_max());
        if n == 0 || n > g.hosts_max() {
            return Err(DirectError::NumHosts {
                num_hosts: n,
                geometry: g,
                hosts_max: g.hosts_max(),
            });
        }
        let replaced = refuse_or_note(&mut dev, disk.offset, opts.force)?;
        plan.push((dev, g, disk.offset, n, replaced));
    }
    let mut reports = Vec::with_capacity(plan.len());
    for (mut dev, g, offset, n, replaced) in plan {
        let mut area = vec![0u8; usize::try_from(g.area_bytes()).unwrap_or(usize::MAX)];
        encode_resource_area(&mut area, g, spec.lockspace, spec.name, n);
        if kind == LeaderKind::PaxosCleared {
            let ss = g.sector_size_bytes() as usize;
            let mut leader = LeaderRecord::new_paxos_free(g, spec.lockspace, spec.name, n);
            leader.magic = kind.magic();
            leader.encode_into(&mut area[..ss]);
        }
        dev.write(offset, &area)?;
        verify(&mut dev, g, offset, |s| {
            LeaderRecord::decode_expect(s, kind, g, &spec.lockspace, Some(&spec.name)).map(drop)
        })?;
        reports.push(FormatReport {
            path: dev.path().to_owned(),
            offset,
            geometry: g,
            replaced,
            io_backend: dev.io_backend,
            io_fallback_reason: dev.fallback_reason.clone(),
        });
    }
    Ok(reports)
}

/// The owners of one disk of a resource, as `tenure resource owners` reports them.
#[derive(Clone, Debug, Serialize)]
pub struct OwnersReport {
    /// Device.
    pub path: PathBuf,
    /// Area offset.
    pub offset: u64,
    /// Geometry read from the leader.
    pub geometry: Geometry,
    /// Who holds it.
    pub owners: crate::paxos::Owners,
    /// I/O backend used.
    pub io_backend: &'static str,
    /// Why the sync fallback ran, when it did.
    pub io_fallback_reason: Option<String>,
}

/// Reads who holds a resource on each of its disks, without acquiring it: the leader's
/// owner (unless free or released) and the hosts holding it shared.
pub fn owners(spec: &ResourceSpec, backend: BackendKind) -> Result<Vec<OwnersReport>, DirectError> {
    if spec.disks.is_empty() {
        return Err(DirectError::Usage(
            "a resource needs at least one PATH:OFFSET".into(),
        ));
    }
    let mut out = Vec::with_capacity(spec.disks.len());
    for disk in &spec.disks {
        let mut dev = DirectDisk::open(Path::new(&disk.path), Access::Read, backend)?;
        let first_len = usize::try_from(dev.io_align.max(4096)).unwrap_or(4096);
        let leader = dev.read(disk.offset, first_len, LeaderRecord::decode)?;
        let bad = |what: String| {
            DirectError::Usage(format!("{} at offset {}: {what}", disk.path, disk.offset))
        };
        let leader = leader.map_err(|e| bad(format!("no resource leader here: {e}")))?;
        let g = Geometry::from_leader_fields(leader.sector_size, leader.flags)?;
        if leader.num_hosts == 0 || leader.num_hosts > g.hosts_max() {
            return Err(bad(format!(
                "leader num_hosts {} is out of range",
                leader.num_hosts
            )));
        }
        let len = usize::try_from((leader.num_hosts + 2) * u64::from(g.sector_size_bytes()))
            .unwrap_or(usize::MAX);
        let owners = dev.read(disk.offset, len, |data| {
            crate::paxos::owners_from_area(data, g, &spec.lockspace, Some(&spec.name))
        })?;
        let owners = owners.map_err(|e| bad(e.to_string()))?;
        out.push(OwnersReport {
            path: dev.path().to_owned(),
            offset: disk.offset,
            geometry: g,
            owners,
            io_backend: dev.io_backend,
            io_fallback_reason: dev.fallback_reason.clone(),
        });
    }
    Ok(out)
}

/// Everything `dump` found.
#[derive(Clone, Debug, Serialize)]
pub struct DumpReport {
    /// Device.
    pub path: PathBuf,
    /// Block device or file.
    pub device_kind: DeviceKind,
    /// BLKSSZGET for block devices.
    pub logical_sector_size: Option<u32>,
    /// Device size.
    pub device_size: u64,
    /// First byte scanned.
    pub offset: u64,
    /// Bytes scanned.
    pub scanned_bytes: u64,
    /// Areas found, in device order.
    pub areas: Vec<AreaReport>,
    /// Number of all-zero areas skipped.
    pub empty_areas: u64,
    /// I/O backend used ("io_uring" or "sync").
    pub io_backend: &'static str,
    /// Why the sync fallback ran, when it did.
    pub io_fallback_reason: Option<String>,
}

impl DumpReport {
    /// True when any area or record could not be decoded.
    pub fn has_problems(&self) -> bool {
        self.areas.iter().any(|a| match a {
            AreaReport::Lockspace { problems, .. } | AreaReport::Resource { problems, .. } => {
                !problems.is_empty()
            }
            AreaReport::Unrecognised { .. } => true,
            AreaReport::Rindex { .. } => false,
        })
    }
}

/// Reads every area from `offset` (for `size` bytes, or to the end) and decodes it. Areas are
/// found at 1 MiB steps, or at their own align size once recognised.
pub fn dump(
    path: &Path,
    offset: u64,
    size: Option<u64>,
    backend: BackendKind,
) -> Result<DumpReport, DirectError> {
    let mut dev = DirectDisk::open(path, Access::Read, backend)?;
    let align = u64::from(dev.io_align);
    if offset % align != 0 {
        return Err(DeviceError::Unaligned {
            path: path.to_owned(),
            offset,
            len: 0,
            align: dev.io_align,
        }
        .into());
    }
    let end = match size {
        Some(s) => offset.saturating_add(s).min(dev.size_bytes),
        None => dev.size_bytes,
    };
    let mut areas: Vec<AreaReport> = Vec::new();
    let mut empty_areas = 0;
    let mut at = offset;
    while at < end {
        let avail = (end - at) / align * align;
        if avail == 0 {
            break;
        }
        let head_len = usize::try_from(avail).unwrap_or(PROBE_LEN).min(PROBE_LEN);
        // Areas without a geometry are decoded from the probe bytes alone.
        let (probe, small) = dev.read(at, head_len, |head| {
            let probe = identify(head);
            let small = if probe.geometry.is_none() {
                decode_area(at, &probe, head)
            } else {
                None
            };
            (probe, small)
        })?;
        let step = step_bytes(&probe);
        let report = match probe.geometry {
            Some(g) => {
                let len = usize::try_from(g.area_bytes().min(avail)).unwrap_or(usize::MAX);
                dev.read(at, len, |area| decode_area(at, &probe, area))?
            }
            None => small,
        };
        match report {
            None => empty_areas += 1,
            Some(AreaReport::Unrecognised {
                offset: o,
                magic,
                reason,
                ..
            }) => match areas.last_mut() {
                // Coalesce runs of unrecognised areas so a LUN full of data is one line.
                Some(AreaReport::Unrecognised {
                    offset: prev,
                    count,
                    ..
                }) if *prev + *count * step == o => *count += 1,
                _ => areas.push(AreaReport::Unrecognised {
                    offset: o,
                    count: 1,
                    magic,
                    reason,
                }),
            },
            Some(r) => areas.push(r),
        }
        at = at.saturating_add(step);
    }
    Ok(DumpReport {
        path: path.to_owned(),
        device_kind: dev.kind,
        logical_sector_size: dev.logical_sector_size,
        device_size: dev.size_bytes,
        offset,
        scanned_bytes: at.min(end) - offset,
        areas,
        empty_areas,
        io_backend: dev.io_backend,
        io_fallback_reason: dev.fallback_reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_format::LockspaceSpec;

    fn file(dir: &Path, size: u64) -> PathBuf {
        let p = dir.join("leases");
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(size).expect("size");
        p
    }

    #[test]
    fn format_refuses_then_forces_and_dump_sees_both() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let p = file(dir.path(), 4 << 20);
        let ls = LockspaceSpec::parse(&format!("LS:0:{}:0", p.display())).expect("spec");
        format_lockspace(&ls, FormatOptions::default(), 10).expect("format");
        let again = format_lockspace(&ls, FormatOptions::default(), 10);
        assert!(
            matches!(again, Err(DirectError::AlreadyFormatted { .. })),
            "{again:?}"
        );
        let forced = format_lockspace(
            &ls,
            FormatOptions {
                force: true,
                ..Default::default()
            },
            5,
        )
        .expect("force");
        assert!(forced.replaced.expect("replaced").contains("lockspace"));
        let res = ResourceSpec::parse(&format!("LS:r1:{}:2M", p.display())).expect("spec");
        format_resource(&res, FormatOptions::default(), Some(10)).expect("resource");
        let d = dump(&p, 0, None, BackendKind::Auto).expect("dump");
        assert_eq!(d.areas.len(), 2, "{:?}", d.areas);
        assert_eq!(d.empty_areas, 2);
        assert!(!d.has_problems());
        match &d.areas[1] {
            AreaReport::Resource {
                leader: Some(l),
                offset,
                ..
            } => {
                assert_eq!(
                    (*offset, l.num_hosts, l.resource_name.as_bytes()),
                    (2 << 20, 10, &b"r1"[..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_too_small_and_misaligned() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let p = file(dir.path(), 1 << 20);
        let ls = LockspaceSpec::parse(&format!("LS:0:{}:1M", p.display())).expect("spec");
        let e = format_lockspace(&ls, FormatOptions::default(), 10).unwrap_err();
        assert!(matches!(e, DirectError::TooSmall { .. }), "{e}");
        assert!(e.to_string().contains("truncate"));
        let ls = LockspaceSpec::parse(&format!("LS:0:{}:4096", p.display())).expect("spec");
        assert!(matches!(
            format_lockspace(&ls, FormatOptions::default(), 10),
            Err(DirectError::OffsetAlign { .. })
        ));
        let ls = LockspaceSpec::parse(&format!("LS:0:{}:0", p.display())).expect("spec");
        assert!(matches!(
            format_lockspace(&ls, FormatOptions::default(), 0),
            Err(DirectError::IoTimeout(0))
        ));
    }
}
