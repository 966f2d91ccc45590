//! The io_uring backend: one ring, many operations in flight, submissions batched until
//! `flush`, write→read chains linked with IOSQE_IO_LINK, deadlines kept in user space (the
//! kernel cannot cancel in-flight O_DIRECT I/O, so a deadline only changes what we report).
//!
//! Durability: devices are opened O_DIRECT | O_DSYNC ([`crate::dev::Device::open`]), so a
//! write's completion means the data is on stable storage, as with pwrite on such an fd.
//!
//! Unsafe code: pushing SQEs hands the kernel raw pointers into slot buffers. Safety rests on
//! the slot table's invariant that a slot's buffer is neither moved, freed nor handed out
//! again until the kernel's completion for it has been reaped (zombies included), and on the
//! buffers of operations still in flight never being freed (see `Drop`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::clock::Time;
use crate::dev::Device;
use crate::io::slots::SlotTable;
use crate::io::{
    Completion, DiskId, DiskInfo, EngineConfig, IoBackend, IoError, IoId, IoKind, IoRequest,
    SubmitError,
};

/// Checks that io_uring can be set up here (seccomp, `kernel.io_uring_disabled`).
pub fn probe(entries: u32) -> std::io::Result<()> {
    IoUring::new(entries.max(2)).map(drop)
}

/// io_uring backend over a set of devices.
pub struct UringBackend {
    ring: IoUring,
    slots: SlotTable,
    disks: Vec<(Device, DiskInfo)>,
    /// SQEs pushed but not yet submitted (their slots are Queued).
    queued: Vec<IoId>,
    /// Signalled by the kernel for every completion (IORING_REGISTER_EVENTFD).
    notify: nix::sys::eventfd::EventFd,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("disks", &self.disks.len())
            .field("in_flight", &self.slots.in_flight())
            .finish()
    }
}

impl UringBackend {
    /// Sets up the ring and allocates the buffer arena.
    pub fn new(devices: Vec<Device>, config: &EngineConfig) -> Result<Self, IoError> {
        let entries = config.ring_entries.max(2);
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(|source| IoError::Uring {
                what: "io_uring_setup",
                source,
            })?;
        let cq = ring.params().cq_entries() as usize;
        let disks = devices.into_iter().map(|d| {
            let info = DiskInfo::of(&d);
            (d, info)
        });
        let notify = crate::io::new_eventfd()?;
        ring.submitter()
            .register_eventfd(notify.as_fd().as_raw_fd())
            .map_err(|source| IoError::Uring {
                what: "io_uring_register(EVENTFD)",
                source,
            })?;
        Ok(UringBackend {
            ring,
            slots: SlotTable::new(&config.buffer_classes, cq),
            disks: disks.collect(),
            queued: Vec::with_capacity(cq),
            notify,
        })
    }

    fn info(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.disks.get(usize::from(disk.0)).map(|(_, i)| i)
    }

    /// A write and a read queued together (both or neither): the read after the write when
    /// `linked` (IOSQE_IO_LINK), else in no order.
    fn start_two(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
        linked: bool,
    ) -> Result<(IoId, IoId), SubmitError> {
        let w = self.start(IoKind::Write, write, Some(data))?;
        let r = match self.start(IoKind::Read, read, None) {
            Ok(r) => r,
            Err(e) => {
                self.slots.unqueue(w);
                return Err(e);
            }
        };
        let (we, re) = (self.sqe(w, linked), self.sqe(r, false));
        self.push(&[(w, we), (r, re)]).map_err(|_| {
            self.slots.unqueue(w);
            self.slots.unqueue(r);
            SubmitError::Full {
                in_flight: self.slots.in_flight(),
                limit: self.slots.limit(),
                len: read.len,
            }
        })?;
        Ok((w, r))
    }

    fn sqe(&mut self, id: IoId, linked: bool) -> squeue::Entry {
        let slot = self.slots.slot_mut(id_index(id));
        let fd = types::Fd(self.disks[usize::from(slot.disk.0)].0.file().as_raw_fd());
        // The slot was just allocated: its buffer is present.
        let buf = slot.buf.as_mut().expect("queued slot holds its buffer");
        let ptr = buf.as_mut_slice().as_mut_ptr();
        // len <= buffer class size <= u32::MAX in any sane config; checked in alloc via classes.
        let len = u32::try_from(slot.len).expect("I/O length fits u32");
        let entry = match slot.kind {
            IoKind::Read => opcode::Read::new(fd, ptr, len).offset(slot.offset).build(),
            IoKind::Write => opcode::Write::new(fd, ptr, len).offset(slot.offset).build(),
        };
        let entry = entry.user_data(id.user_data());
        if linked {
            entry.flags(squeue::Flags::IO_LINK)
        } else {
            entry
        }
    }

    /// Pushes entries into the SQ, submitting first if there is no room for all of them.
    fn push(&mut self, entries: &[(IoId, squeue::Entry)]) -> Result<(), IoError> {
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < entries.len() {
            self.flush()?;
        }
        let mut sq = self.ring.submission();
        for (id, e) in entries {
            // SAFETY: the entry points into the buffer of slot `id`, which stays allocated, in
            // place and untouched by us until its completion is reaped (slot invariant); fds
            // stay open as long as `self.disks`, which lives as long as the ring.
            unsafe { sq.push(e) }.map_err(|_| IoError::Uring {
                what: "submission queue full after submit",
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            })?;
            self.queued.push(*id);
        }
        Ok(())
    }

    fn start(
        &mut self,
        kind: IoKind,
        req: IoRequest,
        data: Option<&[u8]>,
    ) -> Result<IoId, SubmitError> {
        let info = self.disks.get(usize::from(req.disk.0)).map(|(_, i)| i);
        self.slots.alloc(kind, req, info, data)
    }

    /// Starts one unlinked operation.
    fn start_one(
        &mut self,
        kind: IoKind,
        req: IoRequest,
        data: Option<&[u8]>,
    ) -> Result<IoId, SubmitError> {
        let id = self.start(kind, req, data)?;
        let e = self.sqe(id, false);
        if self.push(&[(id, e)]).is_err() {
            self.slots.unqueue(id);
            return Err(SubmitError::Full {
                in_flight: self.slots.in_flight(),
                limit: self.slots.limit(),
                len: req.len,
            });
        }
        Ok(id)
    }
}

impl Drop for UringBackend {
    /// Closing the ring does not wait for in-flight O_DIRECT I/O, which keeps writing into
    /// (or reading from) its buffers until the device answers. If anything is still in flight
    /// (a hung device, timed-out operations), the buffers are leaked rather than returned to
    /// the allocator, so that memory can never be reused under the kernel.
    fn drop(&mut self) {
        let table = std::mem::replace(&mut self.slots, SlotTable::new(&[], 0));
        if table.in_flight() > 0 {
            std::mem::forget(table);
        }
    }
}

fn id_index(id: IoId) -> u32 {
    // IoId keeps index in the high half of user_data.
    (id.user_data() >> 32) as u32
}

impl IoBackend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn disk(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.info(disk)
    }

    fn add_disk(&mut self, device: Device) -> Result<DiskId, IoError> {
        if self.disks.len() >= crate::io::DISKS_MAX {
            return Err(IoError::AddDisk(format!(
                "the engine holds {} disks already",
                crate::io::DISKS_MAX
            )));
        }
        let info = DiskInfo::of(&device);
        self.disks.push((device, info));
        // Fewer than DISKS_MAX (256) disks: the index fits u16.
        Ok(DiskId(
            u16::try_from(self.disks.len() - 1).expect("disk index fits u16"),
        ))
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.notify.as_fd())
    }

    fn start_read(&mut self, req: IoRequest) -> Result<IoId, SubmitError> {
        self.start_one(IoKind::Read, req, None)
    }

    fn start_write(&mut self, req: IoRequest, data: &[u8]) -> Result<IoId, SubmitError> {
        self.start_one(IoKind::Write, req, Some(data))
    }

    fn start_chain(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        self.start_two(write, data, read, true)
    }

    fn start_pair(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        self.start_two(write, data, read, false)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(source) => {
                    return Err(IoError::Uring {
                        what: "io_uring_enter (submit)",
                        source,
                    })
                }
            }
        }
        for id in self.queued.drain(..) {
            self.slots.mark_in_flight(id);
        }
        Ok(())
    }

    fn poll(&mut self, now: Time, out: &mut Vec<Completion>) -> Result<(), IoError> {
        // Reset the notification first: a completion posted after this read signals again.
        crate::io::drain_eventfd(&self.notify);
        for cqe in self.ring.completion() {
            if let Some(c) = self
                .slots
                .complete(IoId::from_user_data(cqe.user_data()), cqe.result())
            {
                out.push(c);
            }
        }
        self.slots.expire(now, out);
        Ok(())
    }

    fn wait(&mut self, now: Time, until: Time) -> Result<(), IoError> {
        if until <= now || !self.ring.completion().is_empty() {
            return self.flush();
        }
        // Submit what is queued and wait for one completion in the same io_uring_enter.
        let d = until.saturating_since(now);
        let ts = types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        let r = self.ring.submitter().submit_with_args(1, &args);
        match r {
            Ok(_) => {}
            Err(ref e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(source) => {
                return Err(IoError::Uring {
                    what: "io_uring_enter (wait)",
                    source,
                })
            }
        }
        // Whatever the outcome, the kernel consumed the submission queue unless it said
        // EBUSY/EINTR before doing so; flush covers anything left.
        if self.ring.submission().is_empty() {
            for id in self.queued.drain(..) {
                self.slots.mark_in_flight(id);
            }
        }
        self.flush()
    }

    fn read_data(&self, id: IoId) -> Option<&[u8]> {
        self.slots.read_data(id)
    }

    fn release(&mut self, id: IoId) {
        self.slots.release(id);
    }

    fn in_flight(&self) -> usize {
        self.slots.in_flight()
    }

    fn next_deadline(&self) -> Option<Time> {
        self.slots.next_deadline()
    }
}
