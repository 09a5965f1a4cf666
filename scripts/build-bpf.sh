#!/usr/bin/env bash
# Builds pagefault's BPF programs (pagefault/capture/bpf/*.bpf.c) into CO-RE objects, once, for this
# machine's architecture: pagefault/capture/bpf/build/<arch>/NAME.bpf.o, next to the vmlinux.h they are
# compiled against (both gitignored). The objects are loaded at run time through the system's libbpf,
# which relocates them against the running kernel's BTF: nothing is compiled when pagefault runs.
#
#   bash scripts/build-bpf.sh [--force]
#
# An object is rebuilt only when a source (its .bpf.c, a header beside it, this script) is newer. A missing
# tool is one line naming it and the fix; the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=pagefault/capture/bpf
force=0
[ "${1:-}" = --force ] && force=1

arch=$(uname -m)
case "$arch" in
    x86_64) target=x86 ;;
    aarch64) target=arm64 ;;
    *) echo "build-bpf: no BPF build for $arch (x86_64 and aarch64 only)" >&2; exit 1 ;;
esac
OUT="$SRC/build/$arch"

missing=()
command -v clang >/dev/null || missing+=("clang (apt-get install clang)")
command -v llvm-strip >/dev/null || missing+=("llvm-strip (apt-get install llvm)")
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=("libbpf's headers (apt-get install libbpf-dev)")
BTF=/sys/kernel/btf/vmlinux
if [ ! -e "$OUT/vmlinux.h" ]; then
    command -v bpftool >/dev/null || missing+=("bpftool (apt-get install bpftool)")
    [ -r "$BTF" ] || missing+=("the kernel's BTF, $BTF (a kernel built with CONFIG_DEBUG_INFO_BTF)")
fi

sources=("$SRC"/*.bpf.c)
headers=("$SRC"/*.h)
stale=()
for c in "${sources[@]}"; do
    obj="$OUT/$(basename "${c%.c}").o"
    if [ $force = 1 ] || [ ! -e "$obj" ]; then stale+=("$c"); continue; fi
    for dep in "$c" "${headers[@]}" "$0"; do
        if [ "$dep" -nt "$obj" ]; then stale+=("$c"); break; fi
    done
done
[ ${#stale[@]} -gt 0 ] || exit 0
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-bpf: cannot build the BPF objects: missing $(IFS=';'; echo "${missing[*]}" | sed 's/;/, /g'); fix: as root, bash scripts/setup.sh" >&2
    exit 1
fi

# root-owned output (the tool, as root, loads only objects nobody else could have written): 0755 dirs, 0644 files
umask 022
mkdir -p "$OUT"
if [ ! -e "$OUT/vmlinux.h" ]; then
    # the types only: CO-RE relocates every field access against the running kernel's BTF at load
    bpftool btf dump file "$BTF" format c > "$OUT/vmlinux.h.part"
    mv "$OUT/vmlinux.h.part" "$OUT/vmlinux.h"
fi
for c in "${stale[@]}"; do
    name=$(basename "${c%.c}")
    echo "build-bpf: $c -> $OUT/$name.o"
    if ! clang -O2 -g -target bpf -D__TARGET_ARCH_$target -Wall -Werror -I"$OUT" -I"$SRC" \
            -c "$c" -o "$OUT/$name.o.part" 2> "$OUT/$name.log"; then
        echo "build-bpf: clang could not compile $c: $(grep -m1 'error:' "$OUT/$name.log" || tail -n1 "$OUT/$name.log") (all of it in $OUT/$name.log)" >&2
        rm -f "$OUT/$name.o.part"
        exit 1
    fi
    # DWARF goes (661 KB → 42 KB); the .BTF and .BTF.ext sections CO-RE needs stay
    llvm-strip -g "$OUT/$name.o.part"
    mv "$OUT/$name.o.part" "$OUT/$name.o"
    rm -f "$OUT/$name.log"
done
