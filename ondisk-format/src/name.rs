//! 48-byte names (lockspace, resource, host name) as stored on disk: NUL padded, no NUL
//! required when all 48 bytes are used.
//!
//! Invariant: a [`Name`] built from user text holds no NUL before its end and is at most 48
//! bytes; a `Name` read from disk keeps the raw 48 bytes, whatever they are, so that a
//! foreign record can be shown and compared exactly.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::error::NameError;

/// Length of every name field on disk.
pub const NAME_LEN: usize = 48;

/// A 48-byte on-disk name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name([u8; NAME_LEN]);

impl Name {
    /// The empty name (all zero), as in a free delta-lease slot.
    pub const EMPTY: Name = Name([0; NAME_LEN]);

    /// A name from user text: 1..=48 bytes, no NUL.
    pub fn new(text: &str) -> Result<Self, NameError> {
        Self::from_slice(text.as_bytes())
    }

    /// A name from user bytes: 1..=48 bytes, no NUL.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, NameError> {
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > NAME_LEN {
            return Err(NameError::TooLong { len: bytes.len() });
        }
        if bytes.contains(&0) {
            return Err(NameError::Nul);
        }
        let mut raw = [0u8; NAME_LEN];
        raw[..bytes.len()].copy_from_slice(bytes);
        Ok(Name(raw))
    }

    /// The raw field as read from or written to disk.
    pub const fn from_raw(raw: [u8; NAME_LEN]) -> Self {
        Name(raw)
    }

    /// The raw 48 bytes.
    pub const fn raw(&self) -> &[u8; NAME_LEN] {
        &self.0
    }

    /// The name's bytes up to the first NUL.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        &self.0[..end]
    }

    /// True when the name has no bytes before the first NUL.
    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }

    /// Printable form: the bytes up to the first NUL, with anything but printable ASCII
    /// written as `\xNN` (and a backslash as `\\`), so foreign names cannot garble a terminal.
    pub fn escaped(&self) -> String {
        let mut out = String::with_capacity(NAME_LEN);
        for &b in self.as_bytes() {
            match b {
                b'\\' => out.push_str("\\\\"),
                0x20..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
        }
        out
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.escaped())
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.escaped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(Name::new("").is_err());
        assert!(Name::new(&"a".repeat(48)).is_ok());
        assert_eq!(
            Name::new(&"a".repeat(49)),
            Err(NameError::TooLong { len: 49 })
        );
        assert_eq!(Name::new("a\0b"), Err(NameError::Nul));
        let full = Name::new(&"x".repeat(48)).unwrap();
        assert_eq!(full.as_bytes().len(), 48);
    }

    #[test]
    fn escaping() {
        let mut raw = [0u8; NAME_LEN];
        raw[..4].copy_from_slice(b"a\x1b\\z");
        assert_eq!(Name::from_raw(raw).escaped(), "a\\x1b\\\\z");
    }
}
