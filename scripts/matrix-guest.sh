#!/usr/bin/env bash
# Inside a kernel-matrix guest (virtme-ng): mount what a fresh machine lacks, then run the checks.
#   bash scripts/matrix-guest.sh OUT_DIR
# Everything goes to OUT_DIR/<release>/guest.log, not to the guest's console: a long stream of output on
# virtme-ng's console stopped the guest mid-run under TCG, where the same run into a file completed.
set -u
cd "$(dirname "$0")/.."
# The checks run as root on purpose: under sudo, pagefault runs the traced command as the invoking user
unset SUDO_UID SUDO_GID SUDO_USER SUDO_COMMAND
OUT="$1"
PY=${MATRIX_PYTHON:-.venv/bin/python}     # the arm64 guest runs its root's python3 with the wheels on PYTHONPATH
LOG="$OUT/$(uname -r)/guest.log"
mkdir -p "$(dirname "$LOG")"
{
    grep -q ' tracefs ' /proc/self/mounts || mount -t tracefs nodev /sys/kernel/tracing
    grep -q ' debugfs ' /proc/self/mounts || mount -t debugfs none /sys/kernel/debug 2>/dev/null
    echo "guest: kernel $(uname -r), lockdown $(cat /sys/kernel/security/lockdown 2>/dev/null || echo '?'), \
la57 $(grep -qw la57 /proc/cpuinfo && echo yes || echo no), kprobes $([ -e /sys/kernel/tracing/kprobe_events ] && echo yes || echo no)"
    if [ -n "${MATRIX_BENCH:-}" ]; then
        # a benchmark on request (MATRIX_BENCH="bench/kprobe_cost.py --size N"), never in the checks' place
        HOME=/root PYTHONUNBUFFERED=1 $PY $MATRIX_BENCH > "$OUT/$(uname -r)/bench.log" 2>&1
        echo "guest: bench ended with status $?"
    else
        HOME=/root PYTHONUNBUFFERED=1 $PY scripts/matrix_checks.py "$OUT"
        echo "guest: checks ended with status $?"
    fi
} > "$LOG" 2>&1
tail -n 1 "$LOG"
