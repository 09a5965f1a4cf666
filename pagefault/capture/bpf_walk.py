"""The bpf tier: the raw page-table entries of one address, read by bpftrace from the task's mm->pgd.

bpftrace follows each entry's frame through the kernel's direct map. The direct map's base
(page_offset_base) is randomised at boot and, without CONFIG_KALLSYMS_ALL, not in
/proc/kallsyms; so it is derived, never assumed: base = mm->pgd (read here) − the PGD page's
physical address (the pfn of the pgd_alloc allocation that perf saw during exec). A base that
is not 1 GiB aligned (as the kernel's KASLR keeps it) is refused.

Entries are read twice: when the fault enters the kernel (tracepoint exceptions:page_fault_user,
before the handler) and at the target's next system call (the write that reports the next phase),
after the handler installed the PTE.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from typing import Callable

from ..decode.address import LEVEL_NAMES, level_shift
from ..evidence import BpfWalk, MapleStep, WalkRead
from .runner import start_child, stop_child
from .safe_paths import UnsafePathError, trusted_executable

FRAME_MASK = 0x000F_FFFF_FFFF_F000
_LINE = re.compile(r"^(before|after) (\w+) ([0-9a-f]+)(?: ([0-9a-f]+))?$")
_LINE_ANY = re.compile(r"^([0-9a-f]+) (\w+) ([0-9a-f]+)(?: ([0-9a-f]+))?$")


class BpfError(Exception):
    """bpftrace could not be used; the message says why and the fix."""


def bpftrace_executable() -> str:
    """bpftrace's path, from a directory nobody else can write (safe_paths); BpfError with the fix otherwise."""
    try:
        exe = trusted_executable("bpftrace")
    except UnsafePathError as exc:
        raise BpfError(str(exc)) from None
    if not exe:
        raise BpfError("bpftrace is not installed; fix: as root, bash scripts/setup.sh (or apt-get install bpftrace)")
    return exe


def _walk_block(when: str, address: int | str, levels: int, quiet: bool = False) -> str:
    """bpftrace statements that read one entry per level, stopping at a non-present or huge entry.

    address: a constant, or the name of a bpftrace variable holding it (indices computed in the script).
    quiet: read without printing (a candidate fault that may not be the one followed); $pte and $pmd
    keep the last two levels' entries (0 where the walk stopped above them)."""
    names = LEVEL_NAMES[levels]
    lines = ["$t = (uint64)curtask->mm->pgd; $pte = (uint64)0; $pmd = (uint64)0;"]
    if not quiet:
        lines.append(f'printf("{when} pgdv %lx\\n", $t);')
    indent = ""
    for pos, name in enumerate(names):
        shift = level_shift(levels, pos)
        idx = f"{((address >> shift) & 0x1FF) * 8}" if isinstance(address, int) else f"((({address}) >> {shift}) & 0x1ff) * 8"
        keep = " $pte = $e;" if name == "PTE" else " $pmd = $e;" if name == "PMD" else ""
        show = "" if quiet else f' printf("{when} {name} %lx %lx\\n", $e, $t - $base);'
        lines.append(f"{indent}$e = *(uint64 *)($t + {idx});{keep}{show}")
        if pos < len(names) - 1:
            huge_stop = name in ("PUD", "PMD")
            cond = "($e & 1)" + (" && !($e & 0x80)" if huge_stop else "")
            lines.append(f"{indent}if ({cond}) {{ $t = $base + ($e & {FRAME_MASK:#x});")
            indent += "  "
    lines.append("}" * (len(names) - 1))
    return "\n    ".join(lines)


# struct maple_range_64 (and leaf_64): parent, pivot[15] at +8, slot[16] at +128; struct maple_arange_64:
# parent, pivot[9] at +8, slot[10] at +80 (include/linux/maple_tree.h, the same from 6.1 to 6.18). The
# search reads them raw, with a variable slot index; the script checks them against BTF's typed access
# at the root node and reports maple_layout_ok (a mismatch makes the walk unavailable, not wrong).
MAPLE_LAYOUT = {3: (9, 80), 2: (15, 128), 1: (15, 128)}   # enum maple_type → (pivots, slot offset)
MAPLE_DEPTH = 6
OBJECT_FIELDS = ("map_count", "maple_root", "maple_layout_ok", "vma", "vm_start", "vm_end", "vm_flags",
                 "vm_page_prot", "vm_file", "anon_vma", "folio_pfn", "page_flags", "refcount", "mapcount")


def _objects_block(when: str, address: int | str, search: bool = True, quiet: bool = False) -> str:
    """bpftrace statements reading mm->map_count and, with `search`, the maple-tree search for `address`
    and the VMA it ends at. The search is written with bounded while loops: unrolled, it made a program
    that took bpftrace minutes to compile under QEMU's TCG."""
    out = ["$mm = curtask->mm;"]
    if not quiet:
        out.append(f'printf("{when} obj map_count %d\\n", $mm->map_count);')
    if not search:
        return "\n    ".join(out)
    target = f"{address:#x}" if isinstance(address, int) else address
    out += ["$me = (uint64)$mm->mm_mt.ma_root;",
            f'printf("{when} obj maple_root 0x%lx\\n", $me);',
            "$leaf = 0; $vma = (uint64)0; $depth = 0;",
            "if (($me & 3) == 2 && $me > 4096) {",
            "  $rn = $me & ~0xff;",
            f'  printf("{when} obj maple_layout_ok %d\\n", (uint64)((struct maple_node *)$rn)->ma64.slot[0] == '
            "*(uint64 *)($rn + 80) && (uint64)((struct maple_node *)$rn)->mr64.slot[0] == *(uint64 *)($rn + 128) && "
            "((struct maple_node *)$rn)->ma64.pivot[0] == *(uint64 *)($rn + 8));",
            "} else { $vma = $me; $leaf = 1; }",
            f"while ($leaf == 0 && $depth < {MAPLE_DEPTH}) {{",
            "  $node = $me & ~0xff; $type = ($me >> 3) & 0xf; $off = 99; $i = 0;",
            f"  $npiv = $type == 3 ? {MAPLE_LAYOUT[3][0]} : {MAPLE_LAYOUT[2][0]};",
            f"  $slots = $type == 3 ? {MAPLE_LAYOUT[3][1]} : {MAPLE_LAYOUT[2][1]};",
            f"  while ($i < {MAPLE_LAYOUT[2][0]}) {{",
            "    if ($off == 99 && $i < $npiv) {",
            "      $p = *(uint64 *)($node + 8 + $i * 8);",
            f"      if ($p >= {target} || ($p == 0 && $i > 0)) {{ $off = $i; }}",
            "    }",
            "    $i++;",
            "  }",
            "  if ($off == 99) { $off = $npiv; }",
            "  $next = *(uint64 *)($node + $slots + $off * 8);",
            f'  printf("{when} maple %d 0x%lx %d %d 0x%lx\\n", $depth, $node, $type, $off, $next);',
            "  if ($type < 2) {",
            "    $leaf = 1; $vma = $next; $i = 0;",
            f"    while ($i < {MAPLE_LAYOUT[1][0]}) {{",
            f'      printf("{when} pivot %d 0x%lx\\n", $i, *(uint64 *)($node + 8 + $i * 8)); $i++;',
            "    }",
            "  } else { $me = $next; }",
            "  $depth++;",
            "}",
            "if ($vma != 0) {",
            "  $v = (struct vm_area_struct *)$vma;",
            f'  printf("{when} obj vma 0x%lx\\n", $vma);']
    for name, expr in (("vm_start", "$v->vm_start"), ("vm_end", "$v->vm_end"), ("vm_flags", "(uint64)$v->vm_flags"),
                       ("vm_page_prot", "$v->vm_page_prot.pgprot"), ("vm_file", "(uint64)$v->vm_file"),
                       ("anon_vma", "(uint64)$v->anon_vma")):
        out.append(f'  printf("{when} obj {name} 0x%lx\\n", {expr});')
    out.append("}")
    text = "\n    ".join(out)
    # a quiet read keeps $vma and the reads, and prints nothing (bpftrace printf arguments hold no ';')
    return re.sub(r"printf\([^;]*\);", "", text) if quiet else text


def _folio_block() -> str:
    """The struct page of the PFN in the entry just read ($e), at vmemmap_base + pfn × sizeof(struct page)."""
    return "\n    ".join([
        "if (@vmemmap != 0 && ($e & 1)) {",
        f"  $pfn = ($e & {FRAME_MASK:#x}) >> 12; $pg = @vmemmap + $pfn * sizeof(struct page);",
        '  printf("after obj folio_pfn 0x%lx\\n", $pfn);',
        '  printf("after obj page_flags 0x%lx\\n", *(uint64 *)$pg);',
        '  printf("after obj refcount %d\\n", ((struct page *)$pg)->_refcount.counter);',
        '  printf("after obj mapcount %d\\n", ((struct page *)$pg)->_mapcount.counter);',
        "}"])


def bpftrace_script(pid: int, page: int, pgd_physical: int, levels: int, tool_pid: int) -> str:
    """Before: at the fault on `page`. After: at the target's next syscall. Then exit.

    At both moments it also reads, through BTF, mm->map_count, the maple-tree search for the page and
    the VMA it ends at; after, the struct page of the new frame, once an LRU insertion anywhere has
    shown where vmemmap is (pagemap:mm_lru_insertion gives a folio pointer with its PFN)."""
    base = f"$base = (uint64)curtask->mm->pgd - {pgd_physical:#x};"
    return f"""
tracepoint:exceptions:page_fault_user /pid == {pid} && (args->address & ~0xfff) == {page:#x} && @state == 0/ {{
    {base}
    printf("before base %lx\\n", $base);
    {_walk_block("before", page, levels)}
    {_objects_block("before", page)}
    @state = 1;
}}
tracepoint:raw_syscalls:sys_enter /pid == {pid} && @state == 1/ {{
    {base}
    {_walk_block("after", page, levels)}
    {_folio_block()}
    {_objects_block("after", page, search=False)}
    @state = 2;
    exit();
}}
tracepoint:pagemap:mm_lru_insertion /@vmemmap == 0/ {{
    @vmemmap = (uint64)args->folio - args->pfn * sizeof(struct page);
    printf("vmemmap 0x%lx 0x%lx 0x%lx %d\\n", @vmemmap, (uint64)args->folio, args->pfn, sizeof(struct page));
}}
tracepoint:exceptions:page_fault_user /pid == {tool_pid} && @armedf == 0/ {{ printf("armed fault\\n"); @armedf = 1; }}
tracepoint:raw_syscalls:sys_enter /pid == {tool_pid} && @armed == 0/ {{ printf("armed syscall\\n"); @armed = 1; }}
"""


class BpfTracer:
    """A running bpftrace for one address; armed() returns once its probes fire."""

    def __init__(self, pid: int, address: int, pgd_physical: int, levels: int, extra_script: str = ""):
        exe = bpftrace_executable()
        self.page = address & ~0xFFF
        self.pgd_physical = pgd_physical
        self.script = bpftrace_script(pid, self.page, pgd_physical, levels, os.getpid()) + "\n" + extra_script
        self.proc = start_child([exe, "-B", "line", "-e", self.script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._partial = b""

    def _read_lines(self, timeout: float) -> bool:
        """Read what bpftrace has printed (raw reads: a buffered reader would hide lines from select)."""
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        *whole, self._partial = (self._partial + chunk).split(b"\n")
        self.lines.extend(l.decode(errors="replace").strip() for l in whole)
        return True

    def arm(self, bound: float = 600.0, progress=None) -> None:
        """Make our own fault and syscall until both probes report: then the target's are live too.

        A handshake, not a guess: bpftrace's own "armed" lines say its probes fire. Compiling and
        attaching takes about a second here and tens of seconds under QEMU's TCG, so the only limit is
        a generous outer ``bound`` (for a bpftrace that hangs), with a progress line every few seconds.
        """
        import mmap
        started = time.monotonic()
        last_said = started
        seen: set[str] = set()
        while seen != {"armed fault", "armed syscall"}:
            if self.proc.poll() is not None:
                raise BpfError("bpftrace stopped: " + _last_error(self.proc.stderr.read().decode(errors="replace")))
            now = time.monotonic()
            if now - started > bound:
                self.stop()
                raise BpfError(f"bpftrace did not attach its probes within {bound:.0f} s (it is still compiling or "
                               "hung); fix: check that bpftrace -e 'BEGIN { exit() }' works")
            if progress and now - last_said > 5:
                progress(f"waiting for bpftrace to attach its probes ({now - started:.0f} s so far)")
                last_said = now
            pages = mmap.mmap(-1, 64 * 4096)
            for i in range(0, 64 * 4096, 4096):
                pages[i] = 1     # fresh pages: page faults of ours, and LRU insertions once a batch drains
            pages.close()
            os.getppid()         # one system call of ours
            while self._read_lines(0.05):
                seen.update(l for l in self.lines if l.startswith("armed"))
        # vmemmap's base comes from any LRU insertion; our faults make some within a batch or two
        waited = time.monotonic()
        while not any(l.startswith("vmemmap") for l in self.lines) and time.monotonic() - waited < 3:
            pages = mmap.mmap(-1, 64 * 4096)
            for i in range(0, 64 * 4096, 4096):
                pages[i] = 1
            pages.close()
            self._read_lines(0.05)
        self.lines = [l for l in self.lines if not l.startswith("armed")]

    def result(self, timeout: float = 120.0) -> BpfWalk:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BpfError("bpftrace saw no fault on the page within the time allowed") from None
        self.lines += [l.decode(errors="replace").strip() for l in (self._partial + out).splitlines()]
        err = err.decode(errors="replace")
        reads, base, vmemmap = parse_walk_lines(self.lines)
        if base is None or "before" not in reads:
            raise BpfError("bpftrace saw no fault on the page: " + (_last_error(err) or "no output"))
        if base & ((1 << 30) - 1):
            raise BpfError(f"derived direct-map base 0x{base:x} is not 1 GiB aligned: the PGD allocation "
                           "seen was not this mm's PGD")
        walk = BpfWalk(base, self.pgd_physical, reads, self.script, err)
        if vmemmap:
            walk.vmemmap_base, walk.vmemmap_folio, walk.vmemmap_pfn, walk.struct_page_size = vmemmap
        return walk

    def stop(self) -> None:
        stop_child(self.proc, 5)


def parse_walk_lines(lines: list[str]) -> tuple[dict[str, WalkRead], int | None, list[int]]:
    """What the walk blocks printed: the reads by moment ("before", "after"), the direct-map base the script
    printed (None if it printed none), and the vmemmap line's (base, folio, pfn, sizeof(struct page))."""
    reads: dict[str, WalkRead] = {}
    base = None
    vmemmap: list[int] = []
    for line in lines:
        parts = line.split()
        if len(parts) == 5 and parts[0] == "vmemmap":
            vmemmap = [int(x, 0) for x in parts[1:]]
        elif len(parts) == 4 and parts[1] == "obj" and parts[0] in ("before", "after"):
            reads.setdefault(parts[0], WalkRead(parts[0])).objects[parts[2]] = int(parts[3], 0)
        elif len(parts) == 7 and parts[1] == "maple":
            reads.setdefault(parts[0], WalkRead(parts[0])).maple_path.append(
                MapleStep(int(parts[3], 0), int(parts[4]), int(parts[5]), int(parts[6], 0)))
        elif len(parts) == 4 and parts[1] == "pivot":
            reads.setdefault(parts[0], WalkRead(parts[0])).maple_leaf_pivots.append(int(parts[3], 0))
        elif len(parts) == 3 and parts[1] == "base":
            base = int(parts[2], 16)
        elif len(parts) == 3 and parts[1] == "pgdv":
            reads.setdefault(parts[0], WalkRead(parts[0])).pgd_virtual = int(parts[2], 16)
        else:
            m = _LINE.match(line)
            if m:
                r = reads.setdefault(m.group(1), WalkRead(m.group(1)))
                r.entries[m.group(2)] = int(m.group(3), 16)
                if m.group(4):
                    r.table_physical[m.group(2)] = int(m.group(4), 16)
    return reads, base, vmemmap


def read_available(proc: subprocess.Popen, out: bytearray, timeout: float) -> bool:
    """Add what bpftrace has printed, waiting at most `timeout` s (raw reads: a buffered reader would hide
    lines from select); True when anything was read."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return False
    chunk = os.read(proc.stdout.fileno(), 65536)
    out += chunk
    return bool(chunk)


# A fault with no VMA this little below mm->start_stack is taken as stack growth (expand_stack), elsewhere as SIGSEGV.
STACK_REACH = 8 << 20


def below_stack(address: str) -> str:
    """The bpftrace condition: `address` lies in the STACK_REACH below the task's start_stack."""
    return f"({address} < curtask->mm->start_stack && {address} + {STACK_REACH} > curtask->mm->start_stack)"


def _last_error(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if "RLIMIT_MEMLOCK" not in l and l.strip()]
    return lines[-1] if lines else ""


def entries_at_syscall(pid: int, pages: list[int], direct_map_base: int, levels: int, syscall_nr: int,
                       poke: Callable[[], None], timeout: float = 120.0,
                       walk: Callable[[str, int], str] | None = None) -> dict[int, dict[str, int]]:
    """The raw entries of each page of `pid`, read when it next enters system call `syscall_nr`.

    direct_map_base: the kernel's map of physical memory (x86's page_offset_base, derived by a bpf-tier
    journey; arm64's linear-map offset), fixed for the boot. poke: makes the target enter that system call;
    it is called once bpftrace is attached. walk(tag, page): the bpftrace statements reading one page's
    entries, printing "TAG LEVEL entry table" lines (default: x86's walk over `levels` levels, which stops
    below a non-present or huge entry, as the journey's does). Raises BpfError.
    """
    exe = bpftrace_executable()
    if walk is None:
        def walk(tag: str, page: int) -> str:
            return _walk_block(tag, page, levels).replace('printf("' + tag + ' pgdv %lx\\n", $t);', "")
    blocks = []
    for page in pages:
        blocks.append(f"$base = {direct_map_base:#x};")
        blocks.append(walk(f"{page:x}", page))
    script = (f"tracepoint:raw_syscalls:sys_enter /pid == {pid} && args->id == {syscall_nr}/ {{\n    "
              + "\n    ".join(blocks) + "\n    exit();\n}\n"
              f'tracepoint:raw_syscalls:sys_enter /pid == {os.getpid()} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}\n')
    proc = start_child([exe, "-B", "line", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = bytearray()
        arm_with_own_faults(proc, out, bound=timeout)   # the armed probe fires on our own mmap (a system call)
        poke()
        rest, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BpfError(f"the target did not enter system call {syscall_nr} within {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries: dict[int, dict[str, int]] = {}
    for line in (bytes(out) + rest).decode(errors="replace").splitlines():
        m = _LINE_ANY.match(line.strip())
        if m:
            entries.setdefault(int(m.group(1), 16), {})[m.group(2)] = int(m.group(3), 16)
    return entries


def arm_with_own_faults(proc: subprocess.Popen, out: bytearray, words: tuple[bytes, ...] = (b"armed",),
                        bound: float = 600.0, progress: Callable[[str], None] | None = None,
                        each_round: Callable[[], None] | None = None, meaning: dict[bytes, str] | None = None) -> None:
    """Fault a fresh page of ours (its mmap is a system call too), and run `each_round`, until bpftrace has
    printed every one of `words` (its probes on our own faults and calls fired): then its probes on the
    target's are attached too. Output read on the way is kept in `out`.

    meaning: what a word's absence means, for the error at the bound (default: the probes did not attach).
    A progress line every 5 s while it waits: compiling and attaching take tens of seconds under TCG."""
    import mmap
    started = last_said = time.monotonic()
    while not all(word in out for word in words):
        if proc.poll() is not None:
            raise BpfError("bpftrace stopped: " + _last_error(proc.stderr.read().decode(errors="replace")))
        now = time.monotonic()
        if now - started > bound:
            missing = dict.fromkeys((meaning or {}).get(w, "attach its probes") for w in words if w not in out)
            raise BpfError(f"bpftrace did not {' or '.join(missing)} within {bound:.0f} s")
        if progress and now - last_said > 5:
            progress(f"waiting for bpftrace to attach its probes ({now - started:.0f} s so far)")
            last_said = now
        page = mmap.mmap(-1, mmap.PAGESIZE)
        page[0] = 1
        page.close()
        if each_round is not None:
            each_round()
        read_available(proc, out, 0.05)
