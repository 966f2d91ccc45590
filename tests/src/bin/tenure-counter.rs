//! The counter oracle for process-level exclusion: a lease holder runs it while it holds the
//! lease (`tenure run --lease … -- tenure-counter FILE HOLD_MS`, or `sanlock client command`).
//!
//! FILE holds two little-endian u64s: the number of visits, and the pid inside (0: nobody).
//! A visit finds nobody inside, marks itself inside with the count + 1, waits HOLD_MS, finds
//! its own mark unchanged, and leaves (pid 0). Two holders inside at once are seen by at least
//! one of them — it exits 99 — and a final count below the number of grants means a visit was
//! lost. Exit 0: a clean visit; 2: usage or I/O error.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn read(f: &std::fs::File) -> std::io::Result<(u64, u64)> {
    let mut b = [0u8; 16];
    let n = f.read_at(&mut b, 0)?;
    if n < 16 {
        return Ok((0, 0));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    Ok((word(0), word(8)))
}

fn write(f: &std::fs::File, count: u64, pid: u64) -> std::io::Result<()> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&count.to_le_bytes());
    b[8..].copy_from_slice(&pid.to_le_bytes());
    f.write_all_at(&b, 0)
}

fn visit(path: &str, hold: Duration) -> std::io::Result<i32> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let me = u64::from(std::process::id());
    let (count, inside) = read(&f)?;
    if inside != 0 {
        eprintln!("tenure-counter: pid {inside} is inside (count {count})");
        return Ok(99);
    }
    write(&f, count + 1, me)?;
    std::thread::sleep(hold);
    let seen = read(&f)?;
    if seen != (count + 1, me) {
        eprintln!(
            "tenure-counter: entered at count {} as {me}, found {seen:?}",
            count + 1
        );
        return Ok(99);
    }
    write(&f, count + 1, 0)?;
    Ok(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(ms)) = (args.get(1), args.get(2).and_then(|m| m.parse::<u64>().ok()))
    else {
        eprintln!("usage: tenure-counter FILE HOLD_MS");
        std::process::exit(2);
    };
    match visit(path, Duration::from_millis(ms)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tenure-counter: {path}: {e}");
            std::process::exit(2);
        }
    }
}
