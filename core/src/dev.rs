//! Opening and probing shared storage: O_DIRECT (and O_DSYNC for writing) file descriptors,
//! logical sector size, size, block device or file. The I/O itself goes through the engine
//! in [`crate::io`].
//!
//! Every access is O_DIRECT (no page cache between hosts) and every write is O_DSYNC, i.e. at
//! least as durable as sanlock's O_SYNC writes of lease data. Offsets and lengths must be
//! multiples of the device's logical sector size, and buffers are 4096-byte aligned
//! ([`AlignedBuf`]); violations are typed errors, never undefined behaviour.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Memory alignment of every I/O buffer: enough for 512- and 4096-byte logical sectors.
pub const BUF_ALIGN: usize = 4096;

/// A zeroed, 4096-byte aligned buffer for O_DIRECT I/O, built without unsafe code by
/// over-allocating and starting at the first aligned byte.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + BUF_ALIGN];
        let start = storage.as_ptr().align_offset(BUF_ALIGN);
        assert!(
            start < BUF_ALIGN,
            "align_offset on u8 is always below the alignment"
        );
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What kind of object backs the lease storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A block device (SAN LUN, loop device, ...).
    Block,
    /// A regular file (NFS, or a file on a local file system for tests).
    File,
}

/// Read-only or read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// O_RDONLY | O_DIRECT.
    Read,
    /// O_RDWR | O_DIRECT | O_DSYNC.
    ReadWrite,
}

/// Errors of device access, grouped as "disk I/O" or "config/misuse" by variant.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// open(2) failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The file system refused O_DIRECT.
    #[error("{path}: no O_DIRECT here (tmpfs and some FUSE file systems lack it); use a block device or a file on ext4/xfs/NFS")]
    NoDirectIo {
        /// Path.
        path: PathBuf,
    },
    /// Neither a block device nor a regular file.
    #[error("{path} is neither a block device nor a regular file")]
    NotStorage {
        /// Path.
        path: PathBuf,
    },
    /// A probing ioctl failed.
    #[error("{path}: {what} failed: {source}")]
    Probe {
        /// Path.
        path: PathBuf,
        /// Which probe.
        what: &'static str,
        /// OS error.
        source: io::Error,
    },
    /// Offset or length not a multiple of the device's logical sector size.
    #[error("{path}: I/O at offset {offset} length {len} is not aligned to {align} bytes")]
    Unaligned {
        /// Path.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Required alignment.
        align: u32,
    },
}

/// An open lease device or file.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
    kind: DeviceKind,
    /// Logical sector size for block devices (BLKSSZGET); `None` for regular files.
    logical_sector_size: Option<u32>,
    size_bytes: u64,
}

impl Device {
    /// Opens `path` with O_DIRECT (and O_DSYNC for read-write) and probes it.
    pub fn open(path: &Path, access: Access) -> Result<Self, DeviceError> {
        let mut opts = OpenOptions::new();
        opts.read(true);
        let mut flags = libc::O_DIRECT | libc::O_CLOEXEC;
        if access == Access::ReadWrite {
            opts.write(true);
            flags |= libc::O_DSYNC;
        }
        opts.custom_flags(flags);
        let file = opts.open(path).map_err(|source| open_error(path, source))?;
        let meta = file.metadata().map_err(|source| DeviceError::Probe {
            path: path.to_owned(),
            what: "fstat",
            source,
        })?;
        let ft = meta.file_type();
        let (kind, logical_sector_size, size_bytes) = if ft.is_block_device() {
            let probe = |what, source| DeviceError::Probe {
                path: path.to_owned(),
                what,
                source,
            };
            let ss = ioctl::logical_sector_size(&file).map_err(|e| probe("BLKSSZGET", e))?;
            let size = ioctl::size_bytes(&file).map_err(|e| probe("BLKGETSIZE64", e))?;
            (DeviceKind::Block, Some(ss), size)
        } else if ft.is_file() {
            (DeviceKind::File, None, meta.len())
        } else {
            return Err(DeviceError::NotStorage {
                path: path.to_owned(),
            });
        };
        Ok(Device {
            file,
            path: path.to_owned(),
            kind,
            logical_sector_size,
            size_bytes,
        })
    }

    /// The open file (O_DIRECT; O_DSYNC when opened read-write).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Path as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Block device or regular file.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// The block device's logical sector size; `None` for regular files.
    pub fn logical_sector_size(&self) -> Option<u32> {
        self.logical_sector_size
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Smallest unit of I/O: the logical sector size, 512 for files (sanlock's rule).
    pub fn io_align(&self) -> u32 {
        self.logical_sector_size.unwrap_or(512)
    }
}

/// open(2) answers EINVAL when the file system refuses O_DIRECT (tmpfs before Linux 6.6,
/// some FUSE file systems): say so instead of "invalid argument".
fn open_error(path: &Path, source: io::Error) -> DeviceError {
    if source.raw_os_error() == Some(libc::EINVAL) {
        // Directories also answer EINVAL to O_DIRECT: name them for what they are.
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return DeviceError::NotStorage {
                path: path.to_owned(),
            };
        }
        DeviceError::NoDirectIo {
            path: path.to_owned(),
        }
    } else {
        DeviceError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

#[allow(unsafe_code)]
mod ioctl {
    //! The two block-device probes. The only unsafe code outside the io_uring engine.

    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

    /// BLKSSZGET: logical block size.
    pub(super) fn logical_sector_size(file: &File) -> io::Result<u32> {
        let mut ss: libc::c_int = 0;
        // SAFETY: the fd is open for the lifetime of `file`, and BLKSSZGET writes one c_int
        // into the valid, exclusively borrowed `ss`.
        unsafe { blksszget(file.as_raw_fd(), &mut ss) }.map_err(io::Error::from)?;
        u32::try_from(ss)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("sector size {ss}")))
    }

    /// BLKGETSIZE64: size in bytes.
    pub(super) fn size_bytes(file: &File) -> io::Result<u64> {
        let mut size: u64 = 0;
        // SAFETY: as above; BLKGETSIZE64 writes one u64 into `size`.
        unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers() {
        for len in [512usize, 4096, 8192 + 512] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
            assert_eq!(b.len(), len);
        }
    }

    #[test]
    fn file_probe() {
        // /var/tmp rather than /tmp: /tmp may be tmpfs.
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8192]).expect("create");
        let dev = Device::open(&path, Access::ReadWrite).expect("open");
        assert_eq!(
            (dev.kind(), dev.io_align(), dev.size_bytes()),
            (DeviceKind::File, 512, 8192)
        );
        assert_eq!(dev.logical_sector_size(), None);
        let dir_open = Device::open(dir.path(), Access::Read);
        assert!(
            matches!(
                dir_open,
                Err(DeviceError::Open { .. } | DeviceError::NotStorage { .. })
            ),
            "{dir_open:?}"
        );
    }

    #[test]
    fn no_direct_io_is_named() {
        let e = open_error(Path::new("/x"), io::Error::from_raw_os_error(libc::EINVAL));
        assert!(e.to_string().contains("no O_DIRECT"), "{e}");
        let e = open_error(Path::new("/x"), io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, DeviceError::Open { .. }));
    }
}
