#!/usr/bin/env bash
# Wall time of `tenure dump` against `sanlock direct dump` over the same loop device, in one run.
# usage (root, sanlock installed): bench/dump-vs-sanlock.sh [RUNS]
# Set-up: 64 MiB sparse file on ext4, loop device --direct-io=on --sector-size 512 (write cache
# as the kernel set it), a tenure-formatted lockspace at 0 and resources at 1M and 2M.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
cargo build --release -q -p tenured --bin tenure
T=$PWD/target/release/tenure
dir=$(mktemp -d /var/tmp/tenure-bench-XXXXXX)
truncate -s 64M "$dir/lun"
L=$(losetup -f --show --direct-io=on --sector-size 512 "$dir/lun")
trap 'losetup -d "$L"; rm -rf "$dir"' EXIT
[ "$(cat /sys/block/$(basename "$L")/loop/dio)" = 1 ] || { echo "no direct I/O on $L" >&2; exit 1; }
echo "device $L, write cache: $(cat /sys/block/$(basename "$L")/queue/write_cache), $runs runs each"
$T lockspace init "BM:0:$L:0" >/dev/null
$T resource init "BM:r1:$L:1M" >/dev/null
$T resource init "BM:r2:$L:2M" >/dev/null
measure() {
  local s e
  s=$(date +%s%N)
  for _ in $(seq "$runs"); do "$@" >/dev/null; done
  e=$(date +%s%N)
  printf '%-45s %8.2f ms/run\n' "$(echo "$* " | sed "s|$T|tenure|; s|$L|DEV|")" "$(echo "($e - $s) / $runs / 1000000" | bc -l)"
}
measure "$T" dump "$L"
measure sanlock direct dump "$L:0:67108864"
measure "$T" dump "$L:0:3M"
measure sanlock direct dump "$L:0:3145728"
