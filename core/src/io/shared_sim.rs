//! One simulated storage shared by several engines: a [`SimBackend`] behind a lock, and one
//! [`SimPort`] per simulated host, each an [`IoBackend`] of its own. A port sees only its own
//! completions (routed by the id each I/O carries), so every host's lockspace set runs on its
//! own engine over the same bytes — as hosts on a SAN do. Any port's poll applies every due
//! operation of every host, so the writes of a host that is not stepped (frozen) still land
//! on time; those of a crashed host ([`SharedSim::crash`]) land too if they were in flight,
//! and their completions are dropped.
//!
//! Time is the simulation's: nothing here advances the clock ([`SimPort`]'s `wait` returns at
//! once; the driver moves time to [`SharedSim::next_due`] or its own next event).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::sim::SimBackend;
use super::{
    Completion, DiskId, DiskInfo, IoBackend, IoError, IoId, IoOutcome, IoRequest, SubmitError,
};
use crate::clock::Time;

#[derive(Debug)]
struct Inner {
    backend: SimBackend,
    /// Which port started each I/O not yet reported.
    owners: HashMap<IoId, usize>,
    /// Completions (with a read's data) waiting for their port's poll.
    inboxes: Vec<Vec<(Completion, Option<Vec<u8>>)>>,
    /// Ports whose host crashed: their completions are dropped.
    dead: Vec<bool>,
    scratch: Vec<Completion>,
}

impl Inner {
    fn pump(&mut self, now: Time) -> Result<(), IoError> {
        self.scratch.clear();
        let mut all = std::mem::take(&mut self.scratch);
        self.backend.poll(now, &mut all)?;
        for c in all.drain(..) {
            let Some(port) = self.owners.remove(&c.id) else {
                continue;
            };
            let data = (c.outcome == IoOutcome::Done)
                .then(|| self.backend.read_data(c.id).map(<[u8]>::to_vec))
                .flatten();
            self.backend.release(c.id);
            if !self.dead[port] {
                self.inboxes[port].push((c, data));
            }
        }
        self.scratch = all;
        Ok(())
    }
}

/// The shared storage (see the module docs). Cloning shares it.
#[derive(Clone, Debug)]
pub struct SharedSim(Arc<Mutex<Inner>>);

impl SharedSim {
    /// Shares `backend` (its disks and views set up already).
    pub fn new(backend: SimBackend) -> Self {
        SharedSim(Arc::new(Mutex::new(Inner {
            backend,
            owners: HashMap::new(),
            inboxes: Vec::new(),
            dead: Vec::new(),
            scratch: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Single-threaded simulations; a poisoned lock (a panicking test) still holds data.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new engine over the shared storage, for one host.
    pub fn port(&self) -> SimPort {
        let mut inner = self.lock();
        let port = inner.inboxes.len();
        inner.inboxes.push(Vec::new());
        inner.dead.push(false);
        let mut disks = Vec::new();
        let mut i = 0u16;
        while let Some(d) = inner.backend.disk(DiskId(i)) {
            disks.push(d.clone());
            i += 1;
        }
        SimPort {
            shared: self.clone(),
            port,
            disks,
            data: HashMap::new(),
        }
    }

    /// The host of `port` crashed: what it had in flight still lands (it reached the
    /// device), its completions are dropped, and the port serves nobody any more.
    pub fn crash(&self, port: usize) {
        let mut inner = self.lock();
        inner.dead[port] = true;
        inner.inboxes[port].clear();
    }

    /// A new port for a host restarted after a crash (the old one stays dead).
    pub fn restart(&self) -> SimPort {
        self.port()
    }

    /// Applies every operation due by `now` (completions wait in their ports).
    pub fn settle(&self, now: Time) -> Result<(), IoError> {
        self.lock().pump(now)
    }

    /// The earliest instant at which an operation takes effect.
    pub fn next_due(&self) -> Option<Time> {
        self.lock().backend.next_due()
    }

    /// Runs `f` on the backend (hang a disk, corrupt a sector, read the bytes).
    pub fn with<R>(&self, f: impl FnOnce(&mut SimBackend) -> R) -> R {
        f(&mut self.lock().backend)
    }
}

/// One host's engine over a [`SharedSim`].
#[derive(Debug)]
pub struct SimPort {
    shared: SharedSim,
    port: usize,
    disks: Vec<DiskInfo>,
    data: HashMap<IoId, Vec<u8>>,
}

impl SimPort {
    /// The port's number (for [`SharedSim::crash`]).
    pub fn number(&self) -> usize {
        self.port
    }

    fn own(&self, inner: &mut Inner, id: IoId) {
        inner.owners.insert(id, self.port);
    }
}

impl IoBackend for SimPort {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn disk(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.disks.get(usize::from(disk.0))
    }

    fn start_read(&mut self, req: IoRequest) -> Result<IoId, SubmitError> {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        let id = inner.backend.start_read(req)?;
        self.own(&mut inner, id);
        Ok(id)
    }

    fn start_write(&mut self, req: IoRequest, data: &[u8]) -> Result<IoId, SubmitError> {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        let id = inner.backend.start_write(req, data)?;
        self.own(&mut inner, id);
        Ok(id)
    }

    fn start_chain(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        let (w, r) = inner.backend.start_chain(write, data, read)?;
        self.own(&mut inner, w);
        self.own(&mut inner, r);
        Ok((w, r))
    }

    fn start_pair(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        let (w, r) = inner.backend.start_pair(write, data, read)?;
        self.own(&mut inner, w);
        self.own(&mut inner, r);
        Ok((w, r))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.shared.lock().backend.flush()
    }

    fn poll(&mut self, now: Time, out: &mut Vec<Completion>) -> Result<(), IoError> {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        inner.pump(now)?;
        for (c, data) in inner.inboxes[self.port].drain(..) {
            if let Some(d) = data {
                self.data.insert(c.id, d);
            }
            out.push(c);
        }
        Ok(())
    }

    fn wait(&mut self, _now: Time, _until: Time) -> Result<(), IoError> {
        // The driver moves simulated time.
        Ok(())
    }

    fn read_data(&self, id: IoId) -> Option<&[u8]> {
        self.data.get(&id).map(Vec::as_slice)
    }

    fn release(&mut self, id: IoId) {
        self.data.remove(&id);
    }

    fn in_flight(&self) -> usize {
        let inner = self.shared.lock();
        inner.owners.values().filter(|p| **p == self.port).count() + inner.inboxes[self.port].len()
    }

    fn next_deadline(&self) -> Option<Time> {
        self.shared.lock().backend.next_deadline()
    }

    fn add_disk(&mut self, device: crate::dev::Device) -> Result<DiskId, IoError> {
        Err(IoError::AddDisk(format!(
            "the simulator has no real devices ({})",
            device.path().display()
        )))
    }

    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}
