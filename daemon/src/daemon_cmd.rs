//! The `tenure` commands that talk to tenured: status, lockspace join/leave/list/hosts,
//! resource acquire/release/inquire, run, and why-reset (which reads the fence log directly,
//! since after a reset the daemon may not be running).
//!
//! Human output is a table or a few lines; `--json` prints the daemon's reply unchanged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::proto::{ErrorCode, Request};

/// Socket used when neither --socket nor TENURE_SOCKET is given and no daemon socket exists
/// in the usual places.
pub const SOCKET_DEFAULT: &str = "/run/tenure/tenured.sock";
/// The embedded default's socket, relative to the directory tenured was started in.
pub const SOCKET_EMBEDDED: &str = "tenured-data/tenured.sock";

/// Picks the daemon socket: explicit, else the system one if present, else the embedded
/// default's in the current directory if present, else the system one (for the error).
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if Path::new(SOCKET_DEFAULT).exists() {
        return PathBuf::from(SOCKET_DEFAULT);
    }
    if Path::new(SOCKET_EMBEDDED).exists() {
        return PathBuf::from(SOCKET_EMBEDDED);
    }
    PathBuf::from(SOCKET_DEFAULT)
}

/// Resource specs with their paths made absolute: the daemon resolves paths from its own
/// working directory, not the client's.
fn abs_resources(specs: &[String]) -> Result<Vec<String>, String> {
    specs
        .iter()
        .map(|t| {
            let mut r = tenure_format::ResourceSpec::parse(t)
                .map_err(|e| format!("resource {t:?}: {e}"))?;
            for d in &mut r.disks {
                d.path = std::path::absolute(&d.path)
                    .map_err(|e| format!("{}: {e}", d.path))?
                    .display()
                    .to_string();
            }
            Ok(r.to_string())
        })
        .collect()
}

fn abs_lockspace(spec: &str) -> Result<String, String> {
    let mut l = tenure_format::LockspaceSpec::parse(spec)
        .map_err(|e| format!("lockspace {spec:?}: {e}"))?;
    l.disk.path = std::path::absolute(&l.disk.path)
        .map_err(|e| format!("{}: {e}", l.disk.path))?
        .display()
        .to_string();
    Ok(l.to_string())
}

fn connect(socket: &Path) -> Result<Client, String> {
    Client::connect(socket, Some("tenure")).map_err(|e| e.to_string())
}

fn call(c: &mut Client, req: &Request) -> Result<Value, String> {
    c.call(req).map_err(describe)
}

/// A client error as the CLI prints it: the daemon's message and code.
fn describe(e: ClientError) -> String {
    match e {
        ClientError::Daemon(r) => match r.details {
            Some(d) => format!("{} ({:?}; {d})", r.message, r.code),
            None => format!("{} ({:?})", r.message, r.code),
        },
        other => other.to_string(),
    }
}

/// One request on a fresh connection.
fn ask(socket: &Path, req: &Request) -> Result<Value, String> {
    let mut c = connect(socket)?;
    call(&mut c, req)
}

/// How long an acquire is tried again while another client of this host still writes its
/// release of a resource (`releasing`): such a release ends within one I/O timeout.
const RELEASING_RETRY: Duration = Duration::from_secs(130);

/// An acquire, tried again (every 10 ms) while the daemon answers `releasing`: a command run
/// right after another one's end — whose lease is released when its connection closes — must
/// not fail for it. Every other refusal is final, as the daemon gave it.
fn acquire_call(c: &mut Client, req: &Request) -> Result<Value, String> {
    let t0 = Instant::now();
    loop {
        match c.call(req) {
            Err(ClientError::Daemon(r))
                if r.code == ErrorCode::Releasing && t0.elapsed() < RELEASING_RETRY =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(describe(e)),
            Ok(v) => return Ok(v),
        }
    }
}

fn print(json: bool, v: &Value, human: impl FnOnce(&Value) -> String) -> Result<(), String> {
    let text = if json {
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    } else {
        human(v)
    };
    writeln!(std::io::stdout().lock(), "{text}").map_err(|e| format!("writing output: {e}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn leases_table(leases: &[Value]) -> String {
    if leases.is_empty() {
        return "no leases held".into();
    }
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                s(&l["lockspace"]),
                s(&l["resource"]),
                s(&l["lver"]),
                if l["shared"] == Value::Bool(true) {
                    "shared".into()
                } else {
                    "exclusive".into()
                },
                if s(&l["owner"]).starts_with("orphan") {
                    s(&l["owner"])
                } else if l["persistent"] == Value::Bool(true) {
                    format!("{} (persistent)", s(&l["pid"]))
                } else {
                    s(&l["pid"])
                },
                s(&l["client"]),
                s(&l["state"]),
            ]
        })
        .collect();
    table(
        &[
            "LOCKSPACE",
            "RESOURCE",
            "LVER",
            "MODE",
            "PID",
            "CLIENT",
            "STATE STRING",
        ],
        &rows,
    )
}

fn lockspaces_table(list: &[Value]) -> String {
    if list.is_empty() {
        return "no lockspaces".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            let detail = &l["detail"];
            let state = match s(&l["state"]).as_str() {
                "joining" => format!(
                    "joining ({}, {} s left in this wait)",
                    s(&detail["phase"]),
                    detail["wait_ms"]
                        .as_u64()
                        .map_or("-".into(), |ms| format!("{:.1}", ms as f64 / 1e3))
                ),
                "joined" => format!("joined (generation {})", s(&detail["generation"])),
                other => match detail.get("error") {
                    Some(e) => format!("{other}: {}", s(e)),
                    None => other.to_owned(),
                },
            };
            let last = l["last_renewals"]
                .as_array()
                .and_then(|a| a.first())
                .map(|r| match &r["error"] {
                    Value::Null => format!(
                        "ok {} s ago ({:.1}+{:.1} ms)",
                        r["ago_ms"].as_u64().unwrap_or(0) / 1000,
                        r["read_ms"].as_f64().unwrap_or(0.0),
                        r["write_ms"].as_f64().unwrap_or(0.0)
                    ),
                    e => format!("FAILED: {}", s(e)),
                })
                .unwrap_or_else(|| "-".into());
            vec![
                s(&l["name"]),
                s(&l["host_id"]),
                state,
                l["renewal_deadline_in_ms"]
                    .as_u64()
                    .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1e3)),
                last,
                s(&l["leases"]),
                format!("{}:{}", s(&l["path"]), s(&l["offset"])),
            ]
        })
        .collect();
    table(
        &[
            "LOCKSPACE",
            "HOST",
            "STATE",
            "DEADLINE IN",
            "LAST RENEWAL",
            "LEASES",
            "AREA",
        ],
        &rows,
    )
}

/// `tenure status`.
/// `tenure daemon upgrade`: the answer comes from the new tenured once it took over.
pub fn upgrade(socket: &Path, binary: Option<&Path>, json: bool) -> Result<ExitCode, String> {
    let binary = match binary {
        Some(b) => Some(
            std::path::absolute(b)
                .map_err(|e| format!("{}: {e}", b.display()))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    let mut c = connect(socket)?;
    // Waiting for quiescence and the new process's confirmation takes up to their limits.
    let limit = crate::upgrade::QUIESCE_MAX + crate::upgrade::CONFIRM_MAX + Duration::from_secs(5);
    c.set_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let v = call(&mut c, &Request::Upgrade { binary })?;
    print(json, &v, |v| {
        format!(
            "upgraded: tenured {} (pid {}) took over from {} (pid {}) in {} ms",
            s(&v["version"]),
            s(&v["pid"]),
            s(&v["from_version"]),
            s(&v["from_pid"]),
            s(&v["took_ms"])
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure metrics`: the exposition text, as the HTTP endpoint serves it.
pub fn metrics(socket: &Path) -> Result<ExitCode, String> {
    let v = ask(socket, &Request::Metrics {})?;
    let text = v["text"]
        .as_str()
        .ok_or_else(|| format!("tenured's metrics reply has no text: {v}"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub fn status(socket: &Path, json: bool) -> Result<ExitCode, String> {
    let v = ask(socket, &Request::Status {})?;
    print(json, &v, |v| {
        let sup = &v["supervisor"];
        let mut out = vec![
            format!(
                "tenured {} on {} — host {}, up {} s, I/O {}{}, io_timeout {} s",
                s(&v["daemon"]),
                s(&v["socket"]),
                s(&v["host_name"]),
                s(&v["uptime_s"]),
                s(&v["io_backend"]),
                match &v["io_fallback_reason"] {
                    Value::Null => String::new(),
                    r => format!(" (fallback: {})", s(r)),
                },
                s(&v["io_timeout_s"]),
            ),
            format!(
                "watchdog: {} — {}, fires {} s after the last keepalive; last fed {}; {}",
                s(&sup["watchdog"]),
                if sup["armed"] == Value::Bool(true) {
                    "armed"
                } else {
                    "not armed"
                },
                s(&sup["fire_timeout_s"]),
                sup["last_fed_ms_ago"]
                    .as_u64()
                    .map_or("never".into(), |ms| format!("{ms} ms ago")),
                s(&sup["last_tick"]),
            ),
            String::new(),
            lockspaces_table(v["lockspaces"].as_array().map_or(&[], |a| a.as_slice())),
            String::new(),
            leases_table(v["leases"].as_array().map_or(&[], |a| a.as_slice())),
        ];
        if let Some(ops) = v["resources_in_flight"]
            .as_array()
            .filter(|a| !a.is_empty())
        {
            let each: Vec<String> = ops
                .iter()
                .map(|o| {
                    format!(
                        "{}:{} ({})",
                        s(&o["lockspace"]),
                        s(&o["resource"]),
                        s(&o["operation"])
                    )
                })
                .collect();
            out.push(format!("in flight: {}", each.join(", ")));
        }
        let killing: Vec<String> = sup["spaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|sp| !sp["killing_for_ms"].is_null())
                    .map(|sp| {
                        format!(
                            "lockspace {} LOST: killing holders {} for {} ms{}",
                            s(&sp["name"]),
                            sp["holders"],
                            s(&sp["killing_for_ms"]),
                            if sp["cleared"] == Value::Bool(true) {
                                " (cleared)"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !killing.is_empty() {
            out.push(String::new());
            out.extend(killing);
        }
        out.join("\n")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure lockspace join`: adds the lockspace and follows the join with progress.
pub fn join(
    socket: &Path,
    spec: &str,
    io_timeout_s: Option<u64>,
    wait: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let mut c = connect(socket)?;
    let v = call(
        &mut c,
        &Request::LockspaceAdd {
            spec: abs_lockspace(spec)?,
            wait: false,
            io_timeout_s,
        },
    )?;
    let name = s(&v["lockspace"]);
    if !wait {
        print(json, &v, |_| {
            format!("joining lockspace {name} (follow with `tenure lockspace list`)")
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let start = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = String::new();
    loop {
        let list = call(&mut c, &Request::LockspaceList {})?;
        let Some(l) = list["lockspaces"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["name"] == Value::String(name.clone())))
            .cloned()
        else {
            return Err(format!("lockspace {name} disappeared while joining"));
        };
        match s(&l["state"]).as_str() {
            "joined" => {
                if tty {
                    eprintln!();
                }
                print(json, &l, |l| {
                    format!(
                        "joined lockspace {name} as host {} generation {} in {:.1} s",
                        s(&l["host_id"]),
                        s(&l["detail"]["generation"]),
                        start.elapsed().as_secs_f64()
                    )
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            "joining" => {
                let line = format!(
                    "joining {name}: {} ({} s left in this step, {:.0} s so far)",
                    s(&l["detail"]["phase"]),
                    l["detail"]["wait_ms"]
                        .as_u64()
                        .map_or("-".into(), |ms| format!("{:.1}", ms as f64 / 1e3)),
                    start.elapsed().as_secs_f64()
                );
                if tty {
                    eprint!("\r{line}   ");
                } else if line.split(" (").next() != last_line.split(" (").next() {
                    eprintln!("{line}");
                }
                last_line = line;
            }
            other => {
                if tty {
                    eprintln!();
                }
                return Err(format!("join of {name} ended: {other} {}", l["detail"]));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `tenure lockspace leave`.
pub fn leave(socket: &Path, name: &str, json: bool) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::LockspaceRemove {
            name: name.to_owned(),
            wait: true,
        },
    )?;
    print(json, &v, |_| format!("left lockspace {name}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure lockspace config`.
pub fn config(
    socket: &Path,
    name: &str,
    used: Option<bool>,
    used_by_orphans: Option<bool>,
    json: bool,
) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::LockspaceConfig {
            name: name.to_owned(),
            used,
            used_by_orphans,
        },
    )?;
    print(json, &v, |v| {
        format!(
            "lockspace {name}: used {}, used by orphans {}",
            v["used"], v["used_by_orphans"]
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure rindex ACTION RINDEX ...`.
pub fn rindex(socket: &Path, req: &Request, json: bool) -> Result<ExitCode, String> {
    let v = ask(socket, req)?;
    print(json, &v, |v| {
        if let Some(o) = v["offset"].as_u64() {
            match v["name"].as_str().or(v["deleted"].as_str()) {
                Some(n) if !n.is_empty() => format!("{n} {o}"),
                _ => format!("- {o}"),
            }
        } else if let Some(n) = v["entries"].as_u64() {
            format!("rebuilt: {n} entries")
        } else if let Some(o) = v["removed"].as_u64() {
            format!("removed the entry of {o}")
        } else {
            "done".to_owned()
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure lockspace list`.
pub fn list(socket: &Path, json: bool) -> Result<ExitCode, String> {
    let v = ask(socket, &Request::LockspaceList {})?;
    print(json, &v, |v| {
        lockspaces_table(v["lockspaces"].as_array().map_or(&[], |a| a.as_slice()))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure lockspace hosts`.
pub fn hosts(socket: &Path, name: &str, json: bool) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::Hosts {
            lockspace: name.to_owned(),
        },
    )?;
    print(json, &v, |v| {
        let rows: Vec<Vec<String>> = v["hosts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| {
                        vec![
                            s(&h["host_id"]),
                            s(&h["status"]),
                            s(&h["generation"]),
                            s(&h["timestamp"]),
                            s(&h["io_timeout"]),
                            h["last_change_ms_ago"]
                                .as_u64()
                                .map_or("never seen".into(), |ms| {
                                    format!("{:.1} s ago", ms as f64 / 1e3)
                                }),
                            s(&h["name"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &[
                "HOST",
                "STATUS",
                "GEN",
                "TIMESTAMP",
                "IO_TIMEOUT",
                "LAST RENEWAL SEEN",
                "NAME",
            ],
            &rows,
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource acquire -p PID`.
pub fn acquire(
    socket: &Path,
    resources: &[String],
    pid: i32,
    (no_wait, lvb, persistent, adopt_orphan): (bool, bool, bool, bool),
    json: bool,
) -> Result<ExitCode, String> {
    let mut c = connect(socket)?;
    let v = acquire_call(
        &mut c,
        &Request::Acquire {
            resources: abs_resources(resources)?,
            no_wait,
            lvb,
            pid: Some(pid),
            persistent,
            adopt_orphan,
        },
    )?;
    print(json, &v, |v| {
        leases_table(v["leases"].as_array().map_or(&[], |a| a.as_slice()))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure lvb get -p PID LS:NAME`.
pub fn lvb_get(socket: &Path, resource: &str, pid: i32, json: bool) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::LvbGet {
            resource: resource.to_owned(),
            pid: Some(pid),
        },
    )?;
    print(json, &v, |v| {
        s(&v["lvb_hex"]).trim_end_matches("00").to_owned()
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure lvb set -p PID LS:NAME HEX`.
pub fn lvb_set(
    socket: &Path,
    resource: &str,
    hex: &str,
    pid: i32,
    json: bool,
) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::LvbSet {
            resource: resource.to_owned(),
            hex: hex.to_owned(),
            pid: Some(pid),
        },
    )?;
    print(json, &v, |_| {
        format!("{resource}: LVB is written when the lease is released")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource release -p PID`.
pub fn release(
    socket: &Path,
    resources: &[String],
    all: bool,
    pid: i32,
    json: bool,
) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::Release {
            resources: resources.to_vec(),
            all,
            pid: Some(pid),
            lvb_hex: None,
        },
    )?;
    print(json, &v, |v| format!("released {}", v["released"]))?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource release --orphan LS[:NAME]`.
pub fn release_orphans(socket: &Path, target: &str, json: bool) -> Result<ExitCode, String> {
    let (lockspace, resource) = match target.split_once(':') {
        Some((ls, name)) => (ls.to_owned(), Some(name.to_owned())),
        None => (target.to_owned(), None),
    };
    let v = ask(
        socket,
        &Request::ReleaseOrphans {
            lockspace,
            resource,
        },
    )?;
    print(json, &v, |v| {
        let names = v["orphans_released"].as_array().map_or(0, |a| a.len());
        if names == 0 {
            format!("{target}: no orphan to release")
        } else {
            format!("releasing {names} orphan(s): {}", v["orphans_released"])
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource orphans [LS]`: the orphans in `status`.
pub fn orphans(socket: &Path, lockspace: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let v = ask(socket, &Request::Status {})?;
    let orphans: Vec<Value> = v["leases"]
        .as_array()
        .map_or(&[][..], |a| a.as_slice())
        .iter()
        .filter(|l| s(&l["owner"]).starts_with("orphan"))
        .filter(|l| lockspace.is_none_or(|ls| s(&l["lockspace"]) == ls))
        .cloned()
        .collect();
    let v = serde_json::json!({ "orphans": orphans });
    print(json, &v, |v| {
        let a = v["orphans"].as_array().map_or(&[][..], |a| a.as_slice());
        if a.is_empty() {
            "no orphans".to_owned()
        } else {
            leases_table(a)
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource convert -p PID LS:NAME` (to shared).
pub fn convert(
    socket: &Path,
    resource: &str,
    pid: i32,
    shared: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let v = ask(
        socket,
        &Request::Convert {
            resource: resource.to_owned(),
            shared,
            pid: Some(pid),
            no_wait: false,
        },
    )?;
    let mode = if shared { "shared" } else { "exclusively" };
    print(json, &v, |_| format!("{resource} is now held {mode}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource request RES [--force]`.
pub fn request(socket: &Path, resource: &str, force: bool, json: bool) -> Result<ExitCode, String> {
    let res = abs_resources(&[resource.to_owned()])?.remove(0);
    let v = ask(
        socket,
        &Request::Request {
            resource: res,
            force,
        },
    )?;
    print(json, &v, |v| match v["owner"].as_u64() {
        Some(h) => format!(
            "request written; host {h} is asked to give {resource} up ({})",
            if force {
                "SIGKILL"
            } else {
                "SIGTERM or kill path"
            }
        ),
        None => format!("{resource} is free: nothing to request"),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure resource inquire -p PID`.
pub fn inquire(socket: &Path, pid: i32, json: bool) -> Result<ExitCode, String> {
    let v = ask(socket, &Request::Inquire { pid: Some(pid) })?;
    print(json, &v, |v| {
        leases_table(v["leases"].as_array().map_or(&[], |a| a.as_slice()))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tenure run --lease RES... -- CMD`: acquires on a connection that stays open across exec,
/// then becomes CMD (same pid): the leases live exactly as long as CMD, the exit code is
/// CMD's, and a lost lockspace kills CMD itself.
pub fn run(
    socket: &Path,
    leases: &[String],
    (no_wait, persistent, adopt_orphan): (bool, bool, bool),
    cmd: &[String],
) -> Result<ExitCode, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = cmd.split_first() else {
        return Err("run needs a command after --".into());
    };
    let mut c = Client::connect(socket, Some(&format!("run {prog}"))).map_err(|e| e.to_string())?;
    acquire_call(
        &mut c,
        &Request::Acquire {
            resources: abs_resources(leases)?,
            no_wait,
            lvb: false,
            pid: None,
            persistent,
            adopt_orphan,
        },
    )?;
    // Keep the registered connection open in CMD: clear close-on-exec.
    let fd = c.stream().as_raw_fd();
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| format!("keeping the lease connection across exec: {e}"))?;
    let e = std::process::Command::new(prog).args(args).exec();
    // exec returned: CMD did not start. Closing the connection (by exiting) releases.
    Err(format!("cannot run {prog}: {e}"))
}

/// `tenure why-reset`: the fence records, newest last.
pub fn why_reset(state_dir: &Path, json: bool) -> Result<ExitCode, String> {
    use tenure_watchdog::fence::{FenceLog, LogLine};
    let log = FenceLog::new(state_dir);
    let lines = log.read_all().map_err(|e| e.to_string())?;
    let this_boot = tenure_watchdog::marker::boot_id();
    let records: Vec<Value> = lines
        .iter()
        .map(|l| match l {
            LogLine::Record(r) => {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                v["this_boot"] = Value::Bool(r.boot_id == this_boot);
                v
            }
            LogLine::Damaged { file, line, error } => {
                serde_json::json!({"torn_line": line, "file": file, "error": error})
            }
        })
        .collect();
    let v = serde_json::json!({"log": log.path(), "records": records});
    print(json, &v, |v| {
        let recs = v["records"].as_array().map_or(&[][..], |a| a.as_slice());
        if recs.is_empty() {
            return format!(
                "no fence records in {}: tenured never lost a lockspace while leases were held here",
                s(&v["log"])
            );
        }
        let mut out = vec![format!(
            "{} fence record(s) in {} (newest last):",
            recs.len(),
            s(&v["log"])
        )];
        for r in recs {
            if let Some(line) = r.get("torn_line") {
                out.push(format!("  line {line}: damaged record"));
                continue;
            }
            out.push(format!(
                "  at {} ms since epoch{}: lockspace {} host {} generation {}\n    {}\n    holders alive: {:?}; watchdog {} (fires after {} s)",
                s(&r["written_at_unix_ms"]),
                if r["this_boot"] == Value::Bool(true) { " (this boot)" } else { " (an earlier boot)" },
                s(&r["lockspace"]),
                s(&r["host_id"]),
                s(&r["generation"]),
                s(&r["reason"]),
                r["pids_alive"],
                s(&r["watchdog"]),
                s(&r["fire_timeout_s"]),
            ));
            if let Some(ren) = r["last_renewals"].as_array() {
                for n in ren.iter().rev().take(4).rev() {
                    out.push(format!(
                        "      renewal at {}: {} ({} ms){}",
                        s(&n["at_unix_ms"]),
                        if n["ok"] == Value::Bool(true) {
                            "ok"
                        } else {
                            "FAILED"
                        },
                        s(&n["latency_ms"]),
                        n.get("error")
                            .map(|e| format!(": {}", s(e)))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        out.join("\n")
    })?;
    Ok(ExitCode::SUCCESS)
}
