//! Human-readable rendering of command results (tables). JSON output is serde's rendering of
//! the same values; this module only decides layout.

use std::fmt::Write;

use tenure_core::direct::{DumpReport, FormatReport};
use tenure_format::paxos::{DBLOCK_FLAG_RELEASED, FORCE_MODE_FORCE, FORCE_MODE_GRACEFUL};
use tenure_format::{AreaReport, Geometry, Problem};

/// "formatted lockspace "LS" at /dev/x:0 (512/1M, 2000 host ids)".
pub fn format_report(what: &str, name: &str, reports: &[FormatReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = write!(
            out,
            "formatted {what} \"{name}\" at {}:{} ({}, {} host ids)",
            r.path.display(),
            r.offset,
            r.geometry,
            r.geometry.hosts_max()
        );
        if let Some(old) = &r.replaced {
            let _ = write!(out, "; replaced {old}");
        }
        out.push('\n');
    }
    out.pop();
    out
}

fn geometry_text(g: &Geometry) -> String {
    format!("{g}, {} host ids", g.hosts_max())
}

/// A wiped or foreign area can fail on every one of its 2000 sectors: the table shows the
/// first ones and a count; `--json` lists them all.
const PROBLEMS_SHOWN: usize = 20;

fn problems(out: &mut String, problems: &[Problem]) {
    if problems.is_empty() {
        return;
    }
    let _ = writeln!(out, "  PROBLEMS ({}):", problems.len());
    for p in problems.iter().take(PROBLEMS_SHOWN) {
        let who = p
            .host_id
            .map(|h| format!("host id {h}, "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    sector {} ({who}{}): {}",
            p.sector, p.record, p.error
        );
    }
    if problems.len() > PROBLEMS_SHOWN {
        let _ = writeln!(
            out,
            "    ... and {} more (all are listed with --json)",
            problems.len() - PROBLEMS_SHOWN
        );
    }
}

fn force_mode(m: u32) -> String {
    match m {
        0 => "none".into(),
        FORCE_MODE_FORCE => "FORCE".into(),
        FORCE_MODE_GRACEFUL => "GRACEFUL".into(),
        other => format!("unknown({other})"),
    }
}

/// The `dump` tables.
pub fn dump(r: &DumpReport) -> String {
    let mut out = String::new();
    let ss = r
        .logical_sector_size
        .map(|s| format!(", {s}-byte logical sectors"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}: {}{ss}, {} bytes; scanned {} bytes from offset {} ({} I/O)",
        r.path.display(),
        match r.device_kind {
            tenure_core::dev::DeviceKind::Block => "block device",
            tenure_core::dev::DeviceKind::File => "regular file",
        },
        r.device_size,
        r.scanned_bytes,
        r.offset,
        r.io_backend
    );
    for area in &r.areas {
        out.push('\n');
        match area {
            AreaReport::Lockspace {
                offset,
                geometry,
                name,
                slots_in_use,
                problems: p,
                note,
            } => {
                let name = name.map(|n| n.escaped()).unwrap_or_else(|| "?".into());
                let _ = writeln!(
                    out,
                    "lockspace \"{name}\" at offset {offset} ({})",
                    geometry_text(geometry)
                );
                if let Some(note) = note {
                    let _ = writeln!(out, "  note: {note}");
                }
                if slots_in_use.is_empty() {
                    let _ = writeln!(out, "  no host id in use");
                } else {
                    let _ = writeln!(
                        out,
                        "  {:>7}  {:<36}  {:>10}  {:>12}  {:>10}  bitmap",
                        "host_id", "owner_name", "generation", "timestamp", "io_timeout"
                    );
                    for s in slots_in_use {
                        let bits: Vec<String> = s.bitmap.iter().map(u64::to_string).collect();
                        let bits = if bits.is_empty() {
                            "-".to_owned()
                        } else {
                            bits.join(",")
                        };
                        let _ = writeln!(
                            out,
                            "  {:>7}  {:<36}  {:>10}  {:>12}  {:>10}  {bits}",
                            s.host_id,
                            s.owner_name.escaped(),
                            s.generation,
                            s.timestamp,
                            s.io_timeout
                        );
                    }
                }
                problems(&mut out, p);
            }
            AreaReport::Resource {
                offset,
                geometry,
                cleared,
                leader,
                request,
                dblocks,
                lvb_hex,
                problems: p,
                note,
            } => {
                let (ls, res) = leader
                    .map(|l| (l.space_name.escaped(), l.resource_name.escaped()))
                    .unwrap_or_else(|| ("?".into(), "?".into()));
                let cleared = if *cleared { " (CLEARED)" } else { "" };
                let _ = writeln!(
                    out,
                    "resource \"{res}\" of lockspace \"{ls}\" at offset {offset} ({}){cleared}",
                    geometry_text(geometry)
                );
                if let Some(note) = note {
                    let _ = writeln!(out, "  note: {note}");
                }
                if let Some(l) = leader {
                    let state = if l.timestamp == 0 {
                        "free".to_owned()
                    } else {
                        format!("owner host id {}", l.owner_id)
                    };
                    let _ = writeln!(
                        out,
                        "  leader: {state}, generation {}, timestamp {}, lver {}, num_hosts {}, max_hosts {}, flags {:#x}, written by host id {} gen {} at {}",
                        l.owner_generation,
                        l.timestamp,
                        l.lver,
                        l.num_hosts,
                        l.max_hosts,
                        l.flags,
                        l.write_id,
                        l.write_generation,
                        l.write_timestamp
                    );
                }
                if let Some(q) = request {
                    let _ = writeln!(
                        out,
                        "  request: lver {}, mode {}",
                        q.lver,
                        force_mode(q.force_mode)
                    );
                }
                if !dblocks.is_empty() {
                    let _ = writeln!(
                        out,
                        "  {:>7}  {:>10}  {:>10}  {:>7}  {:>10}  {:>12}  {:>8}  flags     mode",
                        "host_id", "mbal", "bal", "inp", "inp2", "inp3", "lver"
                    );
                    for d in dblocks {
                        let b = &d.dblock;
                        let flags = if b.flags & DBLOCK_FLAG_RELEASED != 0 {
                            "RELEASED".to_owned()
                        } else {
                            format!("{:#x}", b.flags)
                        };
                        let mode = d
                            .mode_block
                            .map(|m| {
                                if m.is_shared() {
                                    format!("SHARED gen {}", m.generation)
                                } else {
                                    format!("flags {:#x}", m.flags)
                                }
                            })
                            .unwrap_or_else(|| "-".into());
                        let _ = writeln!(
                            out,
                            "  {:>7}  {:>10}  {:>10}  {:>7}  {:>10}  {:>12}  {:>8}  {flags:<8}  {mode}",
                            d.host_id, b.mbal, b.bal, b.inp, b.inp2, b.inp3, b.lver
                        );
                    }
                }
                if let Some(lvb) = lvb_hex {
                    let _ = writeln!(out, "  lvb: {lvb}");
                }
                problems(&mut out, p);
            }
            AreaReport::Rindex {
                offset,
                geometry,
                header,
                entries,
            } => {
                let _ = writeln!(
                    out,
                    "resource index of lockspace \"{}\" at offset {offset} ({geometry}), {} entries max, {} in use",
                    header.lockspace_name,
                    header.max_resources,
                    entries.len()
                );
                for (n, e) in entries {
                    let _ = writeln!(
                        out,
                        "  entry {n}: \"{}\" at offset {}",
                        e.name, e.res_offset
                    );
                }
            }
            AreaReport::Unrecognised {
                offset,
                count,
                magic,
                reason,
            } => {
                let _ = writeln!(out, "UNRECOGNISED: {count} area(s) from offset {offset}: {reason} (magic {magic:#010x})");
            }
        }
    }
    if r.empty_areas > 0 {
        let _ = write!(out, "\n{} empty (all-zero) area(s) skipped", r.empty_areas);
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

/// `tenure resource owners`: one block per disk.
pub fn owners(name: &str, reports: &[tenure_core::direct::OwnersReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let o = &r.owners;
        out.push_str(&format!(
            "resource {name} on {}:{} ({}), lver {}, num_hosts {}\n",
            r.path.display(),
            r.offset,
            r.geometry,
            o.lver,
            o.num_hosts
        ));
        match &o.exclusive {
            Some(h) => out.push_str(&format!(
                "  exclusive  host {} generation {} (timestamp {})\n",
                h.host_id, h.generation, h.timestamp
            )),
            None if o.owner_released => out.push_str(&format!(
                "  exclusive  none (host {} released lver {})\n",
                o.leader.owner_id, o.lver
            )),
            None => out.push_str("  exclusive  none\n"),
        }
        if o.shared.is_empty() {
            out.push_str("  shared     none\n");
        } else {
            let v: Vec<String> = o
                .shared
                .iter()
                .map(|h| format!("host {} generation {}", h.host_id, h.generation))
                .collect();
            out.push_str(&format!("  shared     {}\n", v.join(", ")));
        }
    }
    // The caller adds the final newline.
    out.pop();
    out
}
