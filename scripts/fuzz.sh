#!/usr/bin/env bash
# Coverage-guided fuzzing of what clients send (issue 23), bounded: each cargo-fuzz target of
# daemon/fuzz runs for FUZZ_SECONDS (default 10) on its corpus — the committed seeds
# (daemon/fuzz/seeds/), the inputs that once failed (daemon/fuzz/regressions/) and the bytes
# the tests' daemons captured from real clients (target/fuzz-captures/, written by the test
# run before this one). Any crash fails the run; the crashing input is in
# daemon/fuzz/artifacts/<target>/: copy it into daemon/fuzz/regressions/<target>/ with the
# fix, and daemon/tests/fuzz_decoders.rs replays it in every test run.
#
# cargo-fuzz is installed from crates.io when missing. The machine's stable toolchain builds
# the targets (RUSTC_BOOTSTRAP=1 admits the -Z flags cargo-fuzz passes); no sanitizer
# (tenured forbids unsafe code; the checks are assertions).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-10}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
export RUSTC_BOOTSTRAP=1
cd daemon/fuzz
cargo fuzz build -s none
for t in sanlock_wire native_frame host_sequence; do
  corpus="corpus/$t"
  mkdir -p "$corpus"
  for d in "seeds/$t" "regressions/$t" "../../target/fuzz-captures/$t"; do
    if [ -d "$d" ]; then cp -n "$d"/* "$corpus"/ 2>/dev/null || true; fi
  done
  echo "fuzz.sh: $t for ${secs} s on $(ls "$corpus" | wc -l) inputs"
  log="$(mktemp)"
  if ! cargo fuzz run -s none "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -malloc_limit_mb=512 -print_final_stats=1 > "$log" 2>&1; then
    # The panic message first (the backtrace that follows it is long), then the end.
    grep -m 5 -A 4 "panicked at" "$log" || true
    tail -30 "$log"
    rm -f "$log"
    echo "fuzz.sh: $t crashed; the input is in daemon/fuzz/artifacts/$t/"
    exit 1
  fi
  grep -E "^Done|stat::(average_exec_per_sec|peak_rss_mb)" "$log" || true
  rm -f "$log"
done
