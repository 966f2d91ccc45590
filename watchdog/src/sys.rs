//! The only unsafe code of this crate: the Linux watchdog ioctls and the signal dispositions
//! of the emulated watchdog process.
//!
//! Invariants: every ioctl is issued on a file descriptor borrowed from a live `File` for the
//! duration of the call, with a pointer to a properly sized, initialised value of the type
//! the ioctl number encodes (the numbers come from `<linux/watchdog.h>`: magic 'W').

use std::os::fd::AsRawFd;

/// `struct watchdog_info` from `<linux/watchdog.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchdogInfo {
    /// WDIOF_* flags the driver supports.
    pub options: u32,
    /// Firmware version reported by the driver.
    pub firmware_version: u32,
    /// NUL-padded identity string.
    pub identity: [u8; 32],
}

const _: () = assert!(std::mem::size_of::<WatchdogInfo>() == 40);

nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);
nix::ioctl_read!(wdioc_gettimeleft, b'W', 10, libc::c_int);

/// WDIOC_GETSUPPORT.
pub fn get_support(fd: &impl AsRawFd) -> nix::Result<WatchdogInfo> {
    let mut info = WatchdogInfo::default();
    // SAFETY: fd is open for the call; `info` is a live, writable watchdog_info (40 bytes,
    // size checked above), exactly what WDIOC_GETSUPPORT writes.
    unsafe { wdioc_getsupport(fd.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// WDIOC_KEEPALIVE.
pub fn keepalive(fd: &impl AsRawFd) -> nix::Result<()> {
    let mut dummy: libc::c_int = 0;
    // SAFETY: fd is open for the call; the kernel may write one int to `dummy`, a live int.
    unsafe { wdioc_keepalive(fd.as_raw_fd(), &mut dummy) }?;
    Ok(())
}

/// WDIOC_SETTIMEOUT: returns the timeout the driver actually set.
pub fn set_timeout(fd: &impl AsRawFd, timeout_s: i32) -> nix::Result<i32> {
    let mut t: libc::c_int = timeout_s;
    // SAFETY: fd is open for the call; `t` is a live int the kernel reads and overwrites.
    unsafe { wdioc_settimeout(fd.as_raw_fd(), &mut t) }?;
    Ok(t)
}

/// WDIOC_GETTIMEOUT.
pub fn get_timeout(fd: &impl AsRawFd) -> nix::Result<i32> {
    let mut t: libc::c_int = 0;
    // SAFETY: fd is open for the call; `t` is a live int the kernel writes.
    unsafe { wdioc_gettimeout(fd.as_raw_fd(), &mut t) }?;
    Ok(t)
}

/// WDIOC_GETTIMELEFT.
pub fn get_time_left(fd: &impl AsRawFd) -> nix::Result<i32> {
    let mut t: libc::c_int = 0;
    // SAFETY: fd is open for the call; `t` is a live int the kernel writes.
    unsafe { wdioc_gettimeleft(fd.as_raw_fd(), &mut t) }?;
    Ok(t)
}

/// Makes SIGTERM, SIGINT, SIGHUP and SIGPIPE ignored in this process: an armed emulated
/// watchdog, like a hardware timer, cannot be stopped by a stray signal (only SIGKILL ends
/// it, and that is documented as equivalent to pulling the hardware).
pub fn ignore_stop_signals() -> nix::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety concern; this
        // runs before the emulator starts any thread.
        unsafe { signal(sig, SigHandler::SigIgn) }?;
    }
    Ok(())
}
