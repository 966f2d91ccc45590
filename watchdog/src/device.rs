//! The Linux watchdog device driver (`/dev/watchdog`, `/dev/watchdogN`).
//!
//! Opening a watchdog device arms it. This driver then programs the fire timeout
//! (WDIOC_SETTIMEOUT) and reads it back (WDIOC_GETTIMEOUT): a device that cannot fire at the
//! requested time is refused and disarmed at once. Keepalives use WDIOC_KEEPALIVE.
//!
//! Invariants:
//! - The magic close ('V' written, then close) happens **only** in [`DeviceWatchdog::disarm`].
//!   Dropping a `DeviceWatchdog` — a panic, an error path, a crash — closes it uncleanly and
//!   the timer stays armed: a half-dead daemon must still be fenced.
//! - iTCO_wdt fires only after its timer runs out twice, so it is programmed with half the
//!   fire timeout (rounded down: it fires earlier, never later).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// WDIOF_SETTIMEOUT: the driver accepts WDIOC_SETTIMEOUT.
pub const WDIOF_SETTIMEOUT: u32 = 0x0080;
/// WDIOF_MAGICCLOSE: the driver honours the magic close character.
pub const WDIOF_MAGICCLOSE: u32 = 0x0100;
/// WDIOF_KEEPALIVEPING: the driver accepts WDIOC_KEEPALIVE.
pub const WDIOF_KEEPALIVEPING: u32 = 0x8000;

/// What WDIOC_GETSUPPORT reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The driver's identity string (e.g. "iTCO_wdt", "Software Watchdog").
    pub identity: String,
    /// Firmware version.
    pub firmware_version: u32,
    /// WDIOF_* option bits.
    pub options: u32,
}

impl Identity {
    fn from_info(info: &sys::WatchdogInfo) -> Self {
        let end = info.identity.iter().position(|&b| b == 0).unwrap_or(32);
        Self {
            identity: String::from_utf8_lossy(&info.identity[..end]).into_owned(),
            firmware_version: info.firmware_version,
            options: info.options,
        }
    }

    /// True for Intel TCO watchdogs, which fire after two timeouts.
    pub fn fires_after_two_timeouts(&self) -> bool {
        self.identity.contains("iTCO")
    }

    /// Names of the option bits this crate cares about, for display.
    pub fn option_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.options & WDIOF_SETTIMEOUT != 0 {
            v.push("settimeout");
        }
        if self.options & WDIOF_MAGICCLOSE != 0 {
            v.push("magicclose");
        }
        if self.options & WDIOF_KEEPALIVEPING != 0 {
            v.push("keepaliveping");
        }
        v
    }
}

/// The timeout to program so that a device with `identity` fires after `fire_timeout_s`.
pub fn programmed_timeout_s(identity: &Identity, fire_timeout_s: u32) -> u32 {
    if identity.fires_after_two_timeouts() {
        fire_timeout_s / 2
    } else {
        fire_timeout_s
    }
}

/// A process holding a device open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Its pid.
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`), if readable.
    pub comm: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.comm, self.pid)
    }
}

fn holders_text(h: &[Holder]) -> String {
    if h.is_empty() {
        "no process found holding it (another namespace, or it closed since)".into()
    } else {
        let v: Vec<String> = h.iter().map(ToString::to_string).collect();
        format!("held open by {}", v.join(", "))
    }
}

/// Errors of the device driver. Kernel results are external input: every failure is typed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No such device.
    #[error("watchdog device {path} does not exist")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The device is open in another process (watchdogs allow one opener).
    #[error("watchdog device {path} is busy: {}", holders_text(holders))]
    Busy {
        /// The path.
        path: PathBuf,
        /// Who holds it, found through /proc/*/fd.
        holders: Vec<Holder>,
    },
    /// Any other failure to open.
    #[error("cannot open watchdog device {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An ioctl or write failed.
    #[error("watchdog device {path}: {what} failed: {errno}")]
    Ioctl {
        /// The path.
        path: PathBuf,
        /// Which call.
        what: &'static str,
        /// The errno.
        errno: nix::Error,
    },
    /// The device cannot fire at the requested time (refused; it was disarmed again).
    #[error("watchdog device {path} ({identity}) cannot fire after {fire_timeout_s} s: asked for a timeout of {requested_s} s, it runs with {actual_s} s{}", if *disarmed { "; disarmed again" } else { "; the magic close failed, it may stay armed" })]
    TimeoutUnsupported {
        /// The path.
        path: PathBuf,
        /// Driver identity.
        identity: String,
        /// Requested fire timeout.
        fire_timeout_s: u32,
        /// Timeout programmed (half the fire timeout for iTCO).
        requested_s: u32,
        /// What the device reports.
        actual_s: i64,
        /// Whether the magic close succeeded.
        disarmed: bool,
    },
    /// A fire timeout this driver refuses before touching the device.
    #[error("fire timeout {fire_timeout_s} s is out of range ({min_s}..={max_s} s)")]
    BadFireTimeout {
        /// Requested.
        fire_timeout_s: u32,
        /// Smallest allowed.
        min_s: u32,
        /// Largest allowed.
        max_s: u32,
    },
}

/// Smallest fire timeout accepted (iTCO needs an even value ≥ 2 for a half of at least 1).
pub const FIRE_TIMEOUT_MIN_S: u32 = 1;
/// Largest fire timeout accepted (sanlock's W is 60; hardware rarely goes past 600).
pub const FIRE_TIMEOUT_MAX_S: u32 = 3600;

/// An armed watchdog device.
#[derive(Debug)]
pub struct DeviceWatchdog {
    file: Option<File>,
    path: PathBuf,
    identity: Identity,
    fire_timeout_s: u32,
    programmed_s: u32,
    use_ioctl_keepalive: bool,
}

fn ioctl_err(path: &Path, what: &'static str, errno: nix::Error) -> DeviceError {
    DeviceError::Ioctl {
        path: path.to_owned(),
        what,
        errno,
    }
}

impl DeviceWatchdog {
    /// Opens (arms) `path` and programs it to fire `fire_timeout_s` seconds after the last
    /// keepalive. On any failure after the open the device is closed with the magic
    /// character, so a refused device is not left armed.
    pub fn open(path: &Path, fire_timeout_s: u32) -> Result<Self, DeviceError> {
        if !(FIRE_TIMEOUT_MIN_S..=FIRE_TIMEOUT_MAX_S).contains(&fire_timeout_s) {
            return Err(DeviceError::BadFireTimeout {
                fire_timeout_s,
                min_s: FIRE_TIMEOUT_MIN_S,
                max_s: FIRE_TIMEOUT_MAX_S,
            });
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => DeviceError::NotFound {
                    path: path.to_owned(),
                },
                Some(libc::EBUSY) => DeviceError::Busy {
                    path: path.to_owned(),
                    holders: holders_of(path),
                },
                _ => DeviceError::Open {
                    path: path.to_owned(),
                    source: e,
                },
            })?;
        // From here on the device is armed: every error path disarms it first.
        let mut wd = Self {
            file: Some(file),
            path: path.to_owned(),
            identity: Identity {
                identity: String::new(),
                firmware_version: 0,
                options: 0,
            },
            fire_timeout_s,
            programmed_s: 0,
            use_ioctl_keepalive: true,
        };
        match wd.program() {
            Ok(()) => Ok(wd),
            Err(e) => {
                let disarmed = wd.magic_close().is_ok();
                Err(match e {
                    DeviceError::TimeoutUnsupported {
                        path,
                        identity,
                        fire_timeout_s,
                        requested_s,
                        actual_s,
                        ..
                    } => DeviceError::TimeoutUnsupported {
                        path,
                        identity,
                        fire_timeout_s,
                        requested_s,
                        actual_s,
                        disarmed,
                    },
                    other => other,
                })
            }
        }
    }

    /// The open device of a daemon that hands over to its successor ([`DeviceWatchdog::fd`]
    /// of the predecessor, passed over a socket): programmed again (which pings it). Never
    /// closed with the magic character on failure: the predecessor still holds it armed.
    pub fn from_fd(
        path: &Path,
        fd: std::os::fd::OwnedFd,
        fire_timeout_s: u32,
    ) -> Result<Self, DeviceError> {
        let mut wd = Self {
            file: Some(File::from(fd)),
            path: path.to_owned(),
            identity: Identity {
                identity: String::new(),
                firmware_version: 0,
                options: 0,
            },
            fire_timeout_s,
            programmed_s: 0,
            use_ioctl_keepalive: true,
        };
        wd.program()?;
        Ok(wd)
    }

    /// A duplicate of the open device (for a successor: the same open file, so the device
    /// stays armed while either holds it).
    pub fn fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.file().as_fd().try_clone_to_owned()
    }

    fn file(&self) -> &File {
        // The file is taken only by magic_close/disarm, which consume or end the handle.
        self.file
            .as_ref()
            .expect("device file present until closed")
    }

    fn program(&mut self) -> Result<(), DeviceError> {
        let info = sys::get_support(self.file())
            .map_err(|e| ioctl_err(&self.path, "WDIOC_GETSUPPORT", e))?;
        self.identity = Identity::from_info(&info);
        self.use_ioctl_keepalive = self.identity.options & WDIOF_KEEPALIVEPING != 0;
        let want = programmed_timeout_s(&self.identity, self.fire_timeout_s);
        self.programmed_s = want;
        let refuse = |actual: i64| DeviceError::TimeoutUnsupported {
            path: self.path.clone(),
            identity: self.identity.identity.clone(),
            fire_timeout_s: self.fire_timeout_s,
            requested_s: want,
            actual_s: actual,
            disarmed: false,
        };
        if want == 0 {
            return Err(refuse(0));
        }
        if self.identity.options & WDIOF_SETTIMEOUT != 0 {
            // SETTIMEOUT also pings. Drivers may round: the read-back below is the judge.
            sys::set_timeout(self.file(), want as i32).map_err(|e| match e {
                nix::Error::EINVAL => refuse(-1),
                e => ioctl_err(&self.path, "WDIOC_SETTIMEOUT", e),
            })?;
        }
        let actual = sys::get_timeout(self.file())
            .map_err(|e| ioctl_err(&self.path, "WDIOC_GETTIMEOUT", e))?;
        if actual != want as i32 {
            return Err(refuse(i64::from(actual)));
        }
        Ok(())
    }

    /// Feeds the device.
    pub fn keepalive(&mut self) -> Result<(), DeviceError> {
        if self.use_ioctl_keepalive {
            sys::keepalive(self.file()).map_err(|e| ioctl_err(&self.path, "WDIOC_KEEPALIVE", e))
        } else {
            // Drivers without KEEPALIVEPING are fed by any write (the watchdog API).
            let mut f = self.file();
            f.write_all(b"\0")
                .map_err(|e| ioctl_err(&self.path, "keepalive write", errno_of(&e)))
        }
    }

    /// Seconds left before the device fires, where the driver can tell.
    pub fn time_left_s(&self) -> Option<i32> {
        sys::get_time_left(self.file()).ok()
    }

    /// The identity the driver reported.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The timeout programmed into the device (half the fire timeout for iTCO).
    pub fn programmed_timeout_s(&self) -> u32 {
        self.programmed_s
    }

    /// The fire timeout this handle was opened with.
    pub fn fire_timeout_s(&self) -> u32 {
        self.fire_timeout_s
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn magic_close(&mut self) -> Result<(), DeviceError> {
        let Some(mut f) = self.file.take() else {
            return Ok(());
        };
        let r = f
            .write_all(b"V")
            .map_err(|e| ioctl_err(&self.path, "magic close write", errno_of(&e)));
        drop(f);
        r
    }

    /// Disarms cleanly: writes the magic character and closes. Only call this when nothing
    /// needs fencing any more (every lockspace left or cleared).
    pub fn disarm(mut self) -> Result<(), DeviceError> {
        self.magic_close()
    }
}

fn errno_of(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Every process whose open file descriptors include `path` (scans /proc/*/fd; processes
/// that vanish or cannot be read are skipped).
pub fn holders_of(path: &Path) -> Vec<Holder> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target));
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_else(|_| "?".into());
            out.push(Holder { pid, comm });
        }
    }
    out
}

/// What sysfs says about a watchdog, read without opening (and so without arming) it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SysfsInfo {
    /// `identity`.
    pub identity: Option<String>,
    /// `timeout` (seconds).
    pub timeout_s: Option<u32>,
    /// `min_timeout`.
    pub min_timeout_s: Option<u32>,
    /// `max_timeout`.
    pub max_timeout_s: Option<u32>,
    /// `nowayout`: once opened it cannot be stopped.
    pub nowayout: Option<bool>,
    /// `state` ("active" / "inactive").
    pub state: Option<String>,
}

/// Reads `/sys/class/watchdog/<name>/` for a device path `/dev/<name>`.
pub fn sysfs_info(path: &Path) -> Option<SysfsInfo> {
    let name = path.file_name()?.to_str()?;
    let dir = Path::new("/sys/class/watchdog").join(name);
    if !dir.is_dir() {
        return None;
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let num = |f: &str| read(f).and_then(|s| s.parse().ok());
    Some(SysfsInfo {
        identity: read("identity"),
        timeout_s: num("timeout"),
        min_timeout_s: num("min_timeout"),
        max_timeout_s: num("max_timeout"),
        nowayout: read("nowayout").map(|s| s == "1"),
        state: read("state"),
    })
}

/// Candidate device paths in `dev_dir`: `watchdog`, then `watchdog0`, `watchdog1`, … in
/// numeric order.
pub fn candidates(dev_dir: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dev_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let n = name.strip_prefix("watchdog")?.parse::<u32>().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    numbered.sort();
    let mut out = Vec::new();
    let plain = dev_dir.join("watchdog");
    if plain.exists() {
        out.push(plain);
    }
    out.extend(numbered.into_iter().map(|(_, p)| p));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(s: &str) -> Identity {
        Identity {
            identity: s.into(),
            firmware_version: 0,
            options: WDIOF_SETTIMEOUT | WDIOF_MAGICCLOSE | WDIOF_KEEPALIVEPING,
        }
    }

    #[test]
    fn itco_gets_half_the_fire_timeout_rounded_down() {
        assert_eq!(programmed_timeout_s(&ident("iTCO_wdt"), 60), 30);
        assert_eq!(programmed_timeout_s(&ident("iTCO_wdt"), 7), 3);
        assert_eq!(programmed_timeout_s(&ident("Software Watchdog"), 60), 60);
        assert_eq!(
            ident("x").option_names(),
            vec!["settimeout", "magicclose", "keepaliveping"]
        );
    }

    #[test]
    fn missing_device_and_bad_timeouts_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watchdog7");
        assert!(matches!(
            DeviceWatchdog::open(&p, 10),
            Err(DeviceError::NotFound { .. })
        ));
        assert!(matches!(
            DeviceWatchdog::open(&p, 0),
            Err(DeviceError::BadFireTimeout { .. })
        ));
        // A regular file is not a watchdog: GETSUPPORT fails with ENOTTY, typed.
        std::fs::write(&p, b"").unwrap();
        let e = DeviceWatchdog::open(&p, 10).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::Ioctl {
                    what: "WDIOC_GETSUPPORT",
                    errno: nix::Error::ENOTTY,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn candidates_are_listed_in_numeric_order_and_holders_are_found() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["watchdog10", "watchdog2", "watchdog", "watchdogx", "other"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let c: Vec<String> = candidates(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(c, ["watchdog", "watchdog2", "watchdog10"]);
        let p = dir.path().join("watchdog2");
        let _held = File::open(&p).unwrap();
        let me = std::process::id() as i32;
        assert!(holders_of(&p).iter().any(|h| h.pid == me));
        assert!(holders_of(&dir.path().join("watchdog10")).is_empty());
    }
}
