//! `tenure cluster PATH[:OFFSET]`: the whole cluster as the storage shows it, from any host and
//! with no daemon: every host id of the lockspace at OFFSET (its name, generation, io_timeout,
//! and whether it renews — from two reads at least one renewal apart) and every lease of the
//! lockspace's resources found on the device (owner host and name, mode, lver, shared holders,
//! requests). Works on sanlock-written areas: the formats are the same.
//!
//! [`view`] is a pure function of the two reads and the scan; [`run`] does the reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tenure_core::direct::{self, BackendKind};
use tenure_format::area::SlotReport;
use tenure_format::{AreaReport, Name};

/// One host id as seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRow {
    /// Host id.
    pub host_id: u64,
    /// Its owner name.
    pub name: String,
    /// Generation.
    pub generation: u64,
    /// Its io_timeout as recorded.
    pub io_timeout_s: u16,
    /// `live` (renewed between the reads), `fail` (not renewed while watched, not yet long
    /// enough to be dead), `dead` (not renewed for 8T + W, its own T), or `free`.
    pub status: &'static str,
    /// How long it was watched without a renewal (0 when live).
    pub unchanged_for_s: u64,
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// Resource name.
    pub resource: String,
    /// Area offset.
    pub offset: u64,
    /// `exclusive`, `shared` or `free`.
    pub mode: &'static str,
    /// Lease version.
    pub lver: u64,
    /// Exclusive owner: host id, generation, and its name when its slot has that generation.
    pub owner: Option<(u64, u64, Option<String>)>,
    /// Shared holders: (host id, generation).
    pub shared: Vec<(u64, u64)>,
    /// A request record: (lver, force mode).
    pub request: Option<(u64, u32)>,
}

/// The cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// Lockspace name.
    pub lockspace: String,
    /// Seconds between the two reads.
    pub watched_s: u64,
    /// Host ids in use.
    pub hosts: Vec<HostRow>,
    /// Leases of the lockspace's resources.
    pub leases: Vec<LeaseRow>,
    /// How the resources were found: "rindex" (the areas the resource index lists) or
    /// "scan" (every area of the device).
    pub found_by: &'static str,
}

/// The view from two reads of the lockspace's slots `watched` apart, and the areas scanned;
/// `w` is the W assumed for every host.
pub fn view(
    lockspace: &Name,
    first: &[SlotReport],
    second: &[SlotReport],
    watched: Duration,
    w: u32,
    areas: &[AreaReport],
) -> ClusterView {
    let before: BTreeMap<u64, &SlotReport> = first.iter().map(|s| (s.host_id, s)).collect();
    let mut hosts = Vec::new();
    for s in second {
        let status = if s.timestamp == 0 {
            "free"
        } else if before
            .get(&s.host_id)
            .is_none_or(|b| b.timestamp != s.timestamp || b.generation != s.generation)
        {
            "live"
        } else if watched.as_secs() >= 8 * u64::from(s.io_timeout.max(1)) + u64::from(w) {
            "dead"
        } else {
            "fail"
        };
        hosts.push(HostRow {
            host_id: s.host_id,
            name: s.owner_name.escaped(),
            generation: s.generation,
            io_timeout_s: s.io_timeout,
            status,
            unchanged_for_s: if status == "fail" || status == "dead" {
                watched.as_secs()
            } else {
                0
            },
        });
    }
    let name_of = |host: u64, generation: u64| {
        second
            .iter()
            .find(|s| s.host_id == host && s.generation == generation)
            .map(|s| s.owner_name.escaped())
    };
    let mut leases = Vec::new();
    for a in areas {
        let AreaReport::Resource {
            offset,
            leader: Some(l),
            request,
            dblocks,
            ..
        } = a
        else {
            continue;
        };
        if l.space_name != *lockspace {
            continue;
        }
        let shared: Vec<(u64, u64)> = dblocks
            .iter()
            .filter_map(|d| {
                let m = d.mode_block?;
                m.is_shared().then_some((d.host_id, m.generation))
            })
            .collect();
        let exclusive = l.timestamp != 0 && l.owner_id != 0;
        let mode = if exclusive {
            "exclusive"
        } else if !shared.is_empty() {
            "shared"
        } else {
            "free"
        };
        leases.push(LeaseRow {
            resource: l.resource_name.escaped(),
            offset: *offset,
            mode,
            lver: l.lver,
            owner: exclusive.then(|| {
                (
                    l.owner_id,
                    l.owner_generation,
                    name_of(l.owner_id, l.owner_generation),
                )
            }),
            shared,
            request: request
                .filter(|r| r.lver != 0 || r.force_mode != 0)
                .map(|r| (r.lver, r.force_mode)),
        });
    }
    ClusterView {
        lockspace: lockspace.escaped(),
        watched_s: watched.as_secs(),
        hosts,
        leases,
        found_by: "scan",
    }
}

/// The lockspace's name and slots at `offset` of `path`.
fn slots(
    path: &Path,
    offset: u64,
    backend: BackendKind,
) -> Result<(Name, Vec<SlotReport>), String> {
    let d = direct::dump(path, offset, Some(1 << 20), backend).map_err(|e| e.to_string())?;
    for a in d.areas {
        if let AreaReport::Lockspace {
            name, slots_in_use, ..
        } = a
        {
            let name = name.ok_or("the lockspace's name is unreadable")?;
            return Ok((name, slots_in_use));
        }
    }
    Err(format!(
        "no lockspace area at offset {offset} of {}",
        path.display()
    ))
}

/// Reads the lockspace at `offset` twice, `wait` apart (default: one renewal of its slowest
/// host, 2T + 1 s), and finds the lockspace's resources: through the resource index at
/// `rindex` (only the areas it lists are read), else by scanning the whole device.
pub fn run(
    path: &Path,
    offset: u64,
    wait: Option<Duration>,
    w: u32,
    rindex: Option<u64>,
    backend: BackendKind,
) -> Result<ClusterView, String> {
    let (name, first) = slots(path, offset, backend)?;
    let t_max = first
        .iter()
        .map(|s| s.io_timeout)
        .max()
        .unwrap_or(10)
        .max(1);
    let wait = wait.unwrap_or(Duration::from_secs(2 * u64::from(t_max) + 1));
    eprintln!(
        "tenure cluster: lockspace {}: {} host ids in use; reading again in {} s",
        name.escaped(),
        first.iter().filter(|s| s.timestamp != 0).count(),
        wait.as_secs()
    );
    std::thread::sleep(wait);
    let (_, second) = slots(path, offset, backend)?;
    let areas = match rindex {
        None => {
            direct::dump(path, 0, None, backend)
                .map_err(|e| e.to_string())?
                .areas
        }
        Some(rx) => indexed_areas(path, rx, &name, backend)?,
    };
    let mut v = view(&name, &first, &second, wait, w, &areas);
    v.found_by = if rindex.is_some() { "rindex" } else { "scan" };
    Ok(v)
}

/// The areas a resource index lists, each read on its own.
fn indexed_areas(
    path: &Path,
    rx: u64,
    lockspace: &Name,
    backend: BackendKind,
) -> Result<Vec<AreaReport>, String> {
    let index = tenure_core::direct::rindex::Rindex::open(path, rx, lockspace, backend)
        .map_err(|e| format!("resource index at {rx}: {e}"))?;
    let area = index.geometry().area_bytes();
    let mut areas = Vec::new();
    for e in index.entries() {
        let r = direct::dump(path, e.offset, Some(area), backend).map_err(|err| {
            format!(
                "{} at {} (listed by the index): {err}",
                e.name.escaped(),
                e.offset
            )
        })?;
        areas.extend(r.areas);
    }
    Ok(areas)
}

/// The tables.
pub fn render(v: &ClusterView) -> String {
    let mut out = format!(
        "lockspace {} (watched {} s; resources found by {})\n{:<8} {:<40} {:>10} {:>4} {:<6}\n",
        v.lockspace, v.watched_s, v.found_by, "HOST", "NAME", "GENERATION", "T", "STATUS"
    );
    for h in &v.hosts {
        out.push_str(&format!(
            "{:<8} {:<40} {:>10} {:>4} {:<6}\n",
            h.host_id, h.name, h.generation, h.io_timeout_s, h.status
        ));
    }
    out.push_str(&format!(
        "\n{:<36} {:>10} {:<9} {:>6} {:<40} REQUEST\n",
        "RESOURCE", "OFFSET", "MODE", "LVER", "OWNER / SHARED"
    ));
    for l in &v.leases {
        let who = match (&l.owner, l.shared.is_empty()) {
            (Some((id, g, name)), _) => format!(
                "host {id} gen {g}{}",
                name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            (None, false) => l
                .shared
                .iter()
                .map(|(id, g)| format!("{id}/{g}"))
                .collect::<Vec<_>>()
                .join(" "),
            (None, true) => "-".into(),
        };
        let req = l
            .request
            .map_or("-".into(), |(lv, f)| format!("lver {lv} force {f}"));
        out.push_str(&format!(
            "{:<36} {:>10} {:<9} {:>6} {:<40} {req}\n",
            l.resource, l.offset, l.mode, l.lver, who
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_format::area::DblockReport;
    use tenure_format::paxos::{Dblock, ModeBlock, RequestRecord};
    use tenure_format::{Geometry, LeaderRecord};

    fn slot(host_id: u64, generation: u64, timestamp: u64, t: u16) -> SlotReport {
        SlotReport {
            host_id,
            owner_id: host_id,
            owner_name: Name::new(&format!("node-{host_id}")).unwrap(),
            generation,
            timestamp,
            io_timeout: t,
            bitmap: Vec::new(),
            write_id: 0,
            write_generation: 0,
            write_timestamp: 0,
        }
    }

    fn resource(
        name: &str,
        owner: u64,
        generation: u64,
        ts: u64,
        shared: &[(u64, u64)],
    ) -> AreaReport {
        let ls = Name::new("LS").unwrap();
        let leader = LeaderRecord {
            owner_id: owner,
            owner_generation: generation,
            timestamp: ts,
            lver: 7,
            ..LeaderRecord::new_paxos_free(Geometry::LEGACY_512, ls, Name::new(name).unwrap(), 2000)
        };
        AreaReport::Resource {
            offset: 1 << 20,
            geometry: Geometry::LEGACY_512,
            cleared: false,
            leader: Some(leader),
            request: Some(RequestRecord {
                lver: 8,
                force_mode: 1,
                ..RequestRecord::FORMATTED
            }),
            dblocks: shared
                .iter()
                .map(|&(h, g)| DblockReport {
                    host_id: h,
                    dblock: Dblock::default(),
                    mode_block: Some(ModeBlock {
                        flags: 1,
                        unused: 0,
                        generation: g,
                    }),
                })
                .collect(),
            lvb_hex: None,
            problems: Vec::new(),
            note: None,
        }
    }

    #[test]
    fn hosts_are_live_fail_or_dead_by_what_two_reads_show() {
        let ls = Name::new("LS").unwrap();
        let first = [
            slot(1, 3, 100, 10),
            slot(2, 1, 50, 1),
            slot(3, 2, 70, 10),
            slot(4, 1, 0, 10),
        ];
        let second = [
            slot(1, 3, 120, 10),
            slot(2, 1, 50, 1),
            slot(3, 2, 70, 10),
            slot(4, 1, 0, 10),
        ];
        // 21 s: host 2 (T = 1) is dead after 8 + 10; host 3 (T = 10) only fails.
        let v = view(&ls, &first, &second, Duration::from_secs(21), 10, &[]);
        let st: Vec<(u64, &str)> = v.hosts.iter().map(|h| (h.host_id, h.status)).collect();
        assert_eq!(st, vec![(1, "live"), (2, "dead"), (3, "fail"), (4, "free")]);
        assert_eq!(v.hosts[2].unchanged_for_s, 21);
        // A new generation counts as a renewal (it rejoined).
        let v = view(
            &ls,
            &[slot(1, 3, 100, 10)],
            &[slot(1, 4, 100, 10)],
            Duration::from_secs(21),
            10,
            &[],
        );
        assert_eq!(v.hosts[0].status, "live");
    }

    #[test]
    fn leases_show_owner_names_modes_and_requests() {
        let ls = Name::new("LS").unwrap();
        let hosts = [slot(1, 3, 120, 10), slot(2, 1, 60, 10)];
        let other = {
            let mut a = resource("X", 1, 3, 9, &[]);
            if let AreaReport::Resource {
                leader: Some(l), ..
            } = &mut a
            {
                l.space_name = Name::new("OTHER").unwrap();
            }
            a
        };
        let areas = [
            resource("vm-1", 1, 3, 99, &[]),
            resource("vm-2", 2, 1, 0, &[(1, 3), (2, 1)]),
            resource("vm-3", 2, 5, 44, &[]),
            other,
        ];
        let v = view(&ls, &hosts, &hosts, Duration::from_secs(3), 60, &areas);
        assert_eq!(
            v.leases.len(),
            3,
            "another lockspace's resource is not listed"
        );
        assert_eq!(v.leases[0].mode, "exclusive");
        assert_eq!(v.leases[0].owner, Some((1, 3, Some("node-1".into()))));
        assert_eq!(v.leases[0].request, Some((8, 1)));
        assert_eq!(v.leases[1].mode, "shared");
        assert_eq!(v.leases[1].shared, vec![(1, 3), (2, 1)]);
        assert_eq!(
            v.leases[2].owner,
            Some((2, 5, None)),
            "an owner generation no slot has"
        );
        let text = render(&v);
        assert!(
            text.contains("host 1 gen 3 (node-1)") && text.contains("1/3 2/1"),
            "{text}"
        );
    }

    #[test]
    fn the_resource_index_limits_what_is_read_to_the_areas_it_lists() {
        use tenure_core::direct::{format_lockspace, format_resource, rindex, FormatOptions};
        use tenure_format::{LockspaceSpec, ResourceSpec};
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let p = dir.path().join("leases");
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(8 << 20))
            .expect("file");
        let d = p.display();
        let ls = LockspaceSpec::parse(&format!("LS:0:{d}:0")).expect("spec");
        format_lockspace(&ls, FormatOptions::default(), 1).expect("lockspace");
        for (name, mb) in [("a", 3), ("b", 4), ("unlisted", 5)] {
            let r = ResourceSpec::parse(&format!("LS:{name}:{d}:{mb}M")).expect("spec");
            format_resource(&r, FormatOptions::default(), None).expect("resource");
        }
        let lsname = Name::new("LS").expect("name");
        rindex::format(&p, 1 << 20, lsname, 0, FormatOptions::default()).expect("rindex");
        let mut rx = rindex::Rindex::open(&p, 1 << 20, &lsname, BackendKind::Sync).expect("open");
        rx.add(&Name::new("a").expect("a"), 3 << 20).expect("add a");
        rx.add(&Name::new("b").expect("b"), 4 << 20).expect("add b");
        let names = |v: &ClusterView| -> Vec<String> {
            v.leases.iter().map(|l| l.resource.clone()).collect()
        };
        let by_index = run(
            &p,
            0,
            Some(Duration::ZERO),
            60,
            Some(1 << 20),
            BackendKind::Sync,
        )
        .expect("run");
        assert_eq!(by_index.found_by, "rindex");
        assert_eq!(names(&by_index), ["a", "b"]);
        let scanned = run(&p, 0, Some(Duration::ZERO), 60, None, BackendKind::Sync).expect("run");
        assert_eq!(scanned.found_by, "scan");
        assert!(
            names(&scanned).contains(&"unlisted".to_owned()),
            "{:?}",
            names(&scanned)
        );
        // An index of another lockspace, or none at that offset: a clear error.
        let e = run(
            &p,
            0,
            Some(Duration::ZERO),
            60,
            Some(6 << 20),
            BackendKind::Sync,
        )
        .unwrap_err();
        assert!(e.contains("resource index at 6291456"), "{e}");
    }
}
