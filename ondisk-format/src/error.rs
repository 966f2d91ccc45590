//! Typed errors of the format crate. Every decoder returns one of these for bad bytes; none of
//! them panics on external input.

use crate::geometry::Geometry;
use crate::name::Name;

/// A sector size, align size or combination that sanlock's format does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// Not 512 or 4096.
    #[error("sector size {found} is not supported (only 512 and 4096)")]
    SectorSize {
        /// The value found.
        found: u64,
    },
    /// Not 1, 2, 4 or 8 MiB.
    #[error("align size {found} bytes is not supported (only 1M, 2M, 4M, 8M)")]
    AlignSize {
        /// The value found, in bytes.
        found: u64,
    },
    /// Unparseable align text.
    #[error("cannot parse align size {text:?} (expected 1M, 2M, 4M or 8M)")]
    AlignText {
        /// What was typed.
        text: String,
    },
    /// 512-byte sectors with an area larger than 1 MiB.
    #[error("sector size {sector_size_bytes} with align {align_bytes} bytes is invalid (512-byte sectors allow only 1M)")]
    Combination {
        /// Sector size in bytes.
        sector_size_bytes: u32,
        /// Align size in bytes.
        align_bytes: u64,
    },
    /// More than one align bit set in a leader's flags.
    #[error("leader flags carry conflicting align bits {flags:#x}")]
    AlignFlags {
        /// The align bits found.
        flags: u32,
    },
    /// The LVB's fixed sector lies outside the area.
    #[error("the lock value block (sector 2002, byte {lvb_offset_bytes}) lies outside a {geometry} resource area; LVBs need 512/1M or 4096/8M")]
    LvbOutsideArea {
        /// The area geometry.
        geometry: Geometry,
        /// Where the LVB would be.
        lvb_offset_bytes: u64,
    },
}

/// Why a record read from disk was rejected. Bytes on disk were written by other hosts (or
/// damaged), so these are the "foreign or corrupt record" class of errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the record needs.
    #[error("record needs {needed} bytes, only {found} available")]
    Short {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        found: usize,
    },
    /// Magic number is not one this decoder accepts.
    #[error("bad magic {found:#010x} (expected {expected})")]
    BadMagic {
        /// The magic on disk.
        found: u32,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// Major version differs.
    #[error("unsupported version {found:#x} (expected major {expected_major:#x})")]
    BadVersion {
        /// The version on disk.
        found: u32,
        /// The major half we understand (`version & 0xFFFF0000`).
        expected_major: u32,
    },
    /// Stored checksum does not match the bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// Checksum on disk.
        stored: u32,
        /// Checksum of the bytes on disk.
        computed: u32,
    },
    /// Geometry fields are invalid.
    #[error("invalid geometry in record: {0}")]
    Geometry(#[from] GeometryError),
    /// The record's sector size differs from the area's.
    #[error("record says sector size {found}, the area uses {expected}")]
    SectorSizeMismatch {
        /// In the record.
        found: u32,
        /// In the area.
        expected: u32,
    },
    /// The record belongs to another lockspace.
    #[error("lockspace name {found} differs from expected {expected}")]
    LockspaceNameMismatch {
        /// Expected name.
        expected: Name,
        /// Name on disk.
        found: Name,
    },
    /// The record belongs to another resource.
    #[error("resource name {found} differs from expected {expected}")]
    ResourceNameMismatch {
        /// Expected name.
        expected: Name,
        /// Name on disk.
        found: Name,
    },
    /// num_hosts / max_hosts out of range for the geometry.
    #[error("num_hosts {num_hosts} / max_hosts {max_hosts} invalid for a {geometry} area (at most {hosts_max} hosts)")]
    NumHosts {
        /// num_hosts on disk.
        num_hosts: u64,
        /// max_hosts on disk.
        max_hosts: u64,
        /// Area geometry.
        geometry: Geometry,
        /// Limit for that geometry.
        hosts_max: u64,
    },
}

/// A name that does not fit the 48-byte on-disk field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("name is empty")]
    Empty,
    /// Longer than 48 bytes.
    #[error("name is {len} bytes long; at most 48 fit")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// Contains a NUL byte, which would truncate it on disk.
    #[error("name contains a NUL byte")]
    Nul,
}

/// A lockspace or resource string (`NAME:HOST_ID:PATH:OFFSET`, ...) that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Wrong number of `:`-separated fields.
    #[error("{what} needs the form {form}; got {found} field(s)")]
    Fields {
        /// Lockspace or resource.
        what: &'static str,
        /// The expected form.
        form: &'static str,
        /// Number of fields found.
        found: usize,
    },
    /// Bad name field.
    #[error("{field}: {source}")]
    Name {
        /// Which field.
        field: &'static str,
        /// Why.
        source: NameError,
    },
    /// Bad number.
    #[error("{field}: cannot parse {text:?} as {kind}")]
    Number {
        /// Which field.
        field: &'static str,
        /// What was typed.
        text: String,
        /// What was expected.
        kind: &'static str,
    },
    /// Empty path.
    #[error("path is empty")]
    EmptyPath,
    /// Path longer than sanlock allows.
    #[error("path is {len} bytes long; at most {max} are allowed")]
    PathTooLong {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Too many disks in one resource.
    #[error("{found} disks given; a resource has at most {max}")]
    TooManyDisks {
        /// Disks given.
        found: usize,
        /// Limit.
        max: usize,
    },
    /// A trailing backslash escapes nothing.
    #[error("dangling backslash at the end of {text:?}")]
    DanglingEscape {
        /// The text.
        text: String,
    },
}
