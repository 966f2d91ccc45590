//! tenured's configuration: `/etc/tenure/tenured.toml`, flags over it, and the embedded
//! default used when there is no configuration file at all.
//!
//! Every field has a default; unknown fields are refused (a typo must not silently leave a
//! safety setting at its default). Validation happens once, here, with errors naming the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tenure_format::spec::parse_offset;

/// Where the configuration file is looked for when `--config` is not given.
pub const CONFIG_PATH_DEFAULT: &str = "/etc/tenure/tenured.toml";

/// Largest io_timeout accepted, seconds (sanlock's limit is far above any sane value).
pub const IO_TIMEOUT_MAX_S: u64 = 120;

/// The watchdog used to fence this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// "device", "emulated" or "none".
    #[serde(default = "default_watchdog_kind")]
    pub kind: String,
    /// Device path for kind = "device".
    #[serde(default = "default_watchdog_device")]
    pub device: PathBuf,
    /// Emulator socket for kind = "emulated" (default: `<run_dir>/watchdog.sock`).
    #[serde(default)]
    pub emulated_socket: Option<PathBuf>,
    /// With kind = "emulated": start the emulator (targeting tenured's process group) when
    /// none listens on the socket.
    #[serde(default)]
    pub spawn_emulator: bool,
    /// Seconds from the last keepalive until this host's watchdog fires (our W).
    #[serde(default = "default_fire_timeout")]
    pub fire_timeout_s: u32,
    /// The W assumed for every other host: another host is dead, and its leases may be taken,
    /// 8T + this after its last renewal we saw. It must cover the slowest watchdog in the
    /// cluster: sanlock hosts use 60 s. Default: 60, or `fire_timeout_s` when that is larger;
    /// below `fire_timeout_s` is refused (docs/timeouts.md, "Other hosts' W").
    #[serde(default)]
    pub other_hosts_fire_timeout_s: Option<u32>,
}

fn default_watchdog_kind() -> String {
    "device".into()
}
fn default_watchdog_device() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}
fn default_fire_timeout() -> u32 {
    60
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            kind: default_watchdog_kind(),
            device: default_watchdog_device(),
            emulated_socket: None,
            spawn_emulator: false,
            fire_timeout_s: default_fire_timeout(),
            other_hosts_fire_timeout_s: None,
        }
    }
}

/// What happens to lease holders when a lockspace is lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Seconds of kill path / SIGTERM before SIGKILL.
    #[serde(default = "default_kill_grace")]
    pub kill_grace_s: u64,
    /// SIGKILLs sent (one a second) before giving up and letting the watchdog fire.
    #[serde(default = "default_sigkill_max")]
    pub sigkill_max: u32,
}

fn default_kill_grace() -> u64 {
    40
}
fn default_sigkill_max() -> u32 {
    10
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            kill_grace_s: default_kill_grace(),
            sigkill_max: default_sigkill_max(),
        }
    }
}

/// A lockspace joined at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockspaceConfig {
    /// Lockspace name.
    pub name: String,
    /// Our host id in it.
    pub host_id: u64,
    /// Device or file of its area.
    pub path: PathBuf,
    /// Byte offset of the area (number, or a string with an M suffix).
    #[serde(default)]
    pub offset: OffsetValue,
}

/// An offset given as a number of bytes or as a string ("1M").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OffsetValue {
    /// Bytes.
    Bytes(u64),
    /// Text, e.g. "1M".
    Text(String),
}

impl Default for OffsetValue {
    fn default() -> Self {
        OffsetValue::Bytes(0)
    }
}

impl OffsetValue {
    /// The offset in bytes.
    pub fn bytes(&self) -> Result<u64, ConfigError> {
        match self {
            OffsetValue::Bytes(b) => Ok(*b),
            OffsetValue::Text(t) => parse_offset("offset", t)
                .map_err(|e| ConfigError::Invalid(format!("lockspace offset {t:?}: {e}"))),
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Host name written into delta leases (default: derived from /etc/machine-id and the
    /// system host name, as sanlock does).
    #[serde(default)]
    pub host_name: Option<String>,
    /// Our io_timeout T in seconds (renewals every 2T, loss at 8T).
    #[serde(default = "default_io_timeout")]
    pub io_timeout_s: u64,
    /// Directory for the socket and the armed marker (cleared by a reboot).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Persistent state: fence records.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Client socket (default: `<run_dir>/tenured.sock`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Group given access to the socket (mode 0660); without it the socket is 0600 (root).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// The watchdog.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    /// Holder supervision.
    #[serde(default)]
    pub supervision: SupervisionConfig,
    /// Lockspaces joined at start-up.
    #[serde(default, rename = "lockspace")]
    pub lockspaces: Vec<LockspaceConfig>,
    /// The sanlock-compatible client socket (off unless enabled).
    #[serde(default)]
    pub sanlock: SanlockConfig,
    /// The metrics endpoint (off unless an address is given).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The Prometheus endpoint (docs/operations.md "Metrics").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving `GET /metrics`, e.g. "127.0.0.1:9478". Off when
    /// absent. It has no authentication: keep it on loopback or a management network.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// The sanlock-compatible listener (docs/sanlock-compat.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanlockConfig {
    /// Serve `sanlock.sock` for unmodified sanlock clients (libvirt, python3-sanlock).
    #[serde(default)]
    pub enabled: bool,
    /// Its directory; default `$SANLOCK_RUN_DIR`, else `/run/sanlock`.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
}

fn default_io_timeout() -> u64 {
    10
}
fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/tenure")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tenure")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_name: None,
            io_timeout_s: default_io_timeout(),
            run_dir: default_run_dir(),
            state_dir: default_state_dir(),
            socket: None,
            socket_group: None,
            watchdog: WatchdogConfig::default(),
            supervision: SupervisionConfig::default(),
            lockspaces: Vec::new(),
            sanlock: SanlockConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's message (names the line and field).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Name of the embedded default's lockspace.
pub const EMBEDDED_LOCKSPACE: &str = "tenure";
/// Size of the embedded default's backing file: the lockspace area, then eight resources.
pub const EMBEDDED_FILE_BYTES: u64 = 16 << 20;
/// Resources formatted in the embedded default's file (`r0`..`r7` at 1M..8M).
pub const EMBEDDED_RESOURCES: u64 = 8;

impl Config {
    /// Parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded default: everything under `data_dir`, host id 1, an emulated watchdog
    /// started by tenured, short timeouts so that a tour takes seconds.
    pub fn embedded(data_dir: &Path) -> Self {
        Config {
            host_name: None,
            io_timeout_s: 2,
            run_dir: data_dir.to_owned(),
            state_dir: data_dir.to_owned(),
            socket: Some(data_dir.join("tenured.sock")),
            socket_group: None,
            watchdog: WatchdogConfig {
                kind: "emulated".into(),
                device: default_watchdog_device(),
                emulated_socket: Some(data_dir.join("watchdog.sock")),
                spawn_emulator: true,
                fire_timeout_s: 10,
                // A single-host trial: no other host's leases are taken over, so assuming our
                // own short W for others costs nothing. A cluster with sanlock hosts needs 60.
                other_hosts_fire_timeout_s: Some(10),
            },
            supervision: SupervisionConfig {
                kill_grace_s: 4,
                sigkill_max: 4,
            },
            lockspaces: vec![LockspaceConfig {
                name: EMBEDDED_LOCKSPACE.into(),
                host_id: 1,
                path: data_dir.join("leases.img"),
                offset: OffsetValue::Bytes(0),
            }],
            sanlock: SanlockConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }

    /// Checks ranges and relationships.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.io_timeout_s == 0 || self.io_timeout_s > IO_TIMEOUT_MAX_S {
            return bad(format!(
                "io_timeout_s = {} (1..={IO_TIMEOUT_MAX_S})",
                self.io_timeout_s
            ));
        }
        if !matches!(self.watchdog.kind.as_str(), "device" | "emulated" | "none") {
            return bad(format!(
                "watchdog.kind = {:?} (device, emulated or none)",
                self.watchdog.kind
            ));
        }
        if self.watchdog.fire_timeout_s < 2 || self.watchdog.fire_timeout_s > 3600 {
            return bad(format!(
                "watchdog.fire_timeout_s = {} (2..=3600)",
                self.watchdog.fire_timeout_s
            ));
        }
        if let Some(w) = self.watchdog.other_hosts_fire_timeout_s {
            if w < self.watchdog.fire_timeout_s || w > 3600 {
                return bad(format!(
                    "watchdog.other_hosts_fire_timeout_s = {w} must be at least this host's \
                     watchdog.fire_timeout_s ({}) and at most 3600: the other hosts' watchdogs \
                     are assumed no faster than ours (sanlock hosts fire 60 s after their last \
                     keepalive)",
                    self.watchdog.fire_timeout_s
                ));
            }
        }
        if self.supervision.kill_grace_s + u64::from(self.supervision.sigkill_max)
            >= u64::from(self.watchdog.fire_timeout_s)
        {
            return bad(format!(
                "supervision.kill_grace_s ({}) + supervision.sigkill_max ({}) must be below \
                 watchdog.fire_timeout_s ({}): holders must be dead before the watchdog fires",
                self.supervision.kill_grace_s,
                self.supervision.sigkill_max,
                self.watchdog.fire_timeout_s
            ));
        }
        for (i, l) in self.lockspaces.iter().enumerate() {
            tenure_format::Name::new(&l.name)
                .map_err(|e| ConfigError::Invalid(format!("lockspace[{i}].name: {e}")))?;
            if l.host_id == 0 || l.host_id > 2000 {
                return bad(format!("lockspace[{i}].host_id = {} (1..=2000)", l.host_id));
            }
            l.offset.bytes()?;
        }
        Ok(())
    }

    /// The W assumed for other hosts (see [`WatchdogConfig::other_hosts_fire_timeout_s`]).
    pub fn other_hosts_fire_timeout_s(&self) -> u32 {
        self.watchdog.other_hosts_fire_timeout_s.unwrap_or(
            self.watchdog
                .fire_timeout_s
                .max(tenure_core::timeouts::WATCHDOG_FIRE_DEFAULT_S),
        )
    }

    /// The client socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("tenured.sock"))
    }

    /// The sanlock-compatible socket's directory, when enabled (`SANLOCK_RUN_DIR` honoured).
    pub fn sanlock_socket_dir(&self) -> Option<PathBuf> {
        if !self.sanlock.enabled {
            return None;
        }
        Some(self.sanlock.run_dir.clone().unwrap_or_else(|| {
            std::env::var_os("SANLOCK_RUN_DIR")
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("/run/sanlock"), PathBuf::from)
        }))
    }

    /// The emulated watchdog's socket path.
    pub fn emulated_socket(&self) -> PathBuf {
        self.watchdog
            .emulated_socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("watchdog.sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_refuses_typos_and_bad_values() {
        let text = r#"
host_name = "node-a"
io_timeout_s = 5
run_dir = "/run/x"
[watchdog]
kind = "emulated"
fire_timeout_s = 30
[supervision]
kill_grace_s = 10
sigkill_max = 5
[[lockspace]]
name = "LS"
host_id = 3
path = "/dev/sdb"
offset = "1M"
"#;
        let c = Config::parse(Path::new("t.toml"), text).expect("parse");
        assert_eq!(c.io_timeout_s, 5);
        assert_eq!(c.lockspaces[0].offset.bytes().expect("offset"), 1 << 20);
        assert_eq!(c.socket_path(), PathBuf::from("/run/x/tenured.sock"));
        let typo = Config::parse(Path::new("t.toml"), "io_timeout = 5\n");
        assert!(
            matches!(&typo, Err(ConfigError::Parse { message, .. }) if message.contains("io_timeout")),
            "{typo:?}"
        );
        let grace = Config::parse(
            Path::new("t.toml"),
            "[watchdog]\nfire_timeout_s = 10\n[supervision]\nkill_grace_s = 8\n",
        );
        assert!(
            matches!(&grace, Err(ConfigError::Invalid(m)) if m.contains("kill_grace_s")),
            "{grace:?}"
        );
        assert!(Config::parse(Path::new("t"), "[watchdog]\nkind = \"soft\"\n").is_err());
        Config::embedded(Path::new("/tmp/x"))
            .validate()
            .expect("embedded default is valid");
        // The shipped example parses and keeps the documented defaults.
        let example = Config::parse(
            Path::new("packaging/tenured.toml"),
            include_str!("../../packaging/tenured.toml"),
        )
        .expect("packaging/tenured.toml");
        assert_eq!(example.io_timeout_s, 10);
        assert_eq!(example.watchdog.fire_timeout_s, 60);
        assert_eq!(example.supervision.kill_grace_s, 40);
        assert_eq!(example.other_hosts_fire_timeout_s(), 60);
        assert_eq!(example.metrics.listen, None, "metrics are off by default");
        let m = Config::parse(Path::new("t"), "[metrics]\nlisten = \"127.0.0.1:9478\"\n")
            .expect("metrics");
        assert_eq!(m.metrics.listen, Some("127.0.0.1:9478".parse().unwrap()));
        for bad in [
            "listen = \"localhost\"",
            "listen = \"127.0.0.1\"",
            "port = 1",
        ] {
            let r = Config::parse(Path::new("t"), &format!("[metrics]\n{bad}\n"));
            assert!(matches!(&r, Err(ConfigError::Parse { .. })), "{bad}: {r:?}");
        }
    }

    #[test]
    fn other_hosts_w_defaults_to_sanlocks_and_is_never_below_ours() {
        let parse = |t: &str| Config::parse(Path::new("t.toml"), t);
        let short = parse(
            "[watchdog]\nfire_timeout_s = 8\n[supervision]\nkill_grace_s = 2\nsigkill_max = 2\n",
        )
        .expect("short W");
        assert_eq!(
            short.other_hosts_fire_timeout_s(),
            60,
            "sanlock's W unless told"
        );
        let long = parse("[watchdog]\nfire_timeout_s = 90\n").expect("long W");
        assert_eq!(long.other_hosts_fire_timeout_s(), 90);
        let set = parse("[watchdog]\nfire_timeout_s = 20\nother_hosts_fire_timeout_s = 30\n[supervision]\nkill_grace_s = 5\n")
            .expect("explicit");
        assert_eq!(set.other_hosts_fire_timeout_s(), 30);
        let below = parse("[watchdog]\nfire_timeout_s = 60\nother_hosts_fire_timeout_s = 8\n");
        assert!(
            matches!(&below, Err(ConfigError::Invalid(m)) if m.contains("other_hosts_fire_timeout_s")),
            "{below:?}"
        );
        assert_eq!(
            Config::embedded(Path::new("/tmp/x")).other_hosts_fire_timeout_s(),
            10
        );
    }
}
