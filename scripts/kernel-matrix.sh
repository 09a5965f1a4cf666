#!/usr/bin/env bash
# The kernel matrix: pagefault's checks on the host kernel and on Debian's own 6.1 and 6.12 kernels,
# booted under QEMU with virtme-ng over a copy-on-write view of this machine (KVM where /dev/kvm works,
# TCG otherwise).
#
#   sudo bash scripts/kernel-matrix.sh [KERNEL…] [--out DIR] [--bound SECONDS]
#
# KERNEL: host, 6.1, 6.12 (the newest Debian package of that series), a release such as
# 6.1.0-56-amd64 (its linux-image-RELEASE-unsigned package), or arm64, arm64-6.12, arm64-6.12-16k (Debian
# bookworm's arm64 6.1, and bookworm-backports' 6.12 with 4 and 16 KiB pages, in an arm64 root built by
# scripts/arm64-root.sh and cached in ARM64_CACHE, default /var/cache/pagefault/arm64, under
# qemu-system-aarch64; the arm64 BPF objects are built on this host for them, once: scripts/build-bpf.sh
# --arch aarch64). Default: host 6.1 6.12 arm64 arm64-6.12 arm64-6.12-16k.
# Each kernel's outputs go to DIR/<kernel release>/ (default: matrix-out/): doctor.json, journey.json,
# evidence/ (the offline tests' fixtures), trace.json, decode-*.json, checks.tsv, console.log.
# Prints a table of kernel × check, each kernel's wall times, and a last line
#   matrix: N kernels, M checks, all passed
# Exits non-zero on any miss. A guest that hangs is killed at its bound; no QEMU is left behind.
set -uo pipefail
cd "$(dirname "$0")/.."
# The host's checks and the guests run the traced programs as root: `sudo bash scripts/kernel-matrix.sh` must not
# hand them to the invoking user (pagefault does that under sudo, unless --as-root)
unset SUDO_UID SUDO_GID SUDO_USER SUDO_COMMAND
ROOT=$(pwd)
OUT="$ROOT/matrix-out"
BOUND=1200           # per guest: boot + every check, under TCG (about 10-30x slower than the host); the held-out
                     # programs alone take ~6 min of it there (17 recordings, 6 counts in the kernel)
KERNELS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$(realpath -m "$2"); shift 2 ;;
        --bound) BOUND="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "kernel-matrix: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) KERNELS+=("$1"); shift ;;
    esac
done
[ ${#KERNELS[@]} -gt 0 ] || KERNELS=(host 6.1 6.12 arm64 arm64-6.12 arm64-6.12-16k)
ARM64_CACHE=${ARM64_CACHE:-/var/cache/pagefault/arm64}
if [ "$(id -u)" != 0 ]; then
    echo "kernel-matrix: needs root (apt-get, tracing inside the guests); fix: sudo bash scripts/kernel-matrix.sh" >&2
    exit 2
fi
mkdir -p "$OUT"
log() { printf 'kernel-matrix: %s\n' "$*" >&2; }

# --- what the matrix needs: the project, QEMU, busybox, the kernels, virtme-ng -----------------------
bash scripts/setup.sh >/dev/null || { log "scripts/setup.sh failed"; exit 1; }
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)

release_of() {   # a KERNEL argument -> the release to boot ("" for the host)
    case "$1" in
        host) echo "" ;;
        arm64|arm64-6.12|arm64-6.12-16k) echo "$1" ;;     # known once the arm64 root is built, below
        6.1|6.12)
            apt-cache search --names-only "^linux-image-$1\\.[0-9].*-amd64-unsigned\$" 2>/dev/null \
                | awk '{print $1}' | grep -v -e cloud -e '-rt-' | sed 's/^linux-image-//; s/-unsigned$//' \
                | sort -V | tail -1 ;;
        *) echo "$1" ;;
    esac
}
declare -A RELEASE
apt_updated=0
for k in "${KERNELS[@]}"; do
    r=$(release_of "$k")
    if [ "$k" != host ] && [ -z "$r" ] && [ $apt_updated = 0 ]; then
        apt-get update -qq >/dev/null 2>&1; apt_updated=1; r=$(release_of "$k")
    fi
    if [ "$k" != host ] && [ -z "$r" ]; then
        log "no Debian kernel package for $k; fix: apt-get update, or name a release (e.g. 6.1.0-56-amd64)"; exit 1
    fi
    RELEASE[$k]=$r
    [ -z "$r" ] || [ "${k%%-*}" = arm64 ] || [ -e "/boot/vmlinuz-$r" ] || need+=("linux-image-$r-unsigned")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing from Debian: ${need[*]}"
    [ $apt_updated = 1 ] || apt-get update -qq >/dev/null 2>&1
    # INITRD=No: virtme-ng makes its own initramfs; update-initramfs would cost minutes per kernel
    if ! INITRD=No DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
        log "could not install ${need[*]}; fix: apt-get update, then apt-get install ${need[*]}"; exit 1
    fi
fi
VENV="$ROOT/.matrix-venv"
if [ ! -x "$VENV/bin/vng" ]; then
    log "installing virtme-ng into $VENV"
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check virtme-ng \
        || { log "could not install virtme-ng from PyPI; fix: $VENV/bin/pip install virtme-ng"; exit 1; }
fi
export PATH="$VENV/bin:$PATH"     # vng calls virtme-run from the same bin/
ACCEL=(--disable-kvm)
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then ACCEL=(); fi

# --- run every kernel ------------------------------------------------------------------------------
GUEST_PIDS=()
cleanup() { for p in "${GUEST_PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done; }
trap cleanup EXIT INT TERM HUP

declare -A WALL STATUS
boot_guest() {   # KERNEL RELEASE KERNEL_IMAGE_WORDS VNG_ARGS… : one guest's run into OUT/RELEASE/, its status in STATUS
    local k=$1 rel=$2 image=$3
    shift 3
    # its own session, so that the whole QEMU process tree can be killed at the bound or on exit
    # One vCPU: with two, QEMU 7.2's multi-threaded TCG stopped the guest mid-run (vng status 255, no
    # kernel message) in 4 of 5 tries here; with one, 4 of 4 runs completed, in the same time.
    setsid timeout --kill-after=15 "$BOUND" vng --memory 2G --cpus 1 "$@" > "$OUT/$rel/console.log" 2>&1 < /dev/null &
    GUEST_PIDS+=($!)
    wait $!
    STATUS[$k]=$?
    [ -s "$OUT/$rel/guest.log" ] && cat "$OUT/$rel/guest.log" >> "$OUT/$rel/console.log"
    if [ "${STATUS[$k]}" = 124 ] || [ "${STATUS[$k]}" = 137 ]; then
        log "$rel: the guest did not finish within ${BOUND} s and was killed; see $OUT/$rel/console.log"
    elif [ ! -s "$OUT/$rel/checks.tsv" ]; then
        log "$rel: the guest wrote no results (did it boot? see $OUT/$rel/console.log); fix: check that $image exists and boots with vng"
    fi
}
for k in "${KERNELS[@]}"; do
    r=${RELEASE[$k]}
    start=$(date +%s)
    if [ "${k%%-*}" = arm64 ]; then
        # an arm64 row: its own root (cached, shared by the arm64 kernels), the project and OUT shared into
        # it, Python from the root
        rel=$k
        if ! bash scripts/arm64-root.sh "$ARM64_CACHE"; then
            log "$k: the arm64 root could not be built (see above)"; STATUS[$k]=1
        elif ! ARM64_CACHE="$ARM64_CACHE" bash scripts/build-bpf.sh --arch aarch64; then
            # built once (then only when a source changes), against the root's newest arm64 kernel's BTF
            log "$k: the arm64 BPF objects could not be built (see above)"; STATUS[$k]=1
        elif ! rel=$(awk -v k="$k" '$1 == k {print $2}' "$ARM64_CACHE/kernels") || [ -z "$rel" ]; then
            rel=$k; log "$k: no such kernel in $ARM64_CACHE/kernels"; STATUS[$k]=1
        else
            aroot="$ARM64_CACHE/root"
            mkdir -p "$OUT/$rel" "$aroot$ROOT" "$aroot$OUT"    # mount points of --rodir/--rwdir in the root
            log "booting $rel (arm64) under qemu-system-aarch64 (TCG), bound ${BOUND} s"
            # -cpu max: virtme-ng's default for TCG, cortex-a57, has neither 16 KiB pages nor LPA2, so the 16k
            # kernel could not boot and 6.12 ran folded to 48 bits; pauth-impdef keeps pointer auth cheap to emulate
            boot_guest "$k" "$rel" "the arm64 root's /boot/vmlinuz-$rel" --arch arm64 --root "$aroot" \
                -r "$aroot/boot/vmlinuz-$rel" --qemu-opts="-cpu max,pauth-impdef=on" --rodir "$ROOT=$ROOT" \
                --rwdir "$OUT=$OUT" -- \
                "MATRIX_PYTHON=python3 PYTHONPATH=/opt/pagefault-site:$ROOT PYTHONDONTWRITEBYTECODE=1 bash $ROOT/scripts/matrix-guest.sh $OUT"
        fi
    elif [ -z "$r" ]; then
        log "host kernel $(uname -r): running the checks directly"
        .venv/bin/python scripts/matrix_checks.py "$OUT" > "$OUT/host-console.log" 2>&1
        STATUS[$k]=$?
        rel=$(uname -r)
        mkdir -p "$OUT/$rel" && mv "$OUT/host-console.log" "$OUT/$rel/console.log"
    else
        rel=$r
        mkdir -p "$OUT/$rel"
        mode=$([ ${#ACCEL[@]} = 0 ] && echo KVM || echo "TCG, no vmx/svm here")
        log "booting $rel under QEMU ($mode), bound ${BOUND} s"
        boot_guest "$k" "$rel" "/boot/vmlinuz-$rel" "${ACCEL[@]}" -r "/boot/vmlinuz-$rel" --rwdir "$OUT" -- \
            "MATRIX_BENCH='${MATRIX_BENCH:-}' bash $ROOT/scripts/matrix-guest.sh $OUT"
    fi
    WALL[$k]=$(( $(date +%s) - start ))
    RELEASE[$k]=$rel
done
cleanup
trap - EXIT
if pgrep -f "qemu-system.*vmlinuz" >/dev/null; then log "a QEMU process is still running after the matrix"; fi

# --- the table ------------------------------------------------------------------------------------------
checks=$(for k in "${KERNELS[@]}"; do cut -f1 "$OUT/${RELEASE[$k]}/checks.tsv" "$OUT/${RELEASE[$k]}/expected.txt" 2>/dev/null
         done | awk 'NF && !seen[$0]++')
printf '%-26s' "check"; for k in "${KERNELS[@]}"; do printf ' %-24s' "${RELEASE[$k]}"; done; echo
total=0; failed=0
# each kernel's expected.txt (written by matrix_checks.py) names the checks it is to report: a check not
# named there reads "n/a" and counts for nothing (the arm64 row has no scenarios yet); one named and absent
# is "missing" and fails, as is every check of a kernel that wrote no expected.txt
for c in $checks; do
    printf '%-26s' "$c"
    for k in "${KERNELS[@]}"; do
        res=$(awk -F'\t' -v c="$c" '$1==c {print $2}' "$OUT/${RELEASE[$k]}/checks.tsv" 2>/dev/null)
        expected="$OUT/${RELEASE[$k]}/expected.txt"
        if [ -z "$res" ] && [ -s "$expected" ] && ! grep -qx "$c" "$expected"; then
            printf ' %-24s' "n/a"; continue
        fi
        [ -n "$res" ] || res=missing
        total=$((total + 1)); [ "$res" = pass ] || failed=$((failed + 1))
        printf ' %-24s' "$res"
    done
    echo
done
for k in "${KERNELS[@]}"; do
    rel=${RELEASE[$k]}
    [ -s "$OUT/$rel/checks.tsv" ] || { total=$((total + 1)); failed=$((failed + 1)); }
    times=$(python3 -c "import json,sys; t=json.load(open(sys.argv[1])); print(', '.join(f'{k} {v:.0f} s' for k,v in t.items()))" \
            "$OUT/$rel/times.json" 2>/dev/null || echo "no times")
    checks_s=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['total']))" "$OUT/$rel/times.json" 2>/dev/null || echo 0)
    echo "wall time $rel: ${WALL[$k]} s in all, boot and shutdown about $(( ${WALL[$k]} - checks_s )) s ($times)"
    awk -F'\t' '$2 != "pass" {print "  " $1 ": " $3}' "$OUT/$rel/checks.tsv" 2>/dev/null
done
if [ "$failed" = 0 ]; then
    echo "matrix: ${#KERNELS[@]} kernels, $total checks, all passed"
    exit 0
fi
echo "matrix: ${#KERNELS[@]} kernels, $total checks, $failed failed"
exit 1
