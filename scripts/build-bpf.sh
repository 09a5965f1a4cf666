#!/usr/bin/env bash
# Builds pagefault's BPF programs (pagefault/capture/bpf/*.bpf.c) into CO-RE objects, once, per architecture:
# pagefault/capture/bpf/build/<arch>/NAME.bpf.o, next to the vmlinux.h they are compiled against (both
# gitignored). The objects are loaded at run time through the system's libbpf, which relocates them against
# the running kernel's BTF: nothing is compiled when pagefault runs.
#
#   bash scripts/build-bpf.sh [--force] [--arch x86_64|aarch64] [--btf FILE]
#
# --arch: the architecture to build for (default: this machine's). Another architecture's objects are for the
#   kernel matrix's guests (the arm64 rows load build/aarch64/ from this tree, shared into the guest).
# --btf: where that architecture's vmlinux.h comes from, made once (a kernel's types; CO-RE relocates every
#   field access at load, so any kernel of the architecture with the types used will do): raw BTF
#   (/sys/kernel/btf/vmlinux, the default for this machine's architecture), or a kernel image (an arm64
#   Image or vmlinuz, gzip-compressed or not), whose .BTF section is found by its header and cut out, so no
#   guest has to boot for it. Default for aarch64 off an arm64 machine: the newest kernel of the matrix's arm64
#   root (ARM64_CACHE, default /var/cache/pagefault/arm64, built by scripts/arm64-root.sh).
#
# An object is rebuilt only when a source (a .bpf.c or header beside it, this script) is newer. A missing
# tool is one line naming it and the fix; the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=pagefault/capture/bpf
force=0
arch=$(uname -m)
btf=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1; shift ;;
        --arch) arch="$2"; shift 2 ;;
        --btf) btf="$2"; shift 2 ;;
        *) echo "build-bpf: unknown argument $1 (usage: build-bpf.sh [--force] [--arch x86_64|aarch64] [--btf FILE])" >&2
           exit 2 ;;
    esac
done

case "$arch" in
    x86_64) target=x86 ;;
    aarch64) target=arm64 ;;
    *) echo "build-bpf: no BPF build for $arch (x86_64 and aarch64 only)" >&2; exit 1 ;;
esac
OUT="$SRC/build/$arch"
if [ -z "$btf" ]; then
    if [ "$arch" = "$(uname -m)" ]; then
        btf=/sys/kernel/btf/vmlinux
    else
        cache=${ARM64_CACHE:-/var/cache/pagefault/arm64}
        # sort -V: the newest release last (6.12.95+deb12-arm64 after 6.1.0-50-arm64; -16k after its 4 KiB twin)
        btf=$(ls "$cache"/root/boot/vmlinuz-* 2>/dev/null | sort -V | grep -v -- '-16k$' | tail -1 || true)
    fi
fi

missing=()
command -v clang >/dev/null || missing+=("clang (apt-get install clang)")
command -v llvm-strip >/dev/null || missing+=("llvm-strip (apt-get install llvm)")
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=("libbpf's headers (apt-get install libbpf-dev)")
if [ ! -e "$OUT/vmlinux.h" ]; then
    command -v bpftool >/dev/null || missing+=("bpftool (apt-get install bpftool)")
    if [ -z "$btf" ]; then
        missing+=("a $arch kernel's BTF (an arm64 kernel image: sudo bash scripts/arm64-root.sh ${ARM64_CACHE:-/var/cache/pagefault/arm64}, or --btf FILE)")
    elif [ ! -r "$btf" ]; then
        missing+=("the kernel's BTF, $btf (a kernel built with CONFIG_DEBUG_INFO_BTF)")
    fi
fi

sources=("$SRC"/*.bpf.c)
headers=("$SRC"/*.h)
stale=()
for c in "${sources[@]}"; do
    obj="$OUT/$(basename "${c%.c}").o"
    if [ $force = 1 ] || [ ! -e "$obj" ]; then stale+=("$c"); continue; fi
    # any source newer, not only its own: the loader (capture/bpf/__init__.py) holds every object to the newest
    for dep in "${sources[@]}" "${headers[@]}" "$0"; do
        if [ "$dep" -nt "$obj" ]; then stale+=("$c"); break; fi
    done
done
[ ${#stale[@]} -gt 0 ] || exit 0
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-bpf: cannot build the $arch BPF objects: missing $(IFS=';'; echo "${missing[*]}" | sed 's/;/, /g'); fix: as root, bash scripts/setup.sh" >&2
    exit 1
fi

# root-owned output (the tool, as root, loads only objects nobody else could have written): 0755 dirs, 0644 files
umask 022
mkdir -p "$OUT"
if [ ! -e "$OUT/vmlinux.h" ]; then
    raw="$btf"
    if ! head -c 2 "$btf" | od -An -tx1 | grep -q '9f eb'; then
        # a kernel image: its .BTF section, found by the header (magic 0xeB9F, version 1, 24-byte header) and
        # cut to the length the header gives (kernel images carry one; the first that parses is taken)
        raw="$OUT/vmlinux.btf.part"
        if ! python3 - "$btf" "$raw" <<'PY'
import gzip, struct, sys
data = open(sys.argv[1], "rb").read()
if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
at = data.find(b"\x9f\xeb\x01\x00\x18\x00\x00\x00")
while at >= 0:
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<5I", data, at + 4)
    end = at + hdr_len + str_off + str_len
    if type_off == 0 and str_off == type_len and end <= len(data) and data[end - 1] == 0:
        open(sys.argv[2], "wb").write(data[at:end])
        sys.exit(0)
    at = data.find(b"\x9f\xeb\x01\x00\x18\x00\x00\x00", at + 1)
sys.exit(f"no BTF in {sys.argv[1]} (a kernel built without CONFIG_DEBUG_INFO_BTF, or a compressed image other than gzip)")
PY
        then
            echo "build-bpf: cannot take the $arch kernel's types from $btf; fix: --btf FILE naming raw BTF or a kernel image with BTF" >&2
            rm -f "$raw"
            exit 1
        fi
    fi
    # the types only: CO-RE relocates every field access against the running kernel's BTF at load
    if ! bpftool btf dump file "$raw" format c > "$OUT/vmlinux.h.part"; then
        echo "build-bpf: bpftool could not read the BTF of $btf; fix: --btf FILE naming another kernel's" >&2
        rm -f "$OUT/vmlinux.h.part" "$OUT/vmlinux.btf.part"
        exit 1
    fi
    echo "$btf" > "$OUT/vmlinux.h.source"
    rm -f "$OUT/vmlinux.btf.part"
    mv "$OUT/vmlinux.h.part" "$OUT/vmlinux.h"
fi
for c in "${stale[@]}"; do
    name=$(basename "${c%.c}")
    echo "build-bpf: $c -> $OUT/$name.o"
    # -mcpu=v3 is not set: the default instruction set loads on every kernel the matrix runs
    if ! clang -O2 -g -target bpf -D__TARGET_ARCH_$target -Wall -Werror -I"$OUT" -I"$SRC" \
            -c "$c" -o "$OUT/$name.o.part" 2> "$OUT/$name.log"; then
        echo "build-bpf: clang could not compile $c for $arch: $(grep -m1 'error:' "$OUT/$name.log" || tail -n1 "$OUT/$name.log") (all of it in $OUT/$name.log)" >&2
        rm -f "$OUT/$name.o.part"
        exit 1
    fi
    # DWARF goes (661 KB → 42 KB); the .BTF and .BTF.ext sections CO-RE needs stay
    llvm-strip -g "$OUT/$name.o.part"
    mv "$OUT/$name.o.part" "$OUT/$name.o"
    rm -f "$OUT/$name.log"
done
