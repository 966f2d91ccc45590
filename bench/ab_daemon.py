#!/usr/bin/env python3
"""Alternates two tenure-bench binaries (before / after a change) N times in one run and prints
the mean, range and median of each figure of `tenure-bench daemon --json`.

Usage: bench/ab_daemon.py BEFORE/tenure-bench AFTER/tenure-bench [N=12]
Each tenure-bench starts the tenured beside it; build each side from its own worktree with
its own --target-dir (docs/benchmarks.md)."""
import json
import statistics
import subprocess
import sys

if len(sys.argv) < 3:
    sys.exit(__doc__)
bins = {"before": sys.argv[1], "after": sys.argv[2]}
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 12
res = {k: {"acquire_p50_ms": [], "release_p50_ms": [], "acquires_per_s": []} for k in bins}
for _ in range(rounds):
    for side, b in bins.items():
        out = subprocess.run(
            [b, "daemon", "--device", "auto", "--leases", "30", "--concurrency", "8", "--json"],
            capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if not line.startswith("{"):
                continue
            j = json.loads(line)
            if "acquire free" in j["scenario"]:
                res[side]["acquire_p50_ms"].append(j["p50_us"] / 1000)
            elif j["scenario"] == "daemon release":
                res[side]["release_p50_ms"].append(j["p50_us"] / 1000)
            elif "acquires/s" in j["scenario"]:
                res[side]["acquires_per_s"].append(j["ops_per_s"])
for side, r in res.items():
    for k, v in r.items():
        print(f"{side:6} {k:15} mean {statistics.mean(v):8.3f}  range {min(v):.3f}-{max(v):.3f}"
              f"  median {statistics.median(v):.3f}  n {len(v)}")
