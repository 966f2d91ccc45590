#!/bin/bash
# Curve 4 of issue 21: many clients through the daemon socket, native and sanlock, against sanlock's daemon.
cd "$(dirname "$0")/../.."
SANLOCK_RUN=${1:?usage: $0 SANLOCK_RUN_DIR}
date -u
for c in 1 8 32 100; do
  echo "## native, num_hosts 64, 300 leases, $c clients"
  target/release/tenure-bench daemon --device auto --leases 300 --num-hosts 64 --concurrency $c --compare-sanlock "$SANLOCK_RUN" 2>&1 | grep -E "^(tenure|sanlock) |bench:"
done
for c in 8 100; do
  echo "## sanlock protocol, num_hosts 64, 300 leases, $c clients"
  target/release/tenure-bench daemon --device auto --leases 300 --num-hosts 64 --concurrency $c --protocol sanlock 2>&1 | grep -E "^(tenure|sanlock) |bench:"
done
date -u
