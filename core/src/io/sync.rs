//! The sync fallback: pread/pwrite on a small pool of worker threads, with the semantics of
//! the io_uring backend (same slot table, chains, deadlines, zombies). Chosen at run time when
//! io_uring is unavailable, or forced for tests.
//!
//! A buffer travels with its job to the worker and comes back with the result, so a worker
//! stuck on a hung device owns the memory it may still write into; the slot stays a zombie
//! until the buffer returns.

use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};

use nix::sys::eventfd::EventFd;

use crate::clock::Time;
use crate::dev::{AlignedBuf, Device};
use crate::io::slots::SlotTable;
use crate::io::{
    Completion, DiskId, DiskInfo, EngineConfig, IoBackend, IoError, IoId, IoKind, IoRequest,
    SubmitError,
};

struct Job {
    id: IoId,
    device: Arc<Device>,
    kind: IoKind,
    offset: u64,
    len: usize,
    buf: AlignedBuf,
    /// The read of a write→read chain: runs after this job, only if it succeeded.
    then: Option<Box<Job>>,
}

struct Done {
    id: IoId,
    res: i32,
    buf: AlignedBuf,
}

fn run(job: &mut Job) -> i32 {
    let data = &mut job.buf.as_mut_slice()[..job.len];
    let r = match job.kind {
        IoKind::Read => job.device.file().read_at(data, job.offset),
        IoKind::Write => job.device.file().write_at(data, job.offset),
    };
    match r {
        Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>, done: Sender<Done>, notify: Arc<EventFd>) {
    loop {
        // A poisoned lock means another worker panicked; with panic=abort that cannot
        // happen in release builds, and in tests the process is failing anyway.
        // Top of the loop = just after the previous job's results were sent (and once at
        // start-up, a harmless spurious wake-up): tell a polling reactor. A failed write only
        // delays it to its next timer.
        let _ = notify.write(1);
        let job = match jobs.lock().map(|rx| rx.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        let mut job = job;
        let res = run(&mut job);
        let then = job.then.take();
        if done
            .send(Done {
                id: job.id,
                res,
                buf: job.buf,
            })
            .is_err()
        {
            return;
        }
        if let Some(mut next) = then {
            let ok = usize::try_from(res).is_ok_and(|n| n == job.len);
            let res = if ok { run(&mut next) } else { -libc::ECANCELED };
            if done
                .send(Done {
                    id: next.id,
                    res,
                    buf: next.buf,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

/// pread/pwrite worker-thread backend.
pub struct SyncBackend {
    slots: SlotTable,
    disks: Vec<(Arc<Device>, DiskInfo)>,
    jobs: Sender<Job>,
    done: Receiver<Done>,
    queued: Vec<Job>,
    /// Completions received by `wait`, reported by the next `poll`.
    held: Vec<Completion>,
    /// Written by workers after each result.
    notify: Arc<EventFd>,
}

impl std::fmt::Debug for SyncBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBackend")
            .field("disks", &self.disks.len())
            .field("in_flight", &self.slots.in_flight())
            .finish()
    }
}

impl SyncBackend {
    /// Starts `config.sync_workers` threads and allocates the buffer arena. The in-flight
    /// limit is the same as the io_uring backend's (2 × ring_entries).
    pub fn new(devices: Vec<Device>, config: &EngineConfig) -> Result<Self, IoError> {
        let (jobs_tx, jobs_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel::<Done>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let notify = Arc::new(crate::io::new_eventfd()?);
        for n in 0..config.sync_workers.max(1) {
            let (rx, tx) = (Arc::clone(&jobs_rx), done_tx.clone());
            let nf = Arc::clone(&notify);
            std::thread::Builder::new()
                .name(format!("tenure-io-{n}"))
                .spawn(move || worker(rx, tx, nf))
                .map_err(IoError::Thread)?;
        }
        let limit = config.ring_entries.max(2) as usize * 2;
        let disks = devices
            .into_iter()
            .map(|d| {
                let info = DiskInfo::of(&d);
                (Arc::new(d), info)
            })
            .collect();
        Ok(SyncBackend {
            slots: SlotTable::new(&config.buffer_classes, limit),
            disks,
            jobs: jobs_tx,
            done: done_rx,
            queued: Vec::new(),
            held: Vec::new(),
            notify,
        })
    }

    fn job(
        &mut self,
        kind: IoKind,
        req: IoRequest,
        data: Option<&[u8]>,
    ) -> Result<Job, SubmitError> {
        let info = self.disks.get(usize::from(req.disk.0)).map(|(_, i)| i);
        let id = self.slots.alloc(kind, req, info, data)?;
        let device = Arc::clone(&self.disks[usize::from(req.disk.0)].0);
        let slot = self.slots.get_mut(id).expect("just allocated");
        // Just allocated: the slot holds its buffer (with the data already copied in).
        let buf = slot.buf.take().expect("free slot holds its buffer");
        Ok(Job {
            id,
            device,
            kind,
            offset: req.offset,
            len: req.len,
            buf,
            then: None,
        })
    }

    fn absorb(&mut self, d: Done, out: &mut Vec<Completion>) {
        self.slots.return_buffer(d.id, d.buf);
        if let Some(c) = self.slots.complete(d.id, d.res) {
            out.push(c);
        }
    }
}

impl IoBackend for SyncBackend {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn disk(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.disks.get(usize::from(disk.0)).map(|(_, i)| i)
    }

    fn add_disk(&mut self, device: Device) -> Result<DiskId, IoError> {
        if self.disks.len() >= crate::io::DISKS_MAX {
            return Err(IoError::AddDisk(format!(
                "the engine holds {} disks already",
                crate::io::DISKS_MAX
            )));
        }
        let info = DiskInfo::of(&device);
        self.disks.push((Arc::new(device), info));
        // Fewer than DISKS_MAX (256) disks: the index fits u16.
        Ok(DiskId(
            u16::try_from(self.disks.len() - 1).expect("disk index fits u16"),
        ))
    }

    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.notify.as_fd())
    }

    fn start_read(&mut self, req: IoRequest) -> Result<IoId, SubmitError> {
        let job = self.job(IoKind::Read, req, None)?;
        let id = job.id;
        self.queued.push(job);
        Ok(id)
    }

    fn start_write(&mut self, req: IoRequest, data: &[u8]) -> Result<IoId, SubmitError> {
        let job = self.job(IoKind::Write, req, Some(data))?;
        let id = job.id;
        self.queued.push(job);
        Ok(id)
    }

    fn start_chain(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        let mut w = self.job(IoKind::Write, write, Some(data))?;
        let r = match self.job(IoKind::Read, read, None) {
            Ok(r) => r,
            Err(e) => {
                self.slots.return_buffer(w.id, w.buf);
                self.slots.unqueue(w.id);
                return Err(e);
            }
        };
        let ids = (w.id, r.id);
        w.then = Some(Box::new(r));
        self.queued.push(w);
        Ok(ids)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        for job in self.queued.drain(..) {
            let (id, then) = (job.id, job.then.as_ref().map(|j| j.id));
            self.jobs.send(job).map_err(|_| IoError::WorkersGone)?;
            self.slots.mark_in_flight(id);
            if let Some(t) = then {
                self.slots.mark_in_flight(t);
            }
        }
        Ok(())
    }

    fn poll(&mut self, now: Time, out: &mut Vec<Completion>) -> Result<(), IoError> {
        // Reset first: a result sent after this read signals again.
        crate::io::drain_eventfd(&self.notify);
        out.append(&mut self.held);
        while let Ok(d) = self.done.try_recv() {
            self.absorb(d, out);
        }
        self.slots.expire(now, out);
        Ok(())
    }

    fn wait(&mut self, now: Time, until: Time) -> Result<(), IoError> {
        self.flush()?;
        if until <= now {
            return Ok(());
        }
        match self.done.recv_timeout(until.saturating_since(now)) {
            Ok(d) => {
                // Absorbed now, reported by the next poll.
                let mut held = std::mem::take(&mut self.held);
                self.absorb(d, &mut held);
                self.held = held;
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => Err(IoError::WorkersGone),
        }
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
