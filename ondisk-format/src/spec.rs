//! The string forms users type for lockspaces and resources (ONDISK.md "String forms"):
//!
//! - lockspace: `NAME:HOST_ID:PATH:OFFSET`
//! - resource: `LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...][:LVER|:SH]`
//!
//! A `:` inside a field is written `\:` and a backslash `\\`; any other backslash is kept as
//! it is (sanlock only knows `\:`, so `\\` is a tenure extension that only matters for paths
//! ending in a backslash). Offsets are decimal bytes, or MiB with an `M` suffix.
//!
//! Invariant: `parse(print(x)) == x` for every value the parsers accept.

use std::fmt;

use serde::Serialize;

use crate::error::SpecError;
use crate::geometry::HOSTS_MAX;
use crate::name::Name;

/// sanlock's limit on path length.
pub const PATH_LEN_MAX: usize = 1024;
/// sanlock's limit on the number of disks of one resource.
pub const DISKS_MAX: usize = 4;

/// One place on shared storage: a path and a byte offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DiskLocation {
    /// Device or file path.
    pub path: String,
    /// Byte offset of the area.
    pub offset: u64,
}

/// A parsed `NAME:HOST_ID:PATH:OFFSET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockspaceSpec {
    /// Lockspace name.
    pub name: Name,
    /// Host id (0 where it does not matter, e.g. for init).
    pub host_id: u64,
    /// Where the lockspace area is.
    pub disk: DiskLocation,
}

/// How a resource is to be held, from the optional last field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceMode {
    /// No suffix: exclusive, any lease version.
    Exclusive,
    /// `:LVER`: exclusive, only if the lease version is still this one.
    ExclusiveAtLver(u64),
    /// `:SH`: shared.
    Shared,
}

/// A parsed `LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...][:LVER|:SH]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceSpec {
    /// Lockspace name.
    pub lockspace: Name,
    /// Resource name.
    pub name: Name,
    /// One to four lease areas (a majority must agree).
    pub disks: Vec<DiskLocation>,
    /// Exclusive, exclusive at an lver, or shared.
    pub mode: ResourceMode,
}

/// Splits on unescaped `:` and unescapes `\:` and `\\`.
fn split_fields(text: &str) -> Result<Vec<String>, SpecError> {
    let mut fields = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(':') => push(&mut fields, ':'),
                Some('\\') => push(&mut fields, '\\'),
                Some(other) => {
                    push(&mut fields, '\\');
                    push(&mut fields, other);
                }
                None => {
                    return Err(SpecError::DanglingEscape {
                        text: text.to_owned(),
                    })
                }
            },
            ':' => fields.push(String::new()),
            other => push(&mut fields, other),
        }
    }
    Ok(fields)
}

fn push(fields: &mut [String], c: char) {
    // `fields` starts with one element and only grows.
    fields.last_mut().expect("fields is never empty").push(c);
}

/// Escapes one field of a spec string (`\` and `:`), the inverse of how specs are split:
/// the one escaping every spec string is built with.
pub fn escape_field(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

fn escape(field: &str) -> String {
    escape_field(field)
}

/// Parses an offset: decimal bytes, or decimal MiB with an `M` suffix.
pub fn parse_offset(field: &'static str, text: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Number {
        field,
        text: text.to_owned(),
        kind: "a byte offset (e.g. 1048576 or 1M)",
    };
    let (digits, scale) = match text.strip_suffix('M') {
        Some(d) => (d, 1024 * 1024),
        None => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(scale).ok_or_else(bad)
}

fn parse_name(field: &'static str, text: &str) -> Result<Name, SpecError> {
    Name::new(text).map_err(|source| SpecError::Name { field, source })
}

fn parse_path(text: String) -> Result<String, SpecError> {
    if text.is_empty() {
        return Err(SpecError::EmptyPath);
    }
    if text.len() > PATH_LEN_MAX {
        return Err(SpecError::PathTooLong {
            len: text.len(),
            max: PATH_LEN_MAX,
        });
    }
    Ok(text)
}

fn name_text(name: &Name) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

impl LockspaceSpec {
    /// Parses `NAME:HOST_ID:PATH:OFFSET`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let fields = split_fields(text)?;
        let [name, host_id, path, offset]: [String; 4] =
            fields
                .try_into()
                .map_err(|f: Vec<String>| SpecError::Fields {
                    what: "lockspace",
                    form: "NAME:HOST_ID:PATH:OFFSET",
                    found: f.len(),
                })?;
        let host_id_n: u64 = host_id
            .parse()
            .ok()
            .filter(|&h| h <= HOSTS_MAX && host_id.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(SpecError::Number {
                field: "host id",
                text: host_id.clone(),
                kind: "a host id 0..=2000",
            })?;
        Ok(LockspaceSpec {
            name: parse_name("lockspace name", &name)?,
            host_id: host_id_n,
            disk: DiskLocation {
                path: parse_path(path)?,
                offset: parse_offset("offset", &offset)?,
            },
        })
    }
}

impl fmt::Display for LockspaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            escape(&name_text(&self.name)),
            self.host_id,
            escape(&self.disk.path),
            self.disk.offset
        )
    }
}

/// A parsed resource index location `LOCKSPACE:PATH:OFFSET` (sanlock's `-x`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RindexSpec {
    /// Lockspace name.
    pub lockspace: Name,
    /// Where the index is.
    pub disk: DiskLocation,
}

impl RindexSpec {
    /// Parses `LOCKSPACE:PATH:OFFSET`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let fields = split_fields(text)?;
        let [name, path, offset]: [String; 3] =
            fields
                .try_into()
                .map_err(|f: Vec<String>| SpecError::Fields {
                    what: "resource index",
                    form: "LOCKSPACE:PATH:OFFSET",
                    found: f.len(),
                })?;
        Ok(RindexSpec {
            lockspace: parse_name("lockspace name", &name)?,
            disk: DiskLocation {
                path: parse_path(path)?,
                offset: parse_offset("offset", &offset)?,
            },
        })
    }
}

impl fmt::Display for RindexSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            escape(&name_text(&self.lockspace)),
            escape(&self.disk.path),
            self.disk.offset
        )
    }
}

impl ResourceSpec {
    /// Parses `LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...][:LVER|:SH]`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        const FORM: &str = "LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...][:LVER|:SH]";
        let mut fields = split_fields(text)?;
        if fields.len() < 4 {
            return Err(SpecError::Fields {
                what: "resource",
                form: FORM,
                found: fields.len(),
            });
        }
        let mode = if fields.len() % 2 == 1 {
            // Checked above: at least four fields, so there is a last one.
            let last = fields.pop().expect("at least four fields");
            if last == "SH" {
                ResourceMode::Shared
            } else if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
                ResourceMode::ExclusiveAtLver(last.parse().map_err(|_| SpecError::Number {
                    field: "lver",
                    text: last.clone(),
                    kind: "a lease version",
                })?)
            } else {
                return Err(SpecError::Number {
                    field: "lver",
                    text: last,
                    kind: "a lease version or SH",
                });
            }
        } else {
            ResourceMode::Exclusive
        };
        let mut rest = fields.into_iter();
        // Checked above: at least four fields.
        let lockspace = parse_name("lockspace name", &rest.next().expect("field 1"))?;
        let name = parse_name("resource name", &rest.next().expect("field 2"))?;
        let pairs: Vec<String> = rest.collect();
        if pairs.len() / 2 > DISKS_MAX {
            return Err(SpecError::TooManyDisks {
                found: pairs.len() / 2,
                max: DISKS_MAX,
            });
        }
        let mut disks = Vec::with_capacity(pairs.len() / 2);
        for pair in pairs.chunks_exact(2) {
            disks.push(DiskLocation {
                path: parse_path(pair[0].clone())?,
                offset: parse_offset("offset", &pair[1])?,
            });
        }
        Ok(ResourceSpec {
            lockspace,
            name,
            disks,
            mode,
        })
    }
}

impl fmt::Display for ResourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            escape(&name_text(&self.lockspace)),
            escape(&name_text(&self.name))
        )?;
        for d in &self.disks {
            write!(f, ":{}:{}", escape(&d.path), d.offset)?;
        }
        match self.mode {
            ResourceMode::Exclusive => Ok(()),
            ResourceMode::ExclusiveAtLver(lver) => write!(f, ":{lver}"),
            ResourceMode::Shared => write!(f, ":SH"),
        }
    }
}

/// A parsed `LOCKSPACE:NAME`: a lease a client holds, named without its location (what
/// `release`, `convert` and the LVB requests take).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LeaseRef {
    /// Lockspace name.
    pub lockspace: Name,
    /// Resource name.
    pub name: Name,
}

impl LeaseRef {
    /// Parses `LOCKSPACE:NAME` (`\:` and `\\` escaped as in every spec).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let fields = split_fields(text)?;
        let [lockspace, name]: [String; 2] =
            fields
                .try_into()
                .map_err(|f: Vec<String>| SpecError::Fields {
                    what: "lease",
                    form: "LOCKSPACE:NAME",
                    found: f.len(),
                })?;
        Ok(LeaseRef {
            lockspace: parse_name("lockspace name", &lockspace)?,
            name: parse_name("resource name", &name)?,
        })
    }
}

impl fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            escape(&name_text(&self.lockspace)),
            escape(&name_text(&self.name))
        )
    }
}

impl ResourceSpec {
    /// The lease it names, without its location.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            lockspace: self.lockspace,
            name: self.name,
        }
    }
}

/// A parsed `PATH[:OFFSET[:SIZE]]` (what `dump` reads): offset defaults to 0, size to "up to
/// the end of the device".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DumpTarget {
    /// Device or file.
    pub path: String,
    /// First byte to read.
    pub offset: u64,
    /// Bytes to scan.
    pub size: Option<u64>,
}

impl DumpTarget {
    /// Parses `PATH[:OFFSET[:SIZE]]`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let fields = split_fields(text)?;
        if fields.len() > 3 {
            return Err(SpecError::Fields {
                what: "dump target",
                form: "PATH[:OFFSET[:SIZE]]",
                found: fields.len(),
            });
        }
        let mut it = fields.into_iter();
        // split_fields always returns at least one field.
        let path = parse_path(it.next().expect("one field"))?;
        let offset = it
            .next()
            .map(|o| parse_offset("offset", &o))
            .transpose()?
            .unwrap_or(0);
        let size = it.next().map(|s| parse_offset("size", &s)).transpose()?;
        Ok(DumpTarget { path, offset, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_forms() {
        let l = LeaseRef::parse("LS:vm1").unwrap();
        assert_eq!(l.lockspace.as_bytes(), b"LS");
        assert_eq!(l.name.as_bytes(), b"vm1");
        assert_eq!(l.to_string(), "LS:vm1");
        let esc = LeaseRef::parse(r"L\:S:a\\b").unwrap();
        assert_eq!(esc.lockspace.as_bytes(), b"L:S");
        assert_eq!(esc.name.as_bytes(), br"a\b");
        assert_eq!(LeaseRef::parse(&esc.to_string()).unwrap(), esc);
        assert!(matches!(
            LeaseRef::parse("LS:vm1:/dev/x"),
            Err(SpecError::Fields { found: 3, .. })
        ));
        assert!(LeaseRef::parse("LS").is_err());
        assert!(LeaseRef::parse("LS:").is_err());
        let r = ResourceSpec::parse("LS:vm1:/dev/x:0:SH").unwrap();
        assert_eq!(r.lease(), l);
    }

    #[test]
    fn lockspace_forms() {
        let ls = LockspaceSpec::parse("LS:2:/dev/sdb:1M").unwrap();
        assert_eq!(ls.name.as_bytes(), b"LS");
        assert_eq!(ls.host_id, 2);
        assert_eq!(
            ls.disk,
            DiskLocation {
                path: "/dev/sdb".into(),
                offset: 1 << 20
            }
        );
        assert_eq!(ls.to_string(), "LS:2:/dev/sdb:1048576");
        let esc = LockspaceSpec::parse(r"LS:0:/dev/disk/by-path/pci-0000\:00\:1f.2:0").unwrap();
        assert_eq!(esc.disk.path, "/dev/disk/by-path/pci-0000:00:1f.2");
        assert_eq!(LockspaceSpec::parse(&esc.to_string()).unwrap(), esc);
        assert!(matches!(
            LockspaceSpec::parse("LS:1:/dev/x"),
            Err(SpecError::Fields { found: 3, .. })
        ));
        assert!(LockspaceSpec::parse("LS:2001:/dev/x:0").is_err());
        assert!(LockspaceSpec::parse("LS:-1:/dev/x:0").is_err());
        assert!(LockspaceSpec::parse("LS:1:/dev/x:1G").is_err());
        assert!(LockspaceSpec::parse("LS:1::0").is_err());
        assert!(LockspaceSpec::parse(&format!("{}:1:/x:0", "n".repeat(49))).is_err());
        assert!(LockspaceSpec::parse("LS:1:/x:0\\").is_err());
    }

    #[test]
    fn dump_targets() {
        assert_eq!(
            DumpTarget::parse("/dev/x").unwrap(),
            DumpTarget {
                path: "/dev/x".into(),
                offset: 0,
                size: None
            }
        );
        let t = DumpTarget::parse("/dev/x:1M:8M").unwrap();
        assert_eq!((t.offset, t.size), (1 << 20, Some(8 << 20)));
        assert!(DumpTarget::parse("/dev/x:1:2:3").is_err());
        assert!(DumpTarget::parse(":0").is_err());
    }

    #[test]
    fn resource_forms() {
        let r = ResourceSpec::parse("LS:vm1:/dev/a:1M:/dev/b:2M:SH").unwrap();
        assert_eq!(r.disks.len(), 2);
        assert_eq!(r.mode, ResourceMode::Shared);
        assert_eq!(ResourceSpec::parse(&r.to_string()).unwrap(), r);
        let r = ResourceSpec::parse("LS:vm1:/dev/a:0:17").unwrap();
        assert_eq!(r.mode, ResourceMode::ExclusiveAtLver(17));
        let r = ResourceSpec::parse("LS:vm1:/dev/a:0").unwrap();
        assert_eq!(r.mode, ResourceMode::Exclusive);
        assert!(ResourceSpec::parse("LS:vm1:/dev/a:0:xx").is_err());
        assert!(ResourceSpec::parse("LS:vm1:/dev/a").is_err());
        assert!(ResourceSpec::parse("LS:vm1:a:0:b:0:c:0:d:0:e:0").is_err());
        let odd = ResourceSpec::parse(r"L\:S:r\\:/p\:q:0").unwrap();
        assert_eq!(odd.lockspace.as_bytes(), b"L:S");
        assert_eq!(odd.name.as_bytes(), b"r\\");
        assert_eq!(ResourceSpec::parse(&odd.to_string()).unwrap(), odd);
    }
}
