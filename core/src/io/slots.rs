//! The slot table shared by the real backends: one slot per operation, each owning a buffer
//! from a preallocated arena of size classes, keyed by [`IoId`] (index + generation).
//!
//! Slot life: Free → Queued (start_*) → InFlight (flush) → Free (write done, or read failed)
//! or Completed (read done; buffer readable until release) — or → Zombie (deadline passed
//! while in flight) → Free only when the device's real completion is reaped. A slot's
//! generation changes every time it is freed, so stale ids never reach a reused slot, and a
//! buffer is never handed out again while the device may still write into it.

use crate::clock::Time;
use crate::dev::AlignedBuf;
use crate::io::{Completion, DiskId, DiskInfo, IoId, IoKind, IoOutcome, IoRequest, SubmitError};

/// State of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Unused; its buffer is in the free list.
    Free,
    /// Accepted by start_*, not yet handed to the device.
    Queued,
    /// Handed to the device.
    InFlight,
    /// A read that completed; the buffer holds its data until release.
    Completed,
    /// Reported timed out; the device still owns the buffer.
    Zombie,
}

/// One operation's slot.
#[derive(Debug)]
pub struct Slot {
    /// Bumped when the slot is freed.
    pub generation: u32,
    /// Current state.
    pub state: SlotState,
    /// Buffer class index.
    pub class: usize,
    /// The buffer; `None` while a sync worker holds it.
    pub buf: Option<AlignedBuf>,
    /// Read or write.
    pub kind: IoKind,
    /// Which device.
    pub disk: DiskId,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub len: usize,
    /// Deadline.
    pub deadline: Time,
}

/// All slots and the per-class free lists.
#[derive(Debug)]
pub struct SlotTable {
    slots: Vec<Slot>,
    class_bytes: Vec<usize>,
    free: Vec<Vec<u32>>,
    /// Indices of slots not Free, so deadline scans cost O(busy), not O(all slots).
    busy: Vec<u32>,
    in_flight: usize,
    limit: usize,
}

impl SlotTable {
    /// Allocates every buffer now. `limit` caps operations in flight (the CQ size).
    pub fn new(classes: &[(usize, usize)], limit: usize) -> Self {
        let mut sorted: Vec<(usize, usize)> = classes
            .iter()
            .copied()
            .filter(|&(b, n)| b > 0 && n > 0)
            .collect();
        sorted.sort_unstable();
        let mut slots = Vec::new();
        let mut free = Vec::new();
        let mut class_bytes = Vec::new();
        for (class, &(bytes, count)) in sorted.iter().enumerate() {
            class_bytes.push(bytes);
            let mut list = Vec::with_capacity(count);
            for _ in 0..count {
                list.push(u32::try_from(slots.len()).expect("fewer than 2^32 slots"));
                slots.push(Slot {
                    generation: 0,
                    state: SlotState::Free,
                    class,
                    buf: Some(AlignedBuf::new(bytes)),
                    kind: IoKind::Read,
                    disk: DiskId(0),
                    offset: 0,
                    len: 0,
                    deadline: Time::ZERO,
                });
            }
            // Pop from the end: hand out low indices first (easier to read in traces).
            list.reverse();
            free.push(list);
        }
        // Preallocated: the busy list never holds more than every slot.
        let busy = Vec::with_capacity(slots.len());
        SlotTable {
            slots,
            class_bytes,
            free,
            busy,
            in_flight: 0,
            limit,
        }
    }

    /// The in-flight limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Operations queued, in flight or zombie.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Checks `req` against `disk` and takes a slot whose buffer fits; the slot is Queued.
    /// For writes, `data` (exactly `req.len` bytes) is copied into the slot's buffer.
    pub fn alloc(
        &mut self,
        kind: IoKind,
        req: IoRequest,
        disk: Option<&DiskInfo>,
        data: Option<&[u8]>,
    ) -> Result<IoId, SubmitError> {
        if let Some(d) = data.filter(|d| d.len() != req.len) {
            return Err(SubmitError::DataLength {
                len: req.len,
                data: d.len(),
            });
        }
        let info = disk.ok_or(SubmitError::UnknownDisk(req.disk))?;
        let align = info.io_align;
        if req.len == 0 || req.offset % u64::from(align) != 0 || req.len % align as usize != 0 {
            return Err(SubmitError::Unaligned {
                path: info.path.clone(),
                offset: req.offset,
                len: req.len,
                align,
            });
        }
        if req
            .offset
            .checked_add(req.len as u64)
            .is_none_or(|end| end > info.size_bytes)
        {
            return Err(SubmitError::PastEnd {
                path: info.path.clone(),
                offset: req.offset,
                len: req.len,
                size: info.size_bytes,
            });
        }
        if kind == IoKind::Write {
            let end = req.offset + req.len as u64;
            let overlapping = self.busy.iter().map(|&i| &self.slots[i as usize]).any(|s| {
                s.kind == IoKind::Write
                    && s.disk == req.disk
                    && matches!(
                        s.state,
                        SlotState::Queued | SlotState::InFlight | SlotState::Zombie
                    )
                    && s.offset < end
                    && req.offset < s.offset + s.len as u64
            });
            if overlapping {
                return Err(SubmitError::WriteInFlight {
                    path: info.path.clone(),
                    offset: req.offset,
                    end,
                });
            }
        }
        let max = self.class_bytes.last().copied().unwrap_or(0);
        if req.len > max {
            return Err(SubmitError::TooLarge { len: req.len, max });
        }
        let full = SubmitError::Full {
            in_flight: self.in_flight,
            limit: self.limit,
            len: req.len,
        };
        if self.in_flight >= self.limit {
            return Err(full);
        }
        let class = self
            .class_bytes
            .iter()
            .position(|&b| b >= req.len)
            .ok_or(full.clone())?;
        let index = (class..self.class_bytes.len())
            .find_map(|c| self.free[c].pop())
            .ok_or(full)?;
        let slot = &mut self.slots[index as usize];
        assert_eq!(slot.state, SlotState::Free, "free list holds a busy slot");
        slot.state = SlotState::Queued;
        slot.kind = kind;
        slot.disk = req.disk;
        slot.offset = req.offset;
        slot.len = req.len;
        slot.deadline = req.deadline;
        if let Some(d) = data {
            // A free slot always holds its buffer, and the class fits req.len.
            slot.buf
                .as_mut()
                .expect("free slot holds its buffer")
                .as_mut_slice()[..d.len()]
                .copy_from_slice(d);
        }
        let generation = slot.generation;
        self.in_flight += 1;
        self.busy.push(index);
        Ok(IoId { index, generation })
    }

    /// The slot `id` names, if it is current.
    pub fn get(&self, id: IoId) -> Option<&Slot> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.state != SlotState::Free)
    }

    /// Mutable access to the slot `id` names, if it is current.
    pub fn get_mut(&mut self, id: IoId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.state != SlotState::Free)
    }

    /// The id of slot `index` in its current generation.
    pub fn id_of(&self, index: u32) -> IoId {
        IoId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// Marks queued slots as handed to the device.
    pub fn mark_in_flight(&mut self, id: IoId) {
        if let Some(s) = self.get_mut(id) {
            if s.state == SlotState::Queued {
                s.state = SlotState::InFlight;
            }
        }
    }

    fn free_slot(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        assert!(
            slot.buf.is_some(),
            "a slot is freed only once its buffer is back"
        );
        slot.state = SlotState::Free;
        slot.generation = slot.generation.wrapping_add(1);
        self.free[slot.class].push(index);
        // The busy list is short (operations in flight plus unreleased reads).
        if let Some(pos) = self.busy.iter().position(|&i| i == index) {
            self.busy.swap_remove(pos);
        }
    }

    /// Records the device's result for `id` (bytes transferred, or -errno). Returns the
    /// completion to report, or `None` for a zombie's late completion (reaped silently).
    pub fn complete(&mut self, id: IoId, res: i32) -> Option<Completion> {
        let slot = self.slots.get_mut(id.index as usize)?;
        assert_eq!(
            slot.generation, id.generation,
            "completion for a slot that was reused"
        );
        let (kind, len, state) = (slot.kind, slot.len, slot.state);
        assert!(
            matches!(
                state,
                SlotState::InFlight | SlotState::Zombie | SlotState::Queued
            ),
            "completion in state {state:?}"
        );
        self.in_flight -= 1;
        if state == SlotState::Zombie {
            self.free_slot(id.index);
            return None;
        }
        let outcome = match res {
            r if r == -libc::ECANCELED => IoOutcome::Canceled,
            r if r < 0 => IoOutcome::Failed { errno: -r },
            r if usize::try_from(r).is_ok_and(|n| n == len) => IoOutcome::Done,
            r => IoOutcome::Short {
                transferred: usize::try_from(r).unwrap_or(0),
            },
        };
        if kind == IoKind::Read && outcome == IoOutcome::Done {
            self.slots[id.index as usize].state = SlotState::Completed;
        } else {
            self.free_slot(id.index);
        }
        Some(Completion { id, kind, outcome })
    }

    /// Reports every in-flight operation whose deadline is at or before `now` as timed out
    /// and turns its slot into a zombie.
    pub fn expire(&mut self, now: Time, out: &mut Vec<Completion>) {
        for &index in &self.busy {
            let slot = &mut self.slots[index as usize];
            if matches!(slot.state, SlotState::InFlight | SlotState::Queued) && slot.deadline <= now
            {
                slot.state = SlotState::Zombie;
                let id = IoId {
                    index,
                    generation: slot.generation,
                };
                out.push(Completion {
                    id,
                    kind: slot.kind,
                    outcome: IoOutcome::TimedOut,
                });
            }
        }
    }

    /// Frees a completed read.
    pub fn release(&mut self, id: IoId) {
        if self
            .get(id)
            .is_some_and(|s| s.state == SlotState::Completed)
        {
            self.free_slot(id.index);
        }
    }

    /// Data of a completed read.
    pub fn read_data(&self, id: IoId) -> Option<&[u8]> {
        let s = self.get(id).filter(|s| s.state == SlotState::Completed)?;
        s.buf.as_ref().map(|b| &b.as_slice()[..s.len])
    }

    /// The earliest deadline among queued and in-flight operations.
    pub fn next_deadline(&self) -> Option<Time> {
        self.busy
            .iter()
            .map(|&i| &self.slots[i as usize])
            .filter(|s| matches!(s.state, SlotState::InFlight | SlotState::Queued))
            .map(|s| s.deadline)
            .min()
    }

    /// Slot by index (for backends building device requests).
    pub fn slot_mut(&mut self, index: u32) -> &mut Slot {
        &mut self.slots[index as usize]
    }

    /// Puts a buffer back into a slot (sync backend: the worker returns it).
    pub fn return_buffer(&mut self, id: IoId, buf: AlignedBuf) {
        let slot = &mut self.slots[id.index as usize];
        assert_eq!(
            slot.generation, id.generation,
            "buffer returned to a reused slot"
        );
        assert!(slot.buf.is_none(), "slot already has its buffer");
        slot.buf = Some(buf);
    }

    /// Cancels a queued operation that could not be handed to the device (frees its slot).
    pub fn unqueue(&mut self, id: IoId) {
        if self.get(id).is_some_and(|s| s.state == SlotState::Queued) {
            self.in_flight -= 1;
            self.free_slot(id.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::DeviceKind;

    fn disk() -> DiskInfo {
        DiskInfo {
            path: "/x".into(),
            kind: DeviceKind::File,
            io_align: 512,
            size_bytes: 1 << 20,
        }
    }

    fn req(offset: u64, len: usize, deadline: u64) -> IoRequest {
        IoRequest {
            disk: DiskId(0),
            offset,
            len,
            deadline: Time::from_nanos(deadline),
        }
    }

    #[test]
    fn classes_limits_and_generations() {
        let mut t = SlotTable::new(&[(4096, 2), (8192, 1)], 3);
        let d = disk();
        let a = t
            .alloc(IoKind::Read, req(0, 512, 10), Some(&d), None)
            .unwrap();
        let b = t
            .alloc(IoKind::Read, req(0, 8192, 10), Some(&d), None)
            .unwrap();
        let c = t
            .alloc(IoKind::Write, req(0, 4096, 10), Some(&d), None)
            .unwrap();
        assert!(matches!(
            t.alloc(IoKind::Read, req(0, 512, 10), Some(&d), None),
            Err(SubmitError::Full { .. })
        ));
        assert!(matches!(
            t.alloc(IoKind::Read, req(1, 512, 10), Some(&d), None),
            Err(SubmitError::Unaligned { .. })
        ));
        assert!(matches!(
            t.alloc(IoKind::Read, req(1 << 20, 512, 10), Some(&d), None),
            Err(SubmitError::PastEnd { .. })
        ));
        assert!(matches!(
            t.alloc(IoKind::Read, req(0, 16384, 10), Some(&d), None),
            Err(SubmitError::TooLarge { .. })
        ));
        assert_eq!(t.complete(a, 512).unwrap().outcome, IoOutcome::Done);
        assert!(t.read_data(a).is_some());
        t.release(a);
        assert!(t.read_data(a).is_none(), "stale id after release");
        let a2 = t
            .alloc(IoKind::Read, req(0, 512, 10), Some(&d), None)
            .unwrap();
        assert_ne!(a, a2);
        assert_eq!(
            t.complete(c, -libc::EIO).unwrap().outcome,
            IoOutcome::Failed { errno: libc::EIO }
        );
        assert_eq!(
            t.complete(b, 100).unwrap().outcome,
            IoOutcome::Short { transferred: 100 }
        );
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn overlapping_write_refused_while_an_older_one_may_land() {
        let mut t = SlotTable::new(&[(4096, 4)], 8);
        let d = disk();
        let w = t
            .alloc(
                IoKind::Write,
                req(512, 1024, 100),
                Some(&d),
                Some(&[0u8; 1024]),
            )
            .unwrap();
        t.mark_in_flight(w);
        let mut out = Vec::new();
        t.expire(Time::from_nanos(100), &mut out);
        assert!(out[0].may_land_later());
        assert!(matches!(
            t.alloc(
                IoKind::Write,
                req(1024, 512, 200),
                Some(&d),
                Some(&[0u8; 512])
            ),
            Err(SubmitError::WriteInFlight { .. })
        ));
        // Reads and disjoint writes go ahead.
        assert!(t
            .alloc(IoKind::Read, req(512, 512, 200), Some(&d), None)
            .is_ok());
        assert!(t
            .alloc(
                IoKind::Write,
                req(2048, 512, 200),
                Some(&d),
                Some(&[0u8; 512])
            )
            .is_ok());
        // Once the device answered the old write, the range is writable again.
        assert!(t.complete(w, 1024).is_none());
        assert!(t
            .alloc(
                IoKind::Write,
                req(1024, 512, 200),
                Some(&d),
                Some(&[0u8; 512])
            )
            .is_ok());
    }

    #[test]
    fn timed_out_slot_is_kept_until_reaped() {
        let mut t = SlotTable::new(&[(4096, 1)], 4);
        let d = disk();
        let w = t
            .alloc(IoKind::Write, req(0, 512, 100), Some(&d), None)
            .unwrap();
        t.mark_in_flight(w);
        let mut out = Vec::new();
        t.expire(Time::from_nanos(99), &mut out);
        assert!(out.is_empty());
        t.expire(Time::from_nanos(100), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].may_land_later());
        // The only buffer is still owned by the device: nothing can be started.
        assert!(matches!(
            t.alloc(IoKind::Read, req(0, 512, 10), Some(&d), None),
            Err(SubmitError::Full { .. })
        ));
        assert_eq!(t.next_deadline(), None);
        assert!(
            t.complete(w, 512).is_none(),
            "late completion is reaped silently"
        );
        assert_eq!(t.in_flight(), 0);
        assert!(t
            .alloc(IoKind::Read, req(0, 512, 10), Some(&d), None)
            .is_ok());
    }
}
