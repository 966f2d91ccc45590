//! The socket decoders' fuzz checks (`tenured::fuzzing`) on stable, bounded, in every test
//! run: the committed seeds (`daemon/fuzz/seeds/`), the bytes the tests' daemons captured
//! from real clients (`target/fuzz-captures/`, when present), messages built for every
//! command, and mutations of them all. The coverage-guided runs are `scripts/fuzz.sh`
//! (cargo-fuzz, the same checks).

use std::path::{Path, PathBuf};
use std::time::Instant;

use tenured::fuzzing;
use tenured::sanlock_wire as w;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ has a parent")
        .to_owned()
}

/// The files of the seed, regression and capture directories of `target`.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in [
        workspace().join("daemon/fuzz/seeds").join(target),
        workspace().join("daemon/fuzz/regressions").join(target),
        workspace().join("target/fuzz-captures").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

/// xorshift64*: the same mutations for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n.max(1)
    }
}

/// One to eight mutations: byte flips and sets, interesting 32-bit values at 4-aligned
/// offsets (counts and lengths live there), insertions, deletions, truncation, splices.
fn mutate(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    const INTERESTING: [u32; 10] = [0, 1, 2, 4, 5, 8, 9, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x0428_2010];
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 if b.len() >= 4 => {
                let i = rng.below(b.len() / 4) * 4;
                let v = INTERESTING[rng.below(INTERESTING.len())];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                let i = rng.below(b.len() + 1);
                let n = 1 + rng.below(64);
                let fill = rng.next() as u8;
                b.splice(i..i, std::iter::repeat_n(fill, n));
            }
            4 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = (1 + rng.below(64)).min(b.len() - i);
                b.drain(i..i + n);
            }
            5 if !b.is_empty() => b.truncate(rng.below(b.len())),
            _ if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                let at = rng.below(other.len() + 1);
                b.extend_from_slice(&other[at..]);
            }
            _ => {}
        }
    }
    b
}

/// Runs `check` on every input and on `rounds` mutations; returns executions per second.
fn fuzz(pool: &[Vec<u8>], rounds: usize, check: fn(&[u8])) -> f64 {
    let t0 = Instant::now();
    for input in pool {
        check(input);
    }
    let mut rng = Rng(0x005e_ed0f_7e4e);
    for _ in 0..rounds {
        let input = &pool[rng.below(pool.len())];
        let m = mutate(&mut rng, input, pool);
        check(&m);
    }
    (pool.len() + rounds) as f64 / t0.elapsed().as_secs_f64()
}

/// A header for `cmd` followed by `payload`.
fn message(cmd: u32, flags: u32, data: u32, payload: &[u8]) -> Vec<u8> {
    let h = w::Header {
        magic: w::MAGIC,
        version: w::PROTO,
        cmd,
        cmd_flags: flags,
        length: (w::HEADER_LEN + payload.len()) as u32,
        seq: 1,
        data,
        data2: u32::MAX,
    };
    let mut b = h.encode().to_vec();
    b.extend_from_slice(payload);
    b
}

/// A resource on `disks` disks, as libsanlock sends it.
fn resource(disks: u32) -> Vec<u8> {
    let r = w::Resource {
        lockspace: "LS".into(),
        name: "R".into(),
        num_disks: disks,
        ..w::Resource::default()
    };
    let mut b = r.encode_head().to_vec();
    for i in 0..disks {
        let mut d = vec![0u8; w::DISK_LEN];
        d[..9].copy_from_slice(b"/dev/sdx\0");
        d[1024..1032].copy_from_slice(&(u64::from(i + 1) << 20).to_le_bytes());
        b.extend(d);
    }
    b
}

/// Messages for every command number sanlock has, with payloads of the sizes they take.
fn built_sanlock() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for cmd in 1..=48 {
        out.push(message(cmd, 0, 0, &[]));
        out.push(message(cmd, 0, 1, &[0u8; w::LS_LEN]));
        out.push(message(cmd, 0, 1, &resource(1)));
        out.push(message(cmd, 0, 1, &[0u8; w::RES_LEN + 64]));
    }
    let mut acquire = resource(2);
    acquire.extend(resource(4));
    acquire.extend(vec![0u8; w::OPTIONS_LEN]);
    out.push(message(7, 0, 2, &acquire));
    out.push(message(8, 0x2, 2, &[resource(1), resource(1)].concat()));
    out
}

fn built_native() -> Vec<Vec<u8>> {
    let frame = |json: &str| {
        let mut b = (json.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b
    };
    [
        r#"{"op":"hello","version":1,"name":"t"}"#,
        r#"{"op":"status"}"#,
        r#"{"op":"acquire","resources":["LS:R:/dev/x:1M:/dev/y:1M"],"persistent":true,"adopt_orphan":true}"#,
        r#"{"op":"release","resources":["LS:R"],"lvb_hex":"00ff"}"#,
        r#"{"op":"release_orphans","lockspace":"LS","resource":"R"}"#,
        r#"{"op":"lockspace_add","spec":"LS:1:/dev/x:0","wait":true,"io_timeout_s":3}"#,
        r#"{"op":"convert","resource":"LS:R","shared":true,"pid":7}"#,
        r#"{"op":"rindex","rindex":"LS:/dev/x:1M","action":"create","name":"vm"}"#,
        r#"{"op":"kill_path","path":"/bin/true","args":["a"]}"#,
    ]
    .iter()
    .map(|j| frame(j))
    .collect()
}

#[test]
fn sanlock_wire_decoder_holds_its_checks_on_seeds_captures_and_mutations() {
    let mut pool = seeds("sanlock_wire");
    let captured = pool.len();
    pool.extend(built_sanlock());
    let rate = fuzz(&pool, 200_000, fuzzing::sanlock_wire);
    eprintln!(
        "sanlock_wire: {} inputs ({captured} seeds and captures) + 200,000 mutations, {rate:.0} exec/s",
        pool.len()
    );
}

#[test]
fn native_frame_decoder_holds_its_checks_on_seeds_captures_and_mutations() {
    let mut pool = seeds("native_frame");
    let captured = pool.len();
    pool.extend(built_native());
    let rate = fuzz(&pool, 100_000, fuzzing::native_frame);
    eprintln!(
        "native_frame: {} inputs ({captured} seeds and captures) + 100,000 mutations, {rate:.0} exec/s",
        pool.len()
    );
}

/// The checks bite: outcomes a broken decoder could give — consuming more than it was
/// given, nothing at all, or a body beyond the protocol's limits — are caught.
#[test]
fn the_checks_catch_a_decoder_that_overruns_or_decodes_beyond_the_limits() {
    let buf = message(7, 0, 8, &[0u8; 100]);
    assert_eq!(fuzzing::sanlock_outcome(&buf, &w::parse(&buf)), None);
    let bad = [
        w::Parsed::Ignored(buf.len() + 1),
        w::Parsed::Invalid(0, w::Header::default(), -22),
        w::Parsed::Message(
            w::HEADER_LEN,
            w::Header::default(),
            w::Body::SetLvb(w::Resource::default(), vec![0; 5000]),
        ),
        w::Parsed::Message(
            w::HEADER_LEN,
            w::Header::default(),
            w::Body::Resources(vec![w::Resource::default(); 9]),
        ),
    ];
    for p in bad {
        let caught = std::panic::catch_unwind(|| fuzzing::sanlock_outcome(&buf, &p)).is_err();
        assert!(caught, "not caught: {p:?}");
    }
}

/// The structure-aware sequence fuzzer of the host core (`tenured::fuzzing::host_sequence`):
/// random byte strings become up to 200 actions of four clients each (see that function for
/// the checks after every step).
#[test]
fn random_command_sequences_through_the_host_core_hold_its_checks() {
    if let Ok(hex) = std::env::var("TENURE_FUZZ_REPLAY") {
        let data: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        fuzzing::host_sequence(&data);
        return;
    }
    // Every input that once failed (daemon/fuzz/regressions/host_sequence), first.
    for input in seeds("host_sequence") {
        fuzzing::host_sequence(&input);
    }
    let mut rng = Rng(0x00c0_ffee_1234);
    // Bounded: the coverage-guided runs are scripts/fuzz.sh's.
    let runs: u32 = if cfg!(debug_assertions) { 40 } else { 300 };
    let t0 = Instant::now();
    for run in 0..runs {
        let len = 64 + rng.below(700);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let r = std::panic::catch_unwind(|| fuzzing::host_sequence(&data));
        if r.is_err() {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            panic!("host_sequence run {run} failed; its input (hex): {hex}");
        }
    }
    eprintln!(
        "host_sequence: {runs} random sequences in {:.1} s ({:.0} exec/s)",
        t0.elapsed().as_secs_f64(),
        f64::from(runs) / t0.elapsed().as_secs_f64()
    );
}
