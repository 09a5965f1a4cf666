#!/usr/bin/env bash
# The arm64 guest of the kernel matrix: a Debian bookworm arm64 root with Python, libbpf1 (the library
# pagefault loads its compiled BPF objects through; the arm64 objects are built on the host by
# scripts/build-bpf.sh --arch aarch64) and busybox, pagefault's Python dependencies (aarch64 wheels,
# installed on the host into the root), and Debian's arm64 kernel unpacked into it (no initramfs:
# virtme-ng makes its own). bpftrace is not installed: nothing in the guest runs it.
#
#   sudo bash scripts/arm64-root.sh DIR        → DIR/root, and DIR/kernels: one line per kernel, NAME RELEASE
#
# Kernels: arm64 (bookworm's 6.1), arm64-6.12 and arm64-6.12-16k (bookworm-backports' newest 6.12, built for
# 52-bit virtual addresses with LPA2, with 4 KiB and with 16 KiB pages).
#
# Built once and reused while DIR/stamp matches what this script would build (its own text and
# pyproject.toml's dependencies, and so the package list below: a changed list rebuilds the root); a root
# left half-built by an interrupted run has no stamp and is rebuilt. Cold: mmdebstrap runs arm64 maintainer
# scripts under qemu-user (minutes); warm: nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=$(realpath -m "${1:?usage: arm64-root.sh DIR}")
log() { printf 'arm64-root: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (mmdebstrap, binfmt); fix: sudo bash scripts/arm64-root.sh $DIR"; exit 2; }

PACKAGES=python3,libbpf1,busybox-static,mount,kmod,procps,gcc,libc6-dev
want=$( { cat "$0"; sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml; echo "$PACKAGES"; } | sha256sum | cut -c1-16)
if [ -f "$DIR/stamp" ] && [ "$(cat "$DIR/stamp")" = "$want" ] && [ -s "$DIR/kernels" ]; then
    log "reusing $DIR/root (stamp $want)"
    exit 0
fi

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v arch-test >/dev/null || need+=(arch-test)
[ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v depmod >/dev/null || need+=(kmod)
if [ ${#need[@]} -gt 0 ]; then
    log "installing from Debian: ${need[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
        || { log "could not install ${need[*]}; fix: apt-get install ${need[*]}"; exit 1; }
fi
# arm64 programs run on this x86 host through binfmt_misc and qemu-user (mmdebstrap's maintainer scripts)
grep -qs binfmt_misc /proc/mounts || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || { log "cannot mount binfmt_misc; fix: modprobe binfmt_misc"; exit 1; }
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
    || { log "qemu-aarch64 is not registered with binfmt_misc; fix: update-binfmts --enable qemu-aarch64"; exit 1; }

case "$DIR" in /|/root|/home|/tmp|/var|/usr|"$ROOT") log "refusing to rebuild into $DIR (it would be deleted)"; exit 2 ;; esac
rm -rf "$DIR"
mkdir -p "$DIR"
start=$(date +%s)
log "building the arm64 root with mmdebstrap (cold: several minutes under qemu-user)"
# Debian's arm64 kernel is downloaded inside the build (while the root has its package lists and network) and
# unpacked afterwards: installed, its postinst would build an initramfs under qemu-user for many minutes.
cat > "$DIR/kernel-hook.sh" <<HOOK
set -e
stable=\$(chroot "\$1" apt-cache depends linux-image-arm64 | awk '/Depends: linux-image-6/ {print \$2; exit}')
newest() { chroot "\$1" apt-cache search --names-only "^linux-image-6\\.12\\.[0-9]+\\+deb12-\$2\$" | awk '{print \$1}' | sort -V | tail -1; }
bpo=\$(newest "\$1" arm64)
bpo16k=\$(newest "\$1" arm64-16k)
for pkg in \$stable \$bpo \$bpo16k; do
    chroot "\$1" sh -c "cd /tmp && apt-get download -q \$pkg" >/dev/null
    mv "\$1"/tmp/"\$pkg"_*.deb "$DIR/"       # out of the root: mmdebstrap empties its /tmp at the end
done
printf 'arm64 %s\\narm64-6.12 %s\\narm64-6.12-16k %s\\n' "\$stable" "\$bpo" "\$bpo16k" > "$DIR/kernel-packages"
HOOK
mmdebstrap --arch=arm64 --variant=apt --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --customize-hook="sh $DIR/kernel-hook.sh \"\$1\"" \
    bookworm "$DIR/root" "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-backports main" > "$DIR/mmdebstrap.log" 2>&1 \
    || { log "mmdebstrap failed; see $DIR/mmdebstrap.log"; tail -5 "$DIR/mmdebstrap.log" >&2; exit 1; }
[ -s "$DIR/kernel-packages" ] || { log "no arm64 kernel package was downloaded; see $DIR/mmdebstrap.log"; exit 1; }
# unpacked beside the root, then copied in: extracted over it, tar would replace the merged-/usr symlink
# /lib -> usr/lib with a directory holding only the modules, and nothing would run in the guest
: > "$DIR/kernels.new"
while read -r name kpkg; do
    [ -n "$kpkg" ] || { log "no package for the $name kernel"; exit 1; }
    rm -rf "$DIR/kernel" && mkdir "$DIR/kernel"
    dpkg-deb -x "$DIR"/"$kpkg"_*.deb "$DIR/kernel"
    cp -a "$DIR/kernel/boot/." "$DIR/root/boot/"
    [ ! -d "$DIR/kernel/lib" ] || cp -a "$DIR/kernel/lib/." "$DIR/root/usr/lib/"
    [ ! -d "$DIR/kernel/usr" ] || cp -a "$DIR/kernel/usr/." "$DIR/root/usr/"
    rm -rf "$DIR/kernel" "$DIR"/"$kpkg"_*.deb
    release=${kpkg#linux-image-}
    depmod -b "$DIR/root" "$release"
    echo "$name $release" >> "$DIR/kernels.new"
done < "$DIR/kernel-packages"
[ -L "$DIR/root/lib" ] || { log "the root's /lib is no longer the merged-/usr symlink"; exit 1; }

# virtme-ng's guest init ends with poweroff, which a root without systemd lacks: busybox's does it
[ -e "$DIR/root/usr/sbin/poweroff" ] || ln -s /bin/busybox "$DIR/root/usr/sbin/poweroff"

# pagefault's dependencies: aarch64 wheels for CPython 3.11 (bookworm's python3), installed by the host's pip
deps=$(sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml | grep -o '"[^"]*"' | tr -d '"')
# shellcheck disable=SC2086
"$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --no-compile --target "$DIR/root/opt/pagefault-site" \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
    --only-binary=:all: --python-version 3.11 --implementation cp $deps > "$DIR/pip.log" 2>&1 \
    || { log "could not fetch aarch64 wheels; see $DIR/pip.log"; exit 1; }
mv "$DIR/kernels.new" "$DIR/kernels"
echo "$want" > "$DIR/stamp"
log "arm64 root ready in $(( $(date +%s) - start )) s: kernels $(cut -d' ' -f2 "$DIR/kernels" | tr '\n' ' ')"
