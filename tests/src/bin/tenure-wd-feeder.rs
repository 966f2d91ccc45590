//! Test-only feeder: arms a watchdog (device or emulated) through tenure-watchdog's
//! `ArmedWatchdog` and drives it from a `Multiplexer` with scripted sources, printing one
//! line per event so tests can follow it. Used by tests/tests/watchdog.rs.
//!
//! ```text
//! tenure-wd-feeder (--device PATH | --emulated SOCKET) --fire-timeout S --marker-dir DIR
//!     [--interval-ms N] [--source NAME:MS|NAME:never]... [--remove NAME@MS]... [--disarm-at MS]
//! ```
//! Deadlines and times are milliseconds after start. Exit 0 after a clean disarm; 3 when
//! arming fails (the error on stderr); 2 on bad arguments. Without --disarm-at it feeds until
//! killed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tenure_watchdog::{ArmedWatchdog, Feeder, Multiplexer, Tick, WatchdogSpec};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tenure-wd-feeder: {e}");
            ExitCode::from(2)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run() -> Result<ExitCode, String> {
    let mut spec = None;
    let mut fire_timeout_s = 0u32;
    let mut marker_dir = None;
    let mut interval = Duration::from_millis(100);
    let mut sources: Vec<(String, Option<u64>)> = Vec::new();
    let mut removals: Vec<(String, u64)> = Vec::new();
    let mut disarm_at = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => spec = Some(WatchdogSpec::Device(PathBuf::from(val()?))),
            "--emulated" => spec = Some(WatchdogSpec::Emulated(PathBuf::from(val()?))),
            "--fire-timeout" => fire_timeout_s = val()?.parse().map_err(|e| format!("{e}"))?,
            "--marker-dir" => marker_dir = Some(PathBuf::from(val()?)),
            "--interval-ms" => {
                interval = Duration::from_millis(val()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--source" => {
                let v = val()?;
                let (name, ms) = v.split_once(':').ok_or("--source NAME:MS")?;
                let ms = if ms == "never" {
                    None
                } else {
                    Some(ms.parse().map_err(|e| format!("{e}"))?)
                };
                sources.push((name.to_owned(), ms));
            }
            "--remove" => {
                let v = val()?;
                let (name, ms) = v.split_once('@').ok_or("--remove NAME@MS")?;
                removals.push((name.to_owned(), ms.parse().map_err(|e| format!("{e}"))?));
            }
            "--disarm-at" => disarm_at = Some(val()?.parse::<u64>().map_err(|e| format!("{e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let spec = spec.ok_or("--device or --emulated is required")?;
    let marker_dir = marker_dir.ok_or("--marker-dir is required")?;
    let t0 = Instant::now();
    let wd = match ArmedWatchdog::arm(&spec, fire_timeout_s, &marker_dir) {
        Ok(wd) => wd,
        Err(e) => {
            eprintln!("tenure-wd-feeder: cannot arm: {e}");
            say(&format!("arm-failed {e}"));
            return Ok(ExitCode::from(3));
        }
    };
    say(&format!("armed {}", std::process::id()));
    let mut mux = Multiplexer::new(interval, 16);
    let far = t0 + Duration::from_secs(86_400);
    let mut ids = Vec::new();
    for (name, ms) in &sources {
        let deadline = ms.map_or(far, |ms| t0 + Duration::from_millis(ms));
        ids.push((
            name.clone(),
            mux.add(name, deadline).map_err(|e| e.to_string())?,
        ));
    }
    let mut feeder = Feeder::new(wd, mux);
    let mut was_withheld = false;
    loop {
        let now = Instant::now();
        let ms = now.duration_since(t0).as_millis() as u64;
        removals.retain(|(name, at)| {
            if ms < *at {
                return true;
            }
            if let Some(pos) = ids.iter().position(|(n, _)| n == name) {
                let (_, id) = ids.remove(pos);
                let removed = feeder.mux.remove(id);
                say(&format!("removed {name} {}", removed.is_ok()));
            }
            false
        });
        if disarm_at.is_some_and(|d| ms >= d) {
            for (_, id) in ids.drain(..) {
                let _ = feeder.mux.remove(id);
            }
            return match feeder.disarm() {
                Ok(Ok(())) => {
                    say("disarmed");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Err(e)) => Err(format!("disarm failed: {e}")),
                Err(_) => Err("sources still registered".into()),
            };
        }
        match feeder.tick(now) {
            Tick::Fed => {
                if was_withheld {
                    say("resumed");
                }
                was_withheld = false;
                say(&format!("fed {ms}"));
            }
            Tick::Withheld(w) => {
                if !was_withheld {
                    say(&format!(
                        "withheld {} expired={} at {ms}",
                        w.name, w.expired
                    ));
                }
                was_withheld = true;
            }
            Tick::FeedFailed(e) => say(&format!("feed-failed {e}")),
        }
        std::thread::sleep(interval);
    }
}
