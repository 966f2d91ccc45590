//! The host name written into delta leases.
//!
//! sanlock 3.8.5 defaults to a random name per start, so every unclean restart looks like a new
//! host and waits the long delay (8T + W, then 2T). tenure defaults to a stable name derived
//! from the machine identity (/etc/machine-id) plus the short host name, so a restarted host
//! takes the same-name path (2T). That is only safe because a restart never cancels a pending
//! watchdog reset (DESIGN.md "Watchdog").
//!
//! Invariant: the default name is a pure function of machine-id and host name — the same on
//! every start of the same machine, different across machines. Simulated hosts sharing one
//! machine must each be given their own name explicitly.

use std::path::Path;

use tenure_format::{Name, NameError};

/// Why no host name could be made.
#[derive(Debug, thiserror::Error)]
pub enum HostNameError {
    /// machine-id unreadable.
    #[error("cannot read {path}: {source}; set a host name explicitly")]
    MachineId {
        /// Path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// machine-id is not 32 hex digits.
    #[error(
        "{path} does not hold a machine id (32 hex digits): {found:?}; set a host name explicitly"
    )]
    BadMachineId {
        /// Path.
        path: String,
        /// What it holds.
        found: String,
    },
    /// An explicit name does not fit.
    #[error("host name: {0}")]
    Name(#[from] NameError),
}

/// The stable default: machine-id as a UUID, a dot, and up to 11 bytes of the short host name
/// (at most 48 bytes, like sanlock's "uuid.hostname" form).
pub fn from_machine_id(machine_id: &str, host_name: &str) -> Result<Name, HostNameError> {
    let id = machine_id.trim();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HostNameError::BadMachineId {
            path: "machine-id".into(),
            found: id.chars().take(64).collect(),
        });
    }
    let id = id.to_ascii_lowercase();
    let short: String = host_name
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != ':')
        .take(11)
        .collect();
    let text = format!(
        "{}-{}-{}-{}-{}.{short}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    Ok(Name::new(text.trim_end_matches('.'))?)
}

/// The host name to use: `explicit` if given, else the stable default of this machine.
pub fn host_name(explicit: Option<&str>) -> Result<Name, HostNameError> {
    if let Some(n) = explicit {
        return Ok(Name::new(n)?);
    }
    let path = Path::new("/etc/machine-id");
    let id = std::fs::read_to_string(path).map_err(|source| HostNameError::MachineId {
        path: path.display().to_string(),
        source,
    })?;
    let short = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    from_machine_id(&id, short.trim()).map_err(|e| match e {
        HostNameError::BadMachineId { found, .. } => HostNameError::BadMachineId {
            path: path.display().to_string(),
            found,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_bounded() {
        let a = from_machine_id("0123456789abcdef0123456789ABCDEF\n", "node-17.example.com")
            .expect("name");
        assert_eq!(a.escaped(), "01234567-89ab-cdef-0123-456789abcdef.node-17");
        assert_eq!(
            a,
            from_machine_id("0123456789abcdef0123456789abcdef", "node-17").expect("name")
        );
        let long = from_machine_id(
            "0123456789abcdef0123456789abcdef",
            "a-very-long-host-name-indeed",
        )
        .expect("name");
        assert!(long.as_bytes().len() <= 48);
        assert!(from_machine_id("xyz", "h").is_err());
        assert_eq!(
            from_machine_id("0123456789abcdef0123456789abcdef", "")
                .expect("name")
                .as_bytes()
                .len(),
            36
        );
        assert_eq!(
            host_name(Some("sim-host-3")).expect("explicit").escaped(),
            "sim-host-3"
        );
        assert!(host_name(Some("")).is_err());
    }

    #[test]
    fn this_machine_has_a_stable_default() {
        if !Path::new("/etc/machine-id").exists() {
            eprintln!("skipped: no /etc/machine-id on this machine");
            return;
        }
        assert_eq!(
            host_name(None).expect("name"),
            host_name(None).expect("name")
        );
    }
}
