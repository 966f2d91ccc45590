//! tenure-watchdog: self-fencing for tenure hosts (DESIGN.md "Watchdog", PROTOCOL.md
//! "Recovery").
//!
//! - [`device`]: the Linux `/dev/watchdog*` driver (set and verify the timeout, keepalive,
//!   magic close only on a clean disarm, iTCO halving, busy-device holders, probing).
//! - [`mux`]: the deadline multiplexer — one source per lockspace; the device is fed only
//!   while every source's renewal deadline lies more than one test interval ahead.
//! - [`emulated`]: the emulated watchdog process (kills a process group or cgroup when
//!   starved, records the firing) and its client; used by tests and the daemon's embedded
//!   default on machines without a watchdog.
//! - [`marker`]: the armed marker under /run — a restarted daemon never feeds a watchdog its
//!   predecessor left armed.
//! - [`fence`]: fence records written before the point of no return, for `tenure why-reset`.
//!
//! [`ArmedWatchdog`] puts marker and watchdog together in the only order that is safe
//! (marker before arming, disarm before clearing the marker); [`Feeder`] drives it from the
//! multiplexer. The crate stands alone: it knows nothing of lockspaces or disks.
//!
//! Glossary: *fire timeout* (W) — seconds from the last keepalive to the reset; *test
//! interval* — how often the feeder decides, and how early it stops feeding before a
//! deadline; *deadline* — a lockspace's renewal-fail time; *armed* — a watchdog that will
//! fire unless fed or cleanly disarmed.

pub mod device;
pub mod emulated;
pub mod fence;
pub mod marker;
pub mod mux;
pub mod sys;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use device::{DeviceError, DeviceWatchdog};
pub use emulated::{EmulatedError, EmulatedWatchdog};
pub use marker::{ArmedMarker, MarkerError};
pub use mux::{FeedDecision, Multiplexer, MuxError, SourceId, Withholding};

/// Wall-clock milliseconds since the Unix epoch, for records read by people (markers, fire
/// records); 0 if the clock is before 1970. Never used for deadlines.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which watchdog to arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogSpec {
    /// A Linux watchdog device.
    Device(PathBuf),
    /// An emulated watchdog listening on this socket.
    Emulated(PathBuf),
    /// No watchdog: nothing fences this host. For tests only; callers log it loudly.
    None,
}

impl std::fmt::Display for WatchdogSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchdogSpec::Device(p) => write!(f, "device {}", p.display()),
            WatchdogSpec::Emulated(p) => write!(f, "emulated at {}", p.display()),
            WatchdogSpec::None => write!(f, "none (NO FENCING)"),
        }
    }
}

/// Any failure to arm, feed or disarm.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device driver failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The emulated watchdog failed.
    #[error(transparent)]
    Emulated(#[from] EmulatedError),
    /// The armed marker forbids arming (a reset is pending) or failed.
    #[error(transparent)]
    Marker(#[from] MarkerError),
}

#[derive(Debug)]
enum Inner {
    Device(DeviceWatchdog),
    Emulated(EmulatedWatchdog),
    None,
}

/// An armed watchdog with its marker (see the crate docs for the order of operations).
/// Dropping it without [`ArmedWatchdog::disarm`] leaves it armed and the marker in place.
#[derive(Debug)]
pub struct ArmedWatchdog {
    inner: Inner,
    marker: Option<ArmedMarker>,
    spec: WatchdogSpec,
    fire_timeout_s: u32,
}

impl ArmedWatchdog {
    /// Creates the marker in `marker_dir` (refused while a reset is pending), then arms the
    /// watchdog to fire `fire_timeout_s` after the last keepalive.
    pub fn arm(
        spec: &WatchdogSpec,
        fire_timeout_s: u32,
        marker_dir: &Path,
    ) -> Result<Self, WatchdogError> {
        Self::arm_after(spec, fire_timeout_s, marker_dir, None)
    }

    /// [`ArmedWatchdog::arm`] taking over the marker of `predecessor` (pid, start ticks), a
    /// daemon of this boot that died armed and whose state is adopted
    /// ([`marker::ArmedMarker::create_after`]). The device is opened again and fed at once:
    /// it was never disarmed, so it fires at the predecessor's deadline unless fed.
    pub fn arm_after(
        spec: &WatchdogSpec,
        fire_timeout_s: u32,
        marker_dir: &Path,
        predecessor: Option<(i32, u64)>,
    ) -> Result<Self, WatchdogError> {
        let (inner, marker) = match spec {
            WatchdogSpec::None => (Inner::None, None),
            WatchdogSpec::Device(path) => {
                let marker = ArmedMarker::create_after(marker_dir, &spec.to_string(), predecessor)?;
                match DeviceWatchdog::open(path, fire_timeout_s) {
                    Ok(d) => (Inner::Device(d), Some(marker)),
                    Err(e) => {
                        // Keep the marker when the device may have stayed armed.
                        let maybe_armed = matches!(
                            e,
                            DeviceError::TimeoutUnsupported {
                                disarmed: false,
                                ..
                            }
                        );
                        if !maybe_armed {
                            marker.clear()?;
                        }
                        return Err(e.into());
                    }
                }
            }
            WatchdogSpec::Emulated(socket) => {
                let marker = ArmedMarker::create_after(marker_dir, &spec.to_string(), predecessor)?;
                match EmulatedWatchdog::open(socket, fire_timeout_s) {
                    Ok(w) => (Inner::Emulated(w), Some(marker)),
                    Err(e) => {
                        let maybe_armed = matches!(e, EmulatedError::Io { .. });
                        if !maybe_armed {
                            marker.clear()?;
                        }
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(Self {
            inner,
            marker,
            spec: spec.clone(),
            fire_timeout_s,
        })
    }

    /// A duplicate of the armed device's fd (device or emulator connection) for a
    /// successor, or `None` for kind none. The caller stops feeding before handing it over.
    pub fn handover_fd(&self) -> Result<Option<std::os::fd::OwnedFd>, WatchdogError> {
        let io = |e: std::io::Error| match &self.spec {
            WatchdogSpec::Emulated(p) => WatchdogError::Emulated(EmulatedError::Io {
                socket: p.clone(),
                source: e,
            }),
            _ => WatchdogError::Device(DeviceError::Open {
                path: self.spec.to_string().into(),
                source: e,
            }),
        };
        Ok(match &self.inner {
            Inner::Device(d) => Some(d.fd().map_err(io)?),
            Inner::Emulated(e) => Some(e.fd().map_err(io)?),
            Inner::None => None,
        })
    }

    /// The watchdog a predecessor armed and handed over (`fd` from its
    /// [`ArmedWatchdog::handover_fd`]; `None` for kind none), with its marker taken over
    /// from `predecessor` (pid, start ticks), which is still running and hands over. It is
    /// never opened again, so it is never disarmed in between.
    pub fn from_handover(
        spec: &WatchdogSpec,
        fire_timeout_s: u32,
        marker_dir: &Path,
        fd: Option<std::os::fd::OwnedFd>,
        predecessor: (i32, u64),
    ) -> Result<Self, WatchdogError> {
        let inner = match (spec, fd) {
            (WatchdogSpec::None, _) => Inner::None,
            (WatchdogSpec::Device(path), Some(fd)) => {
                Inner::Device(DeviceWatchdog::from_fd(path, fd, fire_timeout_s)?)
            }
            (WatchdogSpec::Emulated(socket), Some(fd)) => {
                Inner::Emulated(EmulatedWatchdog::from_fd(socket, fd, fire_timeout_s)?)
            }
            (_, None) => {
                return Err(WatchdogError::Marker(MarkerError::Unreadable {
                    path: marker_dir.to_owned(),
                    reason: "the predecessor handed over no watchdog fd".into(),
                }))
            }
        };
        let marker = match spec {
            WatchdogSpec::None => None,
            _ => Some(ArmedMarker::take_from(
                marker_dir,
                &spec.to_string(),
                predecessor,
            )?),
        };
        Ok(Self {
            inner,
            marker,
            spec: spec.clone(),
            fire_timeout_s,
        })
    }

    /// Feeds it.
    pub fn keepalive(&mut self) -> Result<(), WatchdogError> {
        match &mut self.inner {
            Inner::Device(d) => d.keepalive()?,
            Inner::Emulated(e) => e.keepalive()?,
            Inner::None => {}
        }
        Ok(())
    }

    /// Seconds before it fires, where known.
    pub fn time_left_s(&mut self) -> Option<i32> {
        match &mut self.inner {
            Inner::Device(d) => d.time_left_s(),
            Inner::Emulated(e) => e.time_left_s(),
            Inner::None => None,
        }
    }

    /// What was armed.
    pub fn spec(&self) -> &WatchdogSpec {
        &self.spec
    }

    /// The fire timeout.
    pub fn fire_timeout_s(&self) -> u32 {
        self.fire_timeout_s
    }

    /// Identity reported by the device or emulator.
    pub fn identity(&self) -> String {
        match &self.inner {
            Inner::Device(d) => d.identity().identity.clone(),
            Inner::Emulated(e) => e.identity().to_owned(),
            Inner::None => "none".into(),
        }
    }

    /// The device identity (device watchdogs only).
    pub fn device_identity(&self) -> Option<&device::Identity> {
        match &self.inner {
            Inner::Device(d) => Some(d.identity()),
            _ => None,
        }
    }

    /// The timeout programmed into the device (half the fire timeout for iTCO); the fire
    /// timeout for the other kinds.
    pub fn programmed_timeout_s(&self) -> u32 {
        match &self.inner {
            Inner::Device(d) => d.programmed_timeout_s(),
            _ => self.fire_timeout_s,
        }
    }

    /// Disarms cleanly, then removes the marker. Call only when nothing needs fencing.
    pub fn disarm(self) -> Result<(), WatchdogError> {
        match self.inner {
            Inner::Device(d) => d.disarm()?,
            Inner::Emulated(e) => e.disarm()?,
            Inner::None => {}
        }
        if let Some(m) = self.marker {
            m.clear()?;
        }
        Ok(())
    }
}

/// What one [`Feeder::tick`] did.
#[derive(Debug)]
pub enum Tick {
    /// Fed the watchdog.
    Fed,
    /// Withheld feeding (see the withholding source).
    Withheld(Withholding),
    /// Meant to feed, but the keepalive failed (the watchdog will fire if this persists).
    FeedFailed(WatchdogError),
}

/// The multiplexer driving an armed watchdog. Call [`Feeder::tick`] at least once per test
/// interval from a thread that never touches shared storage.
#[derive(Debug)]
pub struct Feeder {
    /// The watchdog.
    pub watchdog: ArmedWatchdog,
    /// The multiplexer.
    pub mux: Multiplexer,
    last_fed: Option<Instant>,
}

impl Feeder {
    /// A feeder over an armed watchdog.
    pub fn new(watchdog: ArmedWatchdog, mux: Multiplexer) -> Self {
        Self {
            watchdog,
            mux,
            last_fed: None,
        }
    }

    /// Decides and, when allowed, feeds.
    pub fn tick(&mut self, now: Instant) -> Tick {
        match self.mux.poll_feed(now) {
            FeedDecision::Withhold(w) => Tick::Withheld(w),
            FeedDecision::Feed => match self.watchdog.keepalive() {
                Ok(()) => {
                    self.last_fed = Some(now);
                    Tick::Fed
                }
                Err(e) => Tick::FeedFailed(e),
            },
        }
    }

    /// When the watchdog was last fed.
    pub fn last_fed(&self) -> Option<Instant> {
        self.last_fed
    }

    /// Disarms the watchdog cleanly; refused (the feeder is given back) while any source is
    /// registered, since a registered source means something may still need fencing.
    pub fn disarm(self) -> Result<Result<(), WatchdogError>, Box<Self>> {
        if !self.mux.is_empty() {
            return Err(Box::new(self));
        }
        Ok(self.watchdog.disarm())
    }
}
