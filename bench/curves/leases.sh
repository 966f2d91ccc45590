#!/bin/bash
# Curve 3 of issue 21: acquire against num_hosts (512 with sanlock, 4096 tenure only), then leases in flight.
cd "$(dirname "$0")/../.."
SANLOCK_RUN=${1:?usage: $0 SANLOCK_RUN_DIR}
date -u
for nh in 64 250 500 1000 2000; do
  echo "## sector 512 num_hosts $nh"
  target/release/tenure-bench acquire --device auto --leases 30 --num-hosts $nh --compare-sanlock "$SANLOCK_RUN" 2>&1 | grep -E "acquire|release |chain bound|in flight|acquirers|bench:"
done
for nh in 64 250 500 1000 2000; do
  echo "## sector 4096 num_hosts $nh"
  target/release/tenure-bench acquire --device auto --leases 30 --num-hosts $nh --sector-size 4096 2>&1 | grep -E "acquire|chain bound|in flight|acquirers|bench:"
done
for l in 1 10 100 1000; do
  echo "## in flight $l (512, num_hosts 64)"
  target/release/tenure-bench acquire --device auto --leases $l --num-hosts 64 2>&1 | grep -E "in flight|bench:"
  echo "## in flight $l (512, num_hosts 2000)"
  target/release/tenure-bench acquire --device auto --leases $l --num-hosts 2000 2>&1 | grep -E "in flight|bench:"
done
date -u
