#!/usr/bin/env bash
# Builds the Debian package `tenure` (binaries tenured and tenure, the systemd unit, the example
# configuration as /etc/tenure/tenured.toml, man pages and shell completions generated from the
# command-line definitions, the docs) into target/debian/.
#
#   bash scripts/package.sh            # release build (what a host installs)
#   PROFILE=dev bash scripts/package.sh   # from the debug build (the package test)
#
# Installs cargo-deb with `cargo install --locked` when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --profile "$profile" -p tenured --bins
target=${CARGO_TARGET_DIR:-target}
assets="$target/$dir/assets"
rm -rf "$assets"
"$target/$dir/tenure" __assets "$assets" >/dev/null
"$target/$dir/tenured" --assets "$assets" >/dev/null
# The asset list names target/release/...; --profile points cargo-deb at this profile's.
cargo deb -p tenured --no-build --profile "$profile" --strip "$@"
