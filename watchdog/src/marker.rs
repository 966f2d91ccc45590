//! The armed marker: a restart of the daemon never un-fences a pending watchdog reset.
//!
//! Before a watchdog is opened (armed), a marker file is created in a directory that a reboot
//! clears (`/run/tenure` in production). It is removed only after a clean disarm. A process
//! that finds a marker left by a process that is gone — its predecessor died while armed, so
//! the watchdog is counting down to a reset — must not open or feed the watchdog: feeding it
//! would cancel the fence that other hosts rely on when they take its leases after
//! host-dead time.
//!
//! Invariants:
//! - The marker exists whenever the watchdog may be armed (created before the open, removed
//!   after the magic close), so a crash at any point leaves it behind.
//! - A marker from an earlier boot (boot id differs) is stale and replaced: the reset it
//!   guarded has happened.
//! - The check and the creation are one `O_EXCL` create, so two daemons starting at once
//!   cannot both pass.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// File name of the marker inside its directory.
pub const MARKER_FILE: &str = "watchdog-armed";

/// What the marker records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MarkerContent {
    /// Pid of the process that armed the watchdog.
    pub pid: i32,
    /// Its start time (/proc/PID/stat field 22, clock ticks since boot): tells pid reuse apart.
    pub pid_start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` at arming time.
    pub boot_id: String,
    /// The watchdog (device path or emulator socket).
    pub watchdog: String,
    /// Wall-clock arming time, ms since the Unix epoch.
    pub armed_at_unix_ms: u64,
}

/// Why arming is refused.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// A predecessor died while its watchdog was armed; a reset is pending.
    #[error("a reset is pending: pid {} armed {} at unix ms {} and died without disarming it (marker {}); this process must not feed it. Wait for the reset, or see docs/watchdog.md \"Pending fence\"", .content.pid, .content.watchdog, .content.armed_at_unix_ms, .path.display())]
    PendingFence {
        /// The marker path.
        path: PathBuf,
        /// What it says.
        content: MarkerContent,
    },
    /// Another live process has the watchdog armed.
    #[error("watchdog {} is armed by pid {}, which is still running (marker {})", .content.watchdog, .content.pid, .path.display())]
    InUse {
        /// The marker path.
        path: PathBuf,
        /// What it says.
        content: MarkerContent,
    },
    /// The marker exists but cannot be read or parsed. Treated as a pending fence (never
    /// as permission to feed); the operator decides.
    #[error("marker {} is unreadable ({reason}); treating it as a pending fence", .path.display())]
    Unreadable {
        /// The marker path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// File system failure.
    #[error("marker {}: {source}", .path.display())]
    Io {
        /// The marker path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// The marker of this process's armed watchdog. Dropping it leaves the file in place (the
/// watchdog may still be armed); only [`ArmedMarker::clear`] removes it.
#[derive(Debug)]
pub struct ArmedMarker {
    path: PathBuf,
}

/// Current boot id (empty when unreadable, which makes every marker look current: safe).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Start time of `pid` in clock ticks since boot, if it is running. A zombie (exited, not yet
/// reaped by its parent) is not running: it holds nothing and never runs again.
pub fn pid_start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the ')' that ends comm: field 3 (state) first, field 22 (start time) 20th.
    let mut rest = s[s.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

impl ArmedMarker {
    /// Checks for a pending fence and creates the marker for `watchdog` in `dir` (created if
    /// missing). Call before opening the watchdog.
    pub fn create(dir: &Path, watchdog: &str) -> Result<Self, MarkerError> {
        Self::create_after(dir, watchdog, None)
    }

    /// [`ArmedMarker::create`], except that the marker of `predecessor` (pid, start ticks) —
    /// a tenured of this boot that died while armed, whose state this process adopts under
    /// the adoption rule (docs/operations.md "Restart after a crash") — is taken over instead
    /// of refused: the fence it stands for is not needed because this process goes on renewing
    /// within the deadlines the predecessor kept. Any other marker is refused as by `create`.
    pub fn create_after(
        dir: &Path,
        watchdog: &str,
        predecessor: Option<(i32, u64)>,
    ) -> Result<Self, MarkerError> {
        let path = dir.join(MARKER_FILE);
        let io = |source| MarkerError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let me = std::process::id() as i32;
        let content = MarkerContent {
            pid: me,
            pid_start_ticks: pid_start_ticks(me).unwrap_or(0),
            boot_id: boot_id(),
            watchdog: watchdog.to_owned(),
            armed_at_unix_ms: crate::unix_ms(),
        };
        let body = serde_json::to_vec(&content).map_err(|e| io(std::io::Error::other(e)))?;
        // Two rounds at most: the second after removing a stale marker from an earlier boot.
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io)?;
                    sync_dir(dir).map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let existing = read_marker(&path)?;
                    if existing.boot_id != content.boot_id && !existing.boot_id.is_empty() {
                        std::fs::remove_file(&path).map_err(io)?;
                        continue;
                    }
                    if pid_start_ticks(existing.pid) == Some(existing.pid_start_ticks) {
                        return Err(MarkerError::InUse {
                            path,
                            content: existing,
                        });
                    }
                    if predecessor == Some((existing.pid, existing.pid_start_ticks))
                        && existing.boot_id == content.boot_id
                        && existing.watchdog == content.watchdog
                    {
                        replace(dir, &path, &body).map_err(io)?;
                        return Ok(Self { path });
                    }
                    return Err(MarkerError::PendingFence {
                        path,
                        content: existing,
                    });
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(MarkerError::Unreadable {
            path,
            reason: "it reappeared while being replaced".into(),
        })
    }

    /// Takes over the marker of `from` (pid, start ticks), a running daemon that hands its
    /// armed watchdog over to this process (a planned upgrade): rewritten to name this
    /// process. Refused unless the marker names exactly `from`.
    pub fn take_from(dir: &Path, watchdog: &str, from: (i32, u64)) -> Result<Self, MarkerError> {
        let path = dir.join(MARKER_FILE);
        let io = |source| MarkerError::Io {
            path: path.clone(),
            source,
        };
        let existing = read_marker(&path)?;
        if (existing.pid, existing.pid_start_ticks) != from || existing.watchdog != watchdog {
            return Err(MarkerError::Unreadable {
                path,
                reason: format!(
                    "it names pid {} ({}), not the predecessor pid {} handing over {watchdog}",
                    existing.pid, existing.watchdog, from.0
                ),
            });
        }
        let me = std::process::id() as i32;
        let content = MarkerContent {
            pid: me,
            pid_start_ticks: pid_start_ticks(me).unwrap_or(0),
            armed_at_unix_ms: existing.armed_at_unix_ms,
            ..existing
        };
        let body = serde_json::to_vec(&content).map_err(|e| io(std::io::Error::other(e)))?;
        replace(dir, &path, &body).map_err(io)?;
        Ok(Self { path })
    }

    /// Removes the marker after a clean disarm.
    pub fn clear(self) -> Result<(), MarkerError> {
        std::fs::remove_file(&self.path).map_err(|source| MarkerError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.path.parent() {
            let _ = sync_dir(dir);
        }
        Ok(())
    }

    /// The marker's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a marker file; an unparsable one is [`MarkerError::Unreadable`].
pub fn read_marker(path: &Path) -> Result<MarkerContent, MarkerError> {
    let bytes = std::fs::read(path).map_err(|source| MarkerError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| MarkerError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Replaces the marker at `path` by `body` at once (a durable temporary file renamed over it).
fn replace(dir: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{MARKER_FILE}.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(body).and_then(|()| f.sync_all())?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_left_by_a_dead_process_is_a_pending_fence() {
        let dir = tempfile::tempdir().unwrap();
        let m = ArmedMarker::create(dir.path(), "/dev/watchdog0").unwrap();
        // Same live process again: in use.
        assert!(matches!(
            ArmedMarker::create(dir.path(), "/dev/watchdog0"),
            Err(MarkerError::InUse { .. })
        ));
        // Forge a dead owner: a child that has exited.
        let mut c: MarkerContent = read_marker(m.path()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        c.pid = child.id() as i32;
        child.wait().unwrap();
        std::fs::write(m.path(), serde_json::to_vec(&c).unwrap()).unwrap();
        let e = ArmedMarker::create(dir.path(), "/dev/watchdog0").unwrap_err();
        assert!(matches!(e, MarkerError::PendingFence { .. }), "{e}");
        assert!(e.to_string().contains("reset is pending"));
        // A marker from another boot is stale and replaced.
        c.boot_id = "00000000-0000-0000-0000-000000000000".into();
        std::fs::write(m.path(), serde_json::to_vec(&c).unwrap()).unwrap();
        let fresh = ArmedMarker::create(dir.path(), "/dev/watchdog0").unwrap();
        assert_eq!(
            read_marker(fresh.path()).unwrap().pid,
            std::process::id() as i32
        );
        fresh.clear().unwrap();
        assert!(!dir.path().join(MARKER_FILE).exists());
        // Garbage is never permission to feed.
        std::fs::write(dir.path().join(MARKER_FILE), b"{not json").unwrap();
        assert!(matches!(
            ArmedMarker::create(dir.path(), "x"),
            Err(MarkerError::Unreadable { .. })
        ));
    }

    /// A successor adopting a dead predecessor's state takes over exactly that marker: not a
    /// marker of another dead process, nor of the same pid with another start time.
    #[test]
    fn only_the_named_predecessors_marker_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let m = ArmedMarker::create(dir.path(), "emu").unwrap();
        let mut c: MarkerContent = read_marker(m.path()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        c.pid = child.id() as i32;
        c.pid_start_ticks = 12345;
        child.wait().unwrap();
        std::fs::write(m.path(), serde_json::to_vec(&c).unwrap()).unwrap();
        for wrong in [None, Some((c.pid, 1)), Some((c.pid + 1, 12345))] {
            assert!(
                matches!(
                    ArmedMarker::create_after(dir.path(), "emu", wrong),
                    Err(MarkerError::PendingFence { .. })
                ),
                "{wrong:?}"
            );
        }
        // Another watchdog than the predecessor's: refused too.
        assert!(ArmedMarker::create_after(dir.path(), "other", Some((c.pid, 12345))).is_err());
        let taken = ArmedMarker::create_after(dir.path(), "emu", Some((c.pid, 12345))).unwrap();
        assert_eq!(
            read_marker(taken.path()).unwrap().pid,
            std::process::id() as i32
        );
        // Ours now: a second take-over is "in use".
        assert!(matches!(
            ArmedMarker::create_after(dir.path(), "emu", Some((c.pid, 12345))),
            Err(MarkerError::InUse { .. })
        ));
    }

    /// A zombie (exited, not reaped) is not running: its marker is a pending fence.
    #[test]
    fn a_zombie_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not reaped yet: a zombie once it exited.
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(pid_start_ticks(pid), None);
        assert!(pid_start_ticks(std::process::id() as i32).is_some());
        child.wait().unwrap();
    }
}
