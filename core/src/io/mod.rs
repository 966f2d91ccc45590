//! The I/O engine: aligned sector I/O on shared devices behind one [`IoBackend`] interface,
//! with three implementations — io_uring ([`uring`]), a pread/pwrite thread fallback
//! ([`sync`]) and, for tests, a simulated disk ([`sim`]). Protocol code only ever talks to
//! this interface and cannot tell which backend runs.
//!
//! Model: `start_*` queues an operation and returns its [`IoId`]; `flush` hands queued work
//! to the device; `poll(now, ..)` reports [`Completion`]s, including deadline expiries;
//! `wait(now, until)` blocks the driver thread until something may have happened. Time is
//! always passed in; nothing here reads a clock or sleeps except `wait`.
//!
//! Invariants:
//! - Every operation has a deadline. In-flight O_DIRECT I/O cannot be cancelled (on this
//!   kernel LINK_TIMEOUT/ASYNC_CANCEL answer ENOENT), so an operation past its deadline is
//!   reported [`IoOutcome::TimedOut`] while its slot and buffer stay owned by the engine
//!   until the device really completes it; that late completion is reaped silently. A
//!   timed-out write may still land later.
//! - Never more operations in flight (queued, submitted or timed out and not yet reaped) than
//!   the completion queue holds; past that, `start_*` returns [`SubmitError::Full`].
//! - Buffers come from an arena allocated when the backend is built; nothing allocates on
//!   the data path.
//! - Writes to one range are ordered: a write overlapping an earlier write that may still land
//!   (in flight or timed out) is refused with [`SubmitError::WriteInFlight`], because the
//!   device may apply the two in either order — which would let an old dblock overwrite a
//!   newer one and break Disk Paxos.
//! - Writes are durable when they complete: devices are opened with O_DSYNC (see
//!   [`crate::dev`]), at least as strong as sanlock's O_SYNC for lease data.

pub mod conformance;
pub mod drive;
pub mod shared_sim;
pub mod sim;
pub mod slots;
pub mod sync;
#[allow(unsafe_code)]
pub mod uring;

use std::path::PathBuf;

use serde::Serialize;

use crate::clock::Time;
use crate::dev::{Device, DeviceKind};

/// Index of a device registered with a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DiskId(pub u16);

/// What a backend knows about one of its devices.
#[derive(Clone, Debug, Serialize)]
pub struct DiskInfo {
    /// Path as opened.
    pub path: PathBuf,
    /// Block device or file.
    pub kind: DeviceKind,
    /// Offsets and lengths must be multiples of this (logical sector size; 512 for files).
    pub io_align: u32,
    /// Size in bytes.
    pub size_bytes: u64,
}

impl DiskInfo {
    /// What `dev` reports.
    pub fn of(dev: &Device) -> Self {
        DiskInfo {
            path: dev.path().to_owned(),
            kind: dev.kind(),
            io_align: dev.io_align(),
            size_bytes: dev.size_bytes(),
        }
    }
}

/// Handle of one operation: slot index plus the slot's generation, so a stale handle can
/// never name a reused slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct IoId {
    index: u32,
    generation: u32,
}

impl IoId {
    /// The io_uring user_data encoding.
    pub fn user_data(self) -> u64 {
        (u64::from(self.index) << 32) | u64::from(self.generation)
    }

    /// Inverse of [`IoId::user_data`].
    pub fn from_user_data(ud: u64) -> Self {
        // Both halves are 32 bits by construction.
        IoId {
            index: (ud >> 32) as u32,
            generation: (ud & 0xFFFF_FFFF) as u32,
        }
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoKind {
    /// Read into the slot buffer.
    Read,
    /// Write from the slot buffer.
    Write,
}

/// One aligned I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRequest {
    /// Which device.
    pub disk: DiskId,
    /// Byte offset (multiple of the device's io_align).
    pub offset: u64,
    /// Length in bytes (multiple of io_align, not zero).
    pub len: usize,
    /// After this instant the operation is reported timed out.
    pub deadline: Time,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoOutcome {
    /// All bytes transferred. For reads, [`IoBackend::read_data`] has them until release.
    Done,
    /// The device or kernel reported an error (errno).
    Failed {
        /// errno.
        errno: i32,
    },
    /// Fewer bytes than asked were transferred.
    Short {
        /// Bytes transferred.
        transferred: usize,
    },
    /// The deadline passed first. A write may still land later.
    TimedOut,
    /// The read of a write→read chain did not run because its write failed.
    Canceled,
}

/// A finished (or timed-out) operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Completion {
    /// Which operation.
    pub id: IoId,
    /// Read or write.
    pub kind: IoKind,
    /// How it ended.
    pub outcome: IoOutcome,
}

impl Completion {
    /// A timed-out write: the data may reach the device at any later time.
    pub fn may_land_later(&self) -> bool {
        self.kind == IoKind::Write && self.outcome == IoOutcome::TimedOut
    }
}

/// Why an operation could not be started (nothing was queued).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// As many operations are in flight as the completion queue holds, or no buffer of the
    /// needed size is free.
    #[error("I/O engine full: {in_flight} operations in flight (limit {limit}), or no free {len}-byte buffer")]
    Full {
        /// Operations in flight.
        in_flight: usize,
        /// The limit.
        limit: usize,
        /// Buffer size asked for.
        len: usize,
    },
    /// Larger than the largest buffer class.
    #[error("I/O of {len} bytes exceeds the largest buffer ({max} bytes)")]
    TooLarge {
        /// Asked.
        len: usize,
        /// Largest buffer.
        max: usize,
    },
    /// No such disk.
    #[error("unknown disk {0:?}")]
    UnknownDisk(DiskId),
    /// Offset or length not aligned, or zero length.
    #[error("{path}: I/O at offset {offset} length {len} is not aligned to {align} bytes")]
    Unaligned {
        /// Device.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Required alignment.
        align: u32,
    },
    /// Past the end of the device.
    #[error("{path}: {len} bytes at offset {offset} extend past the end ({size} bytes)")]
    PastEnd {
        /// Device.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Size.
        size: u64,
    },
    /// An earlier write to an overlapping range may still land (it is in flight, or timed out
    /// and not yet reaped). A new write there could be overtaken by the old one, so it is
    /// refused until the device has answered the old one.
    #[error("a write to {offset}..{end} is still in flight on {path}; retry once it completed")]
    WriteInFlight {
        /// Device.
        path: PathBuf,
        /// Start of the refused write.
        offset: u64,
        /// End of the refused write.
        end: u64,
    },
    /// Data length differs from the request length.
    #[error("write of {len} bytes given {data} bytes of data")]
    DataLength {
        /// Request length.
        len: usize,
        /// Data given.
        data: usize,
    },
}

/// The backend itself failed (not one operation).
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// io_uring setup or io_uring_enter failed.
    #[error("io_uring: {what}: {source}")]
    Uring {
        /// Which call.
        what: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start I/O worker thread: {0}")]
    Thread(std::io::Error),
    /// All worker threads are gone.
    #[error("I/O worker threads exited")]
    WorkersGone,
    /// The engine holds as many disks as it can, or cannot take this one.
    #[error("cannot add disk: {0}")]
    AddDisk(String),
}

/// Sizes and counts of the engine's preallocated resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Submission queue entries of the io_uring (the completion queue is twice that).
    pub ring_entries: u32,
    /// Buffer classes: (bytes per buffer, number of buffers). Every operation takes one buffer
    /// of the smallest class that fits it, so the sum of counts bounds operations in flight.
    pub buffer_classes: Vec<(usize, usize)>,
    /// Worker threads of the sync fallback.
    pub sync_workers: usize,
}

impl Default for EngineConfig {
    /// 256 sector-sized buffers for renewals and ballot writes, 32 × 1 MiB for area and
    /// dblock reads, 4 × 8 MiB for the largest areas (4096/8M): 70 MiB in all.
    fn default() -> Self {
        EngineConfig {
            ring_entries: 256,
            buffer_classes: vec![(4096, 256), (1 << 20, 32), (8 << 20, 4)],
            sync_workers: 4,
        }
    }
}

/// Aligned sector I/O on shared devices. See the module documentation for the model.
pub trait IoBackend: std::fmt::Debug {
    /// "io_uring", "sync" or "sim".
    fn name(&self) -> &'static str;
    /// A registered device.
    fn disk(&self, disk: DiskId) -> Option<&DiskInfo>;
    /// Queues a read of `req.len` bytes.
    fn start_read(&mut self, req: IoRequest) -> Result<IoId, SubmitError>;
    /// Queues a write of `data` (`data.len() == req.len`), copied into an engine buffer.
    fn start_write(&mut self, req: IoRequest, data: &[u8]) -> Result<IoId, SubmitError>;
    /// Queues a write and a read that starts only after the write completed successfully
    /// (Disk Paxos' per-disk "write, then read"); if the write fails the read is Canceled.
    fn start_chain(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError>;
    /// Queues a write and a read with no order between them (both or neither is queued). The
    /// default runs them as a chain — one of the orders allowed — for backends that cannot do
    /// better.
    fn start_pair(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        self.start_chain(write, data, read)
    }
    /// Hands everything queued to the device in one batch.
    fn flush(&mut self) -> Result<(), IoError>;
    /// Appends completions that arrived and deadlines that passed by `now`; never blocks.
    fn poll(&mut self, now: Time, out: &mut Vec<Completion>) -> Result<(), IoError>;
    /// Blocks until a completion may be available or `until` (real backends; the simulator
    /// returns at once — its driver advances simulated time instead).
    fn wait(&mut self, now: Time, until: Time) -> Result<(), IoError>;
    /// The data of a read that completed [`IoOutcome::Done`], until it is released.
    fn read_data(&self, id: IoId) -> Option<&[u8]>;
    /// Returns a completed read's buffer to the arena. Unknown or stale ids are ignored.
    fn release(&mut self, id: IoId);
    /// Operations queued, submitted, or timed out and not yet reaped.
    fn in_flight(&self) -> usize;
    /// The earliest deadline of an operation not yet completed or timed out.
    fn next_deadline(&self) -> Option<Time>;
    /// Registers another device (a lockspace or resource on a new disk) and returns its id.
    fn add_disk(&mut self, device: Device) -> Result<DiskId, IoError>;
    /// A descriptor that becomes readable when a completion may be waiting, for a reactor that
    /// also polls sockets; `poll` resets it. None when the backend has none (the simulator).
    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>>;
}

/// Disks one engine can hold.
pub const DISKS_MAX: usize = 256;

/// Reads an eventfd until it is empty (a nonblocking eventfd: one read resets it).
pub(crate) fn drain_eventfd(fd: &nix::sys::eventfd::EventFd) {
    // EAGAIN (nothing pending) is the normal case; any other error leaves the counter set,
    // which only costs a spurious wake-up.
    let _ = fd.read();
}

pub(crate) fn new_eventfd() -> Result<nix::sys::eventfd::EventFd, IoError> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(|e| {
        IoError::Uring {
            what: "eventfd",
            source: std::io::Error::from(e),
        }
    })
}

/// Which backend [`open_backend`] chose, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendChoice {
    /// "io_uring" or "sync".
    pub name: &'static str,
    /// Why the sync fallback runs, when it does.
    pub fallback_reason: Option<String>,
}

/// Backend preference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring, or the sync fallback when io_uring is unavailable (seccomp, sysctl
    /// kernel.io_uring_disabled): EPERM, ENOSYS or EACCES from io_uring_setup.
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// The sync fallback (tests, or hosts where io_uring is unwanted).
    Sync,
}

/// True for the io_uring_setup errors that mean "io_uring is not available here".
pub fn uring_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
    )
}

/// Builds a backend over `devices`. With [`BackendKind::Auto`], io_uring is probed and the
/// sync fallback is used (and the reason returned) when it is unavailable.
pub fn open_backend(
    devices: Vec<Device>,
    config: &EngineConfig,
    kind: BackendKind,
) -> Result<(Box<dyn IoBackend + Send>, BackendChoice), IoError> {
    match kind {
        BackendKind::Sync => {
            let b = sync::SyncBackend::new(devices, config)?;
            Ok((
                Box::new(b),
                BackendChoice {
                    name: "sync",
                    fallback_reason: None,
                },
            ))
        }
        BackendKind::Uring => Ok((
            Box::new(uring::UringBackend::new(devices, config)?),
            BackendChoice {
                name: "io_uring",
                fallback_reason: None,
            },
        )),
        BackendKind::Auto => match uring::probe(config.ring_entries) {
            Ok(()) => Ok((
                Box::new(uring::UringBackend::new(devices, config)?),
                BackendChoice {
                    name: "io_uring",
                    fallback_reason: None,
                },
            )),
            Err(e) if uring_unavailable(&e) => {
                let b = sync::SyncBackend::new(devices, config)?;
                Ok((
                    Box::new(b),
                    BackendChoice {
                        name: "sync",
                        fallback_reason: Some(format!("io_uring_setup failed: {e}")),
                    },
                ))
            }
            Err(source) => Err(IoError::Uring {
                what: "io_uring_setup",
                source,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::Access;

    fn backends(path: &std::path::Path) -> Vec<Box<dyn IoBackend + Send>> {
        let config = EngineConfig {
            ring_entries: 16,
            buffer_classes: vec![(4096, 24), (65536, 2)],
            sync_workers: 3,
        };
        [BackendKind::Uring, BackendKind::Sync]
            .into_iter()
            .map(|k| {
                let devs = vec![
                    Device::open(path, Access::ReadWrite).expect("rw"),
                    Device::open(path, Access::Read).expect("ro"),
                ];
                open_backend(devs, &config, k).expect("backend").0
            })
            .collect()
    }

    #[test]
    fn both_backends_pass_the_suite_on_a_file() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .expect("file");
        for mut b in backends(&path) {
            let b = b.as_mut();
            let name = b.name();
            conformance::write_then_read(b, &crate::clock::MonotonicClock, DiskId(0), 512);
            conformance::chain_reads_after_write(b, &crate::clock::MonotonicClock, DiskId(0), 512);
            conformance::pair_completes_both(b, &crate::clock::MonotonicClock, DiskId(0), 512);
            conformance::chain_read_canceled_when_write_fails(
                b,
                &crate::clock::MonotonicClock,
                DiskId(1),
                512,
            );
            conformance::many_in_flight(b, &crate::clock::MonotonicClock, DiskId(0), 512, 20);
            conformance::full_is_typed_and_recovers(
                b,
                &crate::clock::MonotonicClock,
                DiskId(0),
                512,
            );
            conformance::bad_requests_refused(
                b,
                &crate::clock::MonotonicClock,
                DiskId(0),
                512,
                1 << 20,
            );
            eprintln!("{name}: suite passed");
        }
    }
}
