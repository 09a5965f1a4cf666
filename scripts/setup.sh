#!/usr/bin/env bash
# Installs pagefault into .venv with what live capture needs on this machine.
# Idempotent; safe to run again. Debian packages are installed only when root and missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
echo "setup: installing pagefault${extras:+[$extras]} into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e ".${extras:+[$extras]}"
# the bytecode written now, as pip does for an ordinary install: an editable one leaves it to the first run, and
# where PYTHONDONTWRITEBYTECODE is set every run compiled pagefault's modules again (~40 ms of each start)
.venv/bin/python -m compileall -q -j 0 pagefault >/dev/null

if [ "$(id -u)" = 0 ]; then
    need=()
    # bpftrace is not installed: no capture runs it (bench/ installs it where it is the peer compared with)
    command -v gcc >/dev/null || need+=(gcc)
    command -v perf >/dev/null || need+=(linux-perf)   # the peer the benchmarks in bench/ compare with
    # the compiled BPF programs (pagefault/capture/bpf/): built here once, loaded through the system's libbpf
    # (libbpf1, which libbpf-dev brings)
    command -v clang >/dev/null || need+=(clang)
    command -v llvm-strip >/dev/null || need+=(llvm)
    [ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
    command -v bpftool >/dev/null || need+=(bpftool)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "setup: installing Debian packages: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
            || echo "setup: could not install ${need[*]}; pagefault doctor says which tier that leaves"
    fi
    if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null; then
        # the HTML report's test opens the report in headless Chromium, driven by playwright (no browser download)
        echo "setup: installing Debian packages for the tests: chromium fonts-dejavu-core"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium fonts-dejavu-core >/dev/null || echo "setup: could not install chromium; the HTML browser test will fail"
    fi
    if [[ ",$extras," == *",test,"* ]] && ! command -v go >/dev/null; then
        # the pprof export's test reads it with go tool pprof itself, a real consumer, not a parser of ours
        echo "setup: installing Debian packages for the tests: golang-go"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            golang-go >/dev/null || echo "setup: could not install golang-go; the pprof tests will skip"
    fi
    if ! grep -q ' tracefs ' /proc/self/mounts; then
        echo "setup: mounting tracefs at /sys/kernel/tracing"
        mount -t tracefs nodev /sys/kernel/tracing || echo "setup: could not mount tracefs"
    fi
else
    echo "setup: not root: Debian packages and tracefs are left as they are (pagefault doctor tells what is missing)"
fi
# the BPF objects: rebuilt only when a source is newer; a missing tool is one line, and the perf tier still works
bash scripts/build-bpf.sh || echo "setup: the BPF objects were not built (the line above says what is missing); trace without -o needs them"
