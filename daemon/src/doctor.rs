//! `tenure doctor`: do the timeouts of every layer agree? Reads tenured.toml, the watchdog
//! device's limits, multipath's configuration, the NFS mount options of lease files, libvirt's
//! qemu-sanlock.conf and the other hosts' io_timeout as their delta leases record it, and
//! prints findings with a severity and the fix (docs/operations.md "Checking the timeouts").
//!
//! The checks are pure functions of text and records ([`diagnose`]); [`gather`] reads them
//! off this machine. Exit code: 0 when the worst finding is ok or info, 1 for a warning, 2 for
//! an error.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tenure_format::area::SlotReport;
use tenure_watchdog::device::SysfsInfo;

use crate::config::Config;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Worth knowing.
    Info,
    /// Works, but a failure will take longer or cost more than it should.
    Warn,
    /// A failure will lose leases, reset hosts spuriously, or nothing fences this host.
    Error,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Which check: `watchdog`, `supervision`, `multipath`, `nfs`, `libvirt`, `other_hosts`.
    pub check: &'static str,
    /// What was found.
    pub message: String,
    /// What to change, when something should.
    pub fix: Option<String>,
}

fn finding(
    severity: Severity,
    check: &'static str,
    message: String,
    fix: Option<String>,
) -> Finding {
    Finding {
        severity,
        check,
        message,
        fix,
    }
}

/// What the checks look at.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// tenured's configuration.
    pub config: Config,
    /// The watchdog device's sysfs limits, when it has them.
    pub watchdog_sysfs: Option<SysfsInfo>,
    /// Whether the watchdog device exists.
    pub watchdog_exists: bool,
    /// multipath's configuration (`multipath -t`, or /etc/multipath.conf).
    pub multipath: Option<String>,
    /// /proc/self/mountinfo.
    pub mountinfo: String,
    /// Paths of lease files and areas (the configured lockspaces', libvirt's lease directory).
    pub lease_paths: Vec<PathBuf>,
    /// libvirt's qemu-sanlock.conf.
    pub qemu_sanlock: Option<String>,
    /// The slots in use of each configured lockspace.
    pub slots: Vec<LockspaceSlots>,
}

/// A configured lockspace's slots in use as read from its area: (name, our host id, slots),
/// or why they could not be read.
pub type LockspaceSlots = (String, u64, Result<Vec<SlotReport>, String>);

/// Every finding for `inputs`, worst first.
pub fn diagnose(inputs: &Inputs) -> Vec<Finding> {
    let t = inputs.config.io_timeout_s;
    let mut out = Vec::new();
    out.extend(check_watchdog(inputs));
    out.extend(check_supervision(&inputs.config));
    if let Some(m) = &inputs.multipath {
        out.extend(check_multipath(m, t));
    }
    out.extend(check_nfs(&inputs.mountinfo, &inputs.lease_paths, t));
    if let Some(q) = &inputs.qemu_sanlock {
        out.extend(check_libvirt(q, t));
    }
    out.extend(check_other_hosts(&inputs.config, &inputs.slots));
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The exit code for the worst finding.
pub fn exit_code(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.severity).max() {
        Some(Severity::Error) => 2,
        Some(Severity::Warn) => 1,
        _ => 0,
    }
}

fn check_watchdog(i: &Inputs) -> Vec<Finding> {
    let w = &i.config.watchdog;
    let fire = w.fire_timeout_s;
    match w.kind.as_str() {
        "none" => vec![finding(
            Severity::Error,
            "watchdog",
            "watchdog kind is none: nothing resets this host if it loses a lockspace with a holder that cannot be killed".into(),
            Some("set [watchdog] kind = \"device\" (load softdog if there is no hardware watchdog)".into()),
        )],
        "emulated" => vec![finding(
            Severity::Warn,
            "watchdog",
            "watchdog kind is emulated: a test bed, it kills processes but cannot reset the machine".into(),
            Some("use kind = \"device\" on a production host".into()),
        )],
        _ => {
            let dev = w.device.display();
            if !i.watchdog_exists {
                return vec![finding(
                    Severity::Error,
                    "watchdog",
                    format!("watchdog device {dev} does not exist"),
                    Some("load the driver of the hardware watchdog, or `modprobe softdog`".into()),
                )];
            }
            match i.watchdog_sysfs.as_ref().and_then(|s| s.max_timeout_s) {
                Some(max) if max < fire => vec![finding(
                    Severity::Error,
                    "watchdog",
                    format!("{dev} fires after at most {max} s, fire_timeout_s is {fire}"),
                    Some(format!(
                        "lower [watchdog] fire_timeout_s to {max} or below on every host (and other_hosts_fire_timeout_s with it)"
                    )),
                )],
                Some(max) => vec![finding(
                    Severity::Ok,
                    "watchdog",
                    format!("{dev} can fire after {fire} s (its maximum: {max} s)"),
                    None,
                )],
                None => vec![finding(
                    Severity::Info,
                    "watchdog",
                    format!("{dev}: no sysfs limits to check fire_timeout_s {fire} against; `tenure watchdog probe` opens it and checks"),
                    None,
                )],
            }
        }
    }
}

fn check_supervision(cfg: &Config) -> Vec<Finding> {
    let s = &cfg.supervision;
    let w = cfg.watchdog.fire_timeout_s;
    let kill = s.kill_grace_s + u64::from(s.sigkill_max);
    let mut out = vec![if kill < u64::from(w) {
        finding(
            Severity::Ok,
            "supervision",
            format!("holders are dead {kill} s after a lockspace is lost (kill_grace_s + sigkill_max), before the watchdog fires ({w} s)"),
            None,
        )
    } else {
        finding(
            Severity::Error,
            "supervision",
            format!("killing holders takes up to {kill} s, not less than the watchdog's {w} s: the host is reset before the kills end"),
            Some("lower [supervision] kill_grace_s / sigkill_max, or raise fire_timeout_s".into()),
        )
    }];
    let other = cfg.other_hosts_fire_timeout_s();
    if other < 60 {
        out.push(finding(
            Severity::Info,
            "supervision",
            format!("other hosts are assumed to fire within {other} s (sanlock hosts use 60 s): correct only if every host of the cluster runs tenured with fire_timeout_s ≤ {other}"),
            None,
        ));
    }
    out
}

/// Keys of multipath's configuration, section by section: (section path, key, value).
fn multipath_keys(text: &str) -> Vec<(String, String, String)> {
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line == "}" {
            stack.pop();
            continue;
        }
        if let Some(name) = line.strip_suffix('{') {
            stack.push(name.trim().to_owned());
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        out.push((stack.join("/"), k.to_owned(), v));
    }
    out
}

fn check_multipath(text: &str, t: u64) -> Vec<Finding> {
    let keys = multipath_keys(text);
    let polling: u64 = keys
        .iter()
        .find(|(s, k, _)| s == "defaults" && k == "polling_interval")
        .and_then(|(_, _, v)| v.parse().ok())
        .unwrap_or(5);
    let limit = 8 * t;
    let mut out = Vec::new();
    for (section, k, v) in keys.iter().filter(|(_, k, _)| k == "no_path_retry") {
        let _ = k;
        let at = if section.is_empty() {
            "top level"
        } else {
            section
        };
        let f = match v.as_str() {
            "queue" => finding(
                Severity::Error,
                "multipath",
                format!("no_path_retry queue ({at}): with every path down, I/O queues forever; renewals hang instead of failing, and once paths return a queued write may land after the lockspace was lost"),
                Some(format!("set no_path_retry to at most {} ({}×{polling} s < 8T = {limit} s)", (limit.saturating_sub(1)) / polling.max(1), (limit.saturating_sub(1)) / polling.max(1))),
            ),
            "fail" => finding(
                Severity::Ok,
                "multipath",
                format!("no_path_retry fail ({at}): I/O fails at once when every path is down"),
                None,
            ),
            n => match n.parse::<u64>() {
                Ok(n) if n * polling < limit => finding(
                    Severity::Ok,
                    "multipath",
                    format!("no_path_retry {n} × polling_interval {polling} s = {} s ({at}) < 8T = {limit} s", n * polling),
                    None,
                ),
                Ok(n) => finding(
                    Severity::Error,
                    "multipath",
                    format!("no_path_retry {n} × polling_interval {polling} s = {} s ({at}): I/O queues at least as long as 8T = {limit} s, so the lockspace is lost (holders killed) before multipath gives up", n * polling),
                    Some(format!("set no_path_retry to at most {}", (limit.saturating_sub(1)) / polling.max(1))),
                ),
                Err(_) => finding(
                    Severity::Warn,
                    "multipath",
                    format!("no_path_retry {n:?} ({at}) is not a number, queue or fail"),
                    None,
                ),
            },
        };
        out.push(f);
    }
    if out.is_empty() {
        out.push(finding(
            Severity::Info,
            "multipath",
            "no no_path_retry in multipath's configuration: the driver's built-in default applies (many queue: check `multipath -t`)".into(),
            None,
        ));
    }
    out
}

/// The mount of `path` in mountinfo text: (mount point, fstype, mount options + super options).
fn mount_of<'a>(mountinfo: &'a str, path: &Path) -> Option<(&'a str, &'a str, String)> {
    let mut best: Option<(&str, &str, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mp), Some(opts), Some(fstype)) =
            (fields.get(4), fields.get(5), fields.get(sep + 1))
        else {
            continue;
        };
        let superopts = fields.get(sep + 3).copied().unwrap_or("");
        if path.starts_with(mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0.len()) {
            best = Some((mp, fstype, format!("{opts},{superopts}")));
        }
    }
    best
}

fn check_nfs(mountinfo: &str, paths: &[PathBuf], t: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in paths {
        let Some((mp, fstype, opts)) = mount_of(mountinfo, p) else {
            continue;
        };
        if !fstype.starts_with("nfs") {
            continue;
        }
        let opt = |k: &str| {
            opts.split(',')
                .find_map(|o| o.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let soft = opts.split(',').any(|o| o == "soft" || o == "softerr");
        let (timeo, retrans) = (opt("timeo").unwrap_or(600), opt("retrans").unwrap_or(2));
        let error_after = timeo * (retrans + 1) / 10;
        let what = format!("{} on {mp} ({fstype})", p.display());
        out.push(if soft && error_after > 8 * t {
            finding(
                Severity::Warn,
                "nfs",
                format!("{what}: soft, timeo={timeo} retrans={retrans}: an I/O error comes after about {error_after} s, later than 8T = {} s", 8 * t),
                Some(format!("lower timeo/retrans so that timeo/10 × (retrans + 1) ≤ {} s, or mount hard", 8 * t)),
            )
        } else if soft {
            finding(
                Severity::Ok,
                "nfs",
                format!("{what}: soft, I/O errors within about {error_after} s ≤ 8T = {} s", 8 * t),
                None,
            )
        } else {
            finding(
                Severity::Info,
                "nfs",
                format!("{what}: hard: I/O to an unreachable server hangs; tenured's deadlines cover it (the lockspace is lost 8T = {} s after its last renewal, its holders killed)", 8 * t),
                None,
            )
        });
    }
    out
}

/// `key = value` lines of qemu-sanlock.conf.
fn conf_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

fn check_libvirt(text: &str, t: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    let auto = conf_value(text, "auto_disk_leases").is_some_and(|v| v == "1");
    if auto && conf_value(text, "host_id").is_none_or(|v| v == "0") {
        out.push(finding(
            Severity::Error,
            "libvirt",
            "qemu-sanlock.conf: auto_disk_leases = 1 without a host_id: libvirt cannot join its lockspace".into(),
            Some("set host_id (unique per host, 1..2000) in /etc/libvirt/qemu-sanlock.conf".into()),
        ));
    }
    match conf_value(text, "io_timeout").map(str::parse::<u64>) {
        Some(Ok(v)) if v != 0 && v != t => out.push(finding(
            Severity::Warn,
            "libvirt",
            format!("qemu-sanlock.conf io_timeout = {v}, tenured's io_timeout_s = {t}: libvirt's lockspace renews with T = {v} (lost after {} s), the others with T = {t}", 8 * v),
            Some(format!("use one T everywhere: io_timeout = {t} in qemu-sanlock.conf, or io_timeout_s = {v} in tenured.toml")),
        )),
        Some(Ok(_)) | None => out.push(finding(
            Severity::Ok,
            "libvirt",
            format!("libvirt's lockspace uses tenured's io_timeout ({t} s)"),
            None,
        )),
        Some(Err(_)) => out.push(finding(
            Severity::Warn,
            "libvirt",
            "qemu-sanlock.conf io_timeout is not a number".into(),
            None,
        )),
    }
    out
}

fn check_other_hosts(cfg: &Config, slots: &[LockspaceSlots]) -> Vec<Finding> {
    let t = cfg.io_timeout_s;
    let w = cfg.other_hosts_fire_timeout_s();
    let mut out = Vec::new();
    for (ls, me, r) in slots {
        let slots = match r {
            Ok(s) => s,
            Err(e) => {
                out.push(finding(
                    Severity::Warn,
                    "other_hosts",
                    format!("lockspace {ls}: its area cannot be read: {e}"),
                    None,
                ));
                continue;
            }
        };
        let mut others = 0;
        for s in slots
            .iter()
            .filter(|s| s.host_id != *me && s.timestamp != 0)
        {
            others += 1;
            let theirs = u64::from(s.io_timeout);
            if theirs != t {
                out.push(finding(
                    Severity::Warn,
                    "other_hosts",
                    format!(
                        "lockspace {ls}: host {} ({}) renews with io_timeout {theirs} s, this host with {t} s: its leases are taken {} s after its last renewal, ours after {} s",
                        s.host_id,
                        s.owner_name.escaped(),
                        8 * theirs + u64::from(w),
                        8 * t + u64::from(w)
                    ),
                    Some("use the same io_timeout on every host of a lockspace".into()),
                ));
            }
        }
        out.push(finding(
            Severity::Ok,
            "other_hosts",
            format!("lockspace {ls}: {others} other hosts recorded; W assumed for them: {w} s"),
            None,
        ));
    }
    out
}

/// Reads the inputs off this machine; `paths` overrides where each file is read from.
pub fn gather(
    config: Config,
    multipath_conf: Option<&Path>,
    mountinfo: &Path,
    qemu_sanlock_conf: &Path,
    read_storage: bool,
) -> Inputs {
    let device = config.watchdog.device.clone();
    let multipath = match multipath_conf {
        Some(p) => std::fs::read_to_string(p).ok(),
        None => std::process::Command::new("multipath")
            .arg("-t")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .or_else(|| std::fs::read_to_string("/etc/multipath.conf").ok()),
    };
    let qemu_sanlock = std::fs::read_to_string(qemu_sanlock_conf).ok();
    let mut lease_paths: Vec<PathBuf> = config.lockspaces.iter().map(|l| l.path.clone()).collect();
    if let Some(q) = &qemu_sanlock {
        lease_paths.push(PathBuf::from(
            conf_value(q, "disk_lease_dir").unwrap_or("/var/lib/libvirt/sanlock"),
        ));
    }
    let mut slots = Vec::new();
    if read_storage {
        for l in &config.lockspaces {
            let r = l
                .offset
                .bytes()
                .map_err(|e| e.to_string())
                .and_then(|off| {
                    tenure_core::direct::dump(
                        &l.path,
                        off,
                        Some(1 << 20),
                        tenure_core::direct::BackendKind::Auto,
                    )
                    .map_err(|e| e.to_string())
                })
                .map(|d| {
                    d.areas
                        .into_iter()
                        .find_map(|a| match a {
                            tenure_format::AreaReport::Lockspace { slots_in_use, .. } => {
                                Some(slots_in_use)
                            }
                            _ => None,
                        })
                        .unwrap_or_default()
                });
            slots.push((l.name.clone(), l.host_id, r));
        }
    }
    Inputs {
        watchdog_sysfs: tenure_watchdog::device::sysfs_info(&device),
        watchdog_exists: device.exists(),
        config,
        multipath,
        mountinfo: std::fs::read_to_string(mountinfo).unwrap_or_default(),
        lease_paths,
        qemu_sanlock,
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            io_timeout_s: 10,
            ..Config::default()
        }
    }

    fn worst(f: &[Finding], check: &str) -> Severity {
        f.iter()
            .filter(|x| x.check == check)
            .map(|x| x.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    #[test]
    fn multipath_queueing_past_8t_is_an_error_and_fail_is_fine() {
        let conf = "defaults {\n  polling_interval 10\n  no_path_retry 4 # vdsm's\n}\ndevices {\n  device {\n    vendor \"X\"\n    no_path_retry queue\n  }\n}\n";
        let f = check_multipath(conf, 10);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            f.iter()
                .find(|x| x.message.contains("4 ×"))
                .unwrap()
                .severity,
            Severity::Ok
        );
        let q = f.iter().find(|x| x.message.contains("queue")).unwrap();
        assert_eq!(q.severity, Severity::Error);
        assert!(q.message.contains("devices/device"), "{q:?}");
        assert!(q.fix.as_deref().unwrap().contains("at most 7"), "{q:?}");
        let f = check_multipath("defaults {\n no_path_retry 20\n}\n", 10);
        assert_eq!(
            f[0].severity,
            Severity::Error,
            "20 × 5 s = 100 s ≥ 80 s: {f:?}"
        );
        assert_eq!(
            check_multipath("defaults {\n no_path_retry fail\n}", 10)[0].severity,
            Severity::Ok
        );
        assert_eq!(check_multipath("", 10)[0].severity, Severity::Info);
    }

    #[test]
    fn nfs_soft_mounts_erring_after_8t_warn_and_hard_ones_inform() {
        let mi = "36 25 0:32 / /var/lib/libvirt/sanlock rw,relatime shared:1 - nfs4 srv:/leases rw,vers=4.2,soft,timeo=600,retrans=2\n\
                  37 25 0:33 / /mnt/fast rw - nfs srv:/fast rw,soft,timeo=50,retrans=1\n\
                  38 25 0:34 / /mnt/hard rw - nfs4 srv:/h rw,hard,timeo=600\n\
                  24 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        let paths = [
            PathBuf::from("/var/lib/libvirt/sanlock/__LIBVIRT__DISKS__"),
            PathBuf::from("/mnt/fast/ls"),
            PathBuf::from("/mnt/hard/ls"),
            PathBuf::from("/dev/mapper/leases"),
        ];
        let f = check_nfs(mi, &paths, 10);
        assert_eq!(f.len(), 3, "the block device is no NFS mount: {f:?}");
        assert_eq!(f[0].severity, Severity::Warn, "180 s > 80 s: {f:?}");
        assert_eq!(f[1].severity, Severity::Ok, "10 s: {f:?}");
        assert_eq!(f[2].severity, Severity::Info, "{f:?}");
    }

    #[test]
    fn libvirt_timeouts_and_host_id_are_checked() {
        let f = check_libvirt("auto_disk_leases = 1\nio_timeout = 5\n", 10);
        assert_eq!(worst(&f, "libvirt"), Severity::Error, "{f:?}");
        assert!(f
            .iter()
            .any(|x| x.severity == Severity::Warn && x.message.contains("io_timeout = 5")));
        let f = check_libvirt("auto_disk_leases = 1\nhost_id = 3\n", 10);
        assert_eq!(worst(&f, "libvirt"), Severity::Ok, "{f:?}");
    }

    #[test]
    fn watchdog_and_supervision_findings() {
        let mut i = Inputs {
            config: cfg(),
            ..Inputs::default()
        };
        i.config.watchdog.kind = "none".into();
        assert_eq!(worst(&check_watchdog(&i), "watchdog"), Severity::Error);
        i.config.watchdog.kind = "device".into();
        assert_eq!(
            worst(&check_watchdog(&i), "watchdog"),
            Severity::Error,
            "missing device"
        );
        i.watchdog_exists = true;
        i.watchdog_sysfs = Some(SysfsInfo {
            identity: None,
            timeout_s: None,
            min_timeout_s: Some(1),
            max_timeout_s: Some(30),
            nowayout: None,
            state: None,
        });
        let f = check_watchdog(&i);
        assert_eq!(f[0].severity, Severity::Error, "30 s < 60 s: {f:?}");
        i.config.watchdog.fire_timeout_s = 30;
        assert_eq!(check_watchdog(&i)[0].severity, Severity::Ok);
        let mut c = cfg();
        c.supervision.kill_grace_s = 70;
        assert_eq!(
            worst(&check_supervision(&c), "supervision"),
            Severity::Error
        );
    }

    #[test]
    fn other_hosts_with_another_io_timeout_are_named() {
        let slot = |host_id, t| SlotReport {
            host_id,
            owner_id: host_id,
            owner_name: tenure_format::Name::new(&format!("node-{host_id}")).unwrap(),
            generation: 1,
            timestamp: 100,
            io_timeout: t,
            bitmap: Vec::new(),
            write_id: 0,
            write_generation: 0,
            write_timestamp: 0,
        };
        let slots = vec![
            (
                "vms".to_owned(),
                1,
                Ok(vec![slot(1, 10), slot(2, 10), slot(3, 20)]),
            ),
            ("other".to_owned(), 1, Err("EIO".to_owned())),
        ];
        let f = check_other_hosts(&cfg(), &slots);
        let warns: Vec<_> = f.iter().filter(|x| x.severity == Severity::Warn).collect();
        assert_eq!(warns.len(), 2, "{f:?}");
        assert!(warns
            .iter()
            .any(|x| x.message.contains("host 3 (node-3)") && x.message.contains("220 s")));
        assert!(warns.iter().any(|x| x.message.contains("cannot be read")));
        assert_eq!(exit_code(&f), 1);
        let all = diagnose(&Inputs {
            config: cfg(),
            slots,
            ..Inputs::default()
        });
        assert_eq!(
            all[0].severity,
            Severity::Error,
            "worst first (no watchdog device): {all:?}"
        );
        assert_eq!(exit_code(&all), 2);
    }
}
