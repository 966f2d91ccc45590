//! Fence records: why this host is about to be reset, written before the point of no return.
//!
//! When a lockspace is lost and its lease holders are not all dead, the watchdog will reset
//! the host. Before that can happen the daemon appends one compact record — which lockspace,
//! why, the last renewals with their latencies, which pids were signalled and which are still
//! alive — to a log on local persistent storage and fsyncs it, so `tenure why-reset` can
//! explain the reset after the reboot.
//!
//! Invariants:
//! - One record is one JSON line, at most [`RECORD_MAX_BYTES`]; lists are capped
//!   ([`RENEWALS_MAX`], [`PIDS_MAX`]) keeping the most recent entries, with a count of what
//!   was left out. Appending never grows the log past [`LOG_MAX_BYTES`]: the old log is kept
//!   as `fence.log.1` and a new one started.
//! - A record is on disk (file and, when created, directory fsync'd) when `append` returns Ok.
//! - Reading never panics on a damaged log (a reset can tear the last line): bad lines are
//!   reported with their line number.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// File name of the log in its directory.
pub const LOG_FILE: &str = "fence.log";
/// Name the previous log is kept under when the log is full.
pub const LOG_OLD_FILE: &str = "fence.log.1";
/// Longest record line.
pub const RECORD_MAX_BYTES: usize = 16 * 1024;
/// Largest log before it is rotated.
pub const LOG_MAX_BYTES: u64 = 1024 * 1024;
/// Renewals kept per record.
pub const RENEWALS_MAX: usize = 16;
/// Pids kept per list.
pub const PIDS_MAX: usize = 64;

/// One renewal attempt, as remembered by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenewalNote {
    /// Wall-clock start, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// How long it took (or until it was given up), ms.
    pub latency_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// The error, for failed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A fence record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceRecord {
    /// Wall-clock time of writing, ms since the Unix epoch.
    pub written_at_unix_ms: u64,
    /// Boot id when written (`why-reset` tells records of earlier boots apart).
    pub boot_id: String,
    /// The lockspace that was lost.
    pub lockspace: String,
    /// Our host id in it.
    pub host_id: u64,
    /// Our generation in it.
    pub generation: u64,
    /// One sentence: why it was lost.
    pub reason: String,
    /// The last renewals, oldest first.
    pub last_renewals: Vec<RenewalNote>,
    /// Renewals left out by the cap.
    #[serde(default)]
    pub renewals_omitted: usize,
    /// Pids that were sent a kill (kill path, SIGTERM or SIGKILL).
    pub pids_signalled: Vec<i32>,
    /// Pids still alive when the record was written.
    pub pids_alive: Vec<i32>,
    /// Pids left out of the two lists by the cap.
    #[serde(default)]
    pub pids_omitted: usize,
    /// Watchdog in use (device path, emulator socket or "none").
    pub watchdog: String,
    /// Seconds after which the watchdog fires once feeding stops.
    pub fire_timeout_s: u32,
}

impl FenceRecord {
    /// Applies the caps (keeps the most recent renewals and the first pids).
    pub fn capped(mut self) -> Self {
        if self.last_renewals.len() > RENEWALS_MAX {
            let extra = self.last_renewals.len() - RENEWALS_MAX;
            self.last_renewals.drain(..extra);
            self.renewals_omitted += extra;
        }
        for list in [&mut self.pids_signalled, &mut self.pids_alive] {
            if list.len() > PIDS_MAX {
                self.pids_omitted += list.len() - PIDS_MAX;
                list.truncate(PIDS_MAX);
            }
        }
        for r in &mut self.last_renewals {
            if let Some(e) = &mut r.error {
                truncate_utf8(e, 256);
            }
        }
        truncate_utf8(&mut self.reason, 1024);
        truncate_utf8(&mut self.lockspace, 128);
        truncate_utf8(&mut self.watchdog, 512);
        self
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Errors of the fence log.
#[derive(Debug, thiserror::Error)]
pub enum FenceLogError {
    /// File system failure.
    #[error("fence log {}: {source}", .path.display())]
    Io {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// The fence log in a directory of local persistent storage (`/var/lib/tenure`).
#[derive(Debug, Clone)]
pub struct FenceLog {
    dir: PathBuf,
}

/// One line of the log as read back.
#[derive(Debug)]
pub enum LogLine {
    /// A good record.
    Record(Box<FenceRecord>),
    /// A line that does not parse (e.g. torn by the reset).
    Damaged {
        /// Which file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parser message.
        error: String,
    },
}

impl FenceLog {
    /// The log in `dir` (nothing is touched until the first append).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Path of the current log file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Appends `record` (capped) and fsyncs it.
    pub fn append(&self, record: FenceRecord) -> Result<(), FenceLogError> {
        let path = self.path();
        let io = |source| FenceLogError::Io {
            path: path.clone(),
            source,
        };
        let created_dir = !self.dir.exists();
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let mut line =
            serde_json::to_string(&record.capped()).map_err(|e| io(std::io::Error::other(e)))?;
        // The caps bound every field; a record past the limit is a bug in the caps.
        assert!(line.len() < RECORD_MAX_BYTES, "fence record over its cap");
        line.push('\n');
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size + line.len() as u64 > LOG_MAX_BYTES {
            std::fs::rename(&path, self.dir.join(LOG_OLD_FILE)).map_err(io)?;
        }
        let new_file = !path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        if new_file || created_dir {
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Every line of the previous and the current log, oldest first.
    pub fn read_all(&self) -> Result<Vec<LogLine>, FenceLogError> {
        let mut out = Vec::new();
        for name in [LOG_OLD_FILE, LOG_FILE] {
            let path = self.dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(FenceLogError::Io { path, source }),
            };
            for (i, l) in bytes.split(|&b| b == b'\n').enumerate() {
                if l.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                out.push(match serde_json::from_slice::<FenceRecord>(l) {
                    Ok(r) => LogLine::Record(Box::new(r)),
                    Err(e) => LogLine::Damaged {
                        file: path.clone(),
                        line: i + 1,
                        error: e.to_string(),
                    },
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> FenceRecord {
        FenceRecord {
            written_at_unix_ms: 1,
            boot_id: "b".into(),
            lockspace: "ls".into(),
            host_id: 3,
            generation: 7,
            reason: "renewal failed for 80 s (io timeout)".into(),
            last_renewals: (0..n as u64)
                .map(|i| RenewalNote {
                    at_unix_ms: i,
                    latency_ms: 10_000,
                    ok: false,
                    error: Some("I/O deadline passed".into()),
                })
                .collect(),
            renewals_omitted: 0,
            pids_signalled: (0..n as i32).collect(),
            pids_alive: vec![42],
            pids_omitted: 0,
            watchdog: "/dev/watchdog0".into(),
            fire_timeout_s: 60,
        }
    }

    #[test]
    fn records_round_trip_with_caps_and_torn_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = FenceLog::new(&dir.path().join("state"));
        log.append(record(3)).unwrap();
        log.append(record(200)).unwrap();
        // A reset tears a third line half-way.
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"written_at_unix_ms\": 5, \"bo").unwrap();
        let lines = log.read_all().unwrap();
        assert_eq!(lines.len(), 3);
        match &lines[0] {
            LogLine::Record(r) => assert_eq!(**r, record(3)),
            other => panic!("{other:?}"),
        }
        match &lines[1] {
            LogLine::Record(r) => {
                assert_eq!(r.last_renewals.len(), RENEWALS_MAX);
                assert_eq!(r.renewals_omitted, 200 - RENEWALS_MAX);
                assert_eq!(r.last_renewals.last().unwrap().at_unix_ms, 199);
                assert_eq!(r.pids_signalled.len(), PIDS_MAX);
                assert_eq!(r.pids_omitted, 200 - PIDS_MAX);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&lines[2], LogLine::Damaged { line: 3, .. }));
    }

    #[test]
    fn a_full_log_is_rotated_not_grown() {
        let dir = tempfile::tempdir().unwrap();
        let log = FenceLog::new(dir.path());
        let one = serde_json::to_string(&record(RENEWALS_MAX).capped())
            .unwrap()
            .len() as u64
            + 1;
        let n = LOG_MAX_BYTES / one + 2;
        for _ in 0..n {
            log.append(record(RENEWALS_MAX)).unwrap();
        }
        assert!(std::fs::metadata(log.path()).unwrap().len() <= LOG_MAX_BYTES);
        assert!(dir.path().join(LOG_OLD_FILE).exists());
        assert_eq!(log.read_all().unwrap().len() as u64, n);
    }
}
