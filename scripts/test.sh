#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine of this kind, then runs the whole
# test suite. Run as root (loop devices, sanlock). `.ci/run` calls this.
#
# Installs: sanlock, python3-sanlock and libsanlock-dev (interop; the lvmlockd-sequence C program), util-linux (losetup), gcc (sanlock-anchor's
# rlimit shim, the watchdog test bed), fuse3 + python3-fusepy + libfuse2 (the stalled-device file system),
# python3-seccomp (denies io_uring to test the fallback), python3-prometheus-client (its parser
# reads tenured's metrics). Sets TENURE_TEST_REQUIRE_ALL=1 when
# root, so a missing prerequisite fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sanlock >/dev/null || need+=(sanlock)
/usr/bin/python3 -c 'import sanlock' 2>/dev/null || need+=(python3-sanlock)
[ -f /usr/include/sanlock_resource.h ] || need+=(libsanlock-dev)
command -v losetup >/dev/null || need+=(util-linux)
command -v gcc >/dev/null || need+=(gcc)
command -v fusermount >/dev/null || need+=(fuse3)
/usr/bin/python3 -c 'import fusepy' 2>/dev/null || need+=(python3-fusepy libfuse2)
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || need+=(python3-seccomp)
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: not root; cannot install ${need[*]} (tests that need them will skip)"
  fi
fi

if [ "$(id -u)" -eq 0 ]; then
  export TENURE_TEST_REQUIRE_ALL=1
  modprobe loop 2>/dev/null || true
fi

cargo build --workspace --all-targets
# The fuzz targets stay buildable (plain build; `cargo fuzz run` adds the instrumentation).
cargo build --manifest-path ondisk-format/fuzz/Cargo.toml
cargo test --workspace "$@"
# Coverage-guided fuzzing of the socket decoders and of command sequences through the host
# core, bounded (scripts/fuzz.sh; the captures of the run above are part of its corpus).
if [ $# -eq 0 ]; then
  bash scripts/fuzz.sh
fi
