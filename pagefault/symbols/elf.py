"""User-space symbols: a RIP → its mapping → file offset → ELF symbol (+ disassembly with capstone)."""

from __future__ import annotations

import bisect
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

    from ..evidence import Mapping, MapsLine, RipFacts


SYM_DTYPE = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                      ("value", "<u8"), ("size", "<u8")])  # Elf64_Sym


@dataclass(frozen=True)
class ResolvedIP:
    ip: int
    path: str
    map_start: int
    file_offset: int
    elf_vaddr: int | None
    symbol: str | None
    symbol_offset: int | None
    derivations: tuple[str, ...]

    def describe(self) -> str:
        name = self.path.rsplit("/", 1)[-1] or self.path or "?"
        if self.symbol:
            return f"{name}:{self.symbol}+0x{self.symbol_offset:x}"
        return f"{name}+0x{self.file_offset:x}"


class NotARegularFile(OSError):
    """The path names no regular file (a device, a FIFO, a symlink at its end, a directory), or not the file
    the capture saw mapped: it is not opened."""


def open_mapped_file(path: str, inode: int | None = None):
    """A file named by a mapping, opened for reading only if it is a regular file: as root, a path from a
    recording or an evidence file must never open a device (whose open may act), block on a FIFO, or follow a
    symlink at its end. `inode`, when given, is the inode the capture saw mapped there: another file now at
    that path (or 0: the capture did not say) is refused.

    :returns: a binary file object.
    :raises NotARegularFile: what the docstring says is refused; OSError: it cannot be opened.
    """
    if inode == 0:
        raise NotARegularFile(f"{path}: the capture did not record which file was mapped there (its inode)")
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(f"{path} is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
            raise NotARegularFile(f"{path} changed while it was opened")
        if inode is not None and opened.st_ino != inode:
            raise NotARegularFile(f"{path} is not the file the capture saw mapped (inode {opened.st_ino}, not {inode})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class ElfImage:
    def __init__(self, path: str, inode: int | None = None):
        self.path = path
        self.inode = inode
        self.segments: list[tuple[int, int, int]] = []   # (p_offset, p_vaddr, p_filesz)
        self.addrs: list[int] = []
        self.sym_sizes: list[int] = []
        self.sym_names: list[int] = []                   # offsets into the string table
        self.sym_kinds: list[int] = []                   # STT_FUNC (2) or STT_GNU_IFUNC (10)
        self.symbols_from = ""                           # the section (and file) the symbols were read from
        self._all_functions = np.zeros(0, dtype=SYM_DTYPE)
        self._by_name: dict[str, tuple[int, int, int]] | None = None
        self.strtab = b""
        self.text: tuple[int, int, bytes] | None = None  # (vaddr, offset, bytes) of .text
        self.ok = False
        from elftools.common.exceptions import ELFError  # imported here: most reports never open an ELF file
        from elftools.elf.elffile import ELFFile
        try:
            with open_mapped_file(path, inode) as f:
                elf = ELFFile(f)
                self.machine = elf["e_machine"]
                for seg in elf.iter_segments():
                    if seg["p_type"] == "PT_LOAD":
                        self.segments.append((seg["p_offset"], seg["p_vaddr"], seg["p_filesz"]))
                self._load_symbols(f, elf)
                self.ok = True
        except (OSError, ELFError, ValueError):
            self.ok = False

    def _load_symbols(self, f, elf: ELFFile) -> None:
        """Function symbols of .symtab, else of the separate debug file's .symtab (a distribution's -dbg
        package, found by build ID: it names the local functions a stripped library's .dynsym lacks, such as
        glibc's __memset_avx2_unaligned_erms), else of .dynsym; read as one numpy array, not one by one."""
        if self._read_table(f, elf, ".symtab"):
            self.symbols_from = ".symtab"
            return
        from .debug_files import debug_file_for
        debug = debug_file_for(elf)
        if debug is not None:
            from elftools.common.exceptions import ELFError
            from elftools.elf.elffile import ELFFile
            try:
                with open_mapped_file(debug) as g:
                    if self._read_table(g, ELFFile(g), ".symtab"):
                        self.symbols_from = f".symtab of {debug}"
                        return
            except (OSError, ELFError, ValueError):
                pass
        if self._read_table(f, elf, ".dynsym"):
            self.symbols_from = ".dynsym"

    def _read_table(self, f, elf: ELFFile, name: str) -> bool:
        sec = elf.get_section_by_name(name)
        if sec is None or sec["sh_entsize"] != SYM_DTYPE.itemsize or sec["sh_type"] == "SHT_NOBITS":
            return False
        f.seek(sec["sh_offset"])
        table = np.frombuffer(f.read(sec["sh_size"]), dtype=SYM_DTYPE)
        strsec = elf.get_section(sec["sh_link"])
        f.seek(strsec["sh_offset"])
        self.strtab = f.read(strsec["sh_size"])
        kind = table["info"] & 0xF
        keep = ((kind == 2) | (kind == 10)) & (table["value"] != 0)  # STT_FUNC, STT_GNU_IFUNC
        table = table[keep]
        self._all_functions = table      # every name, aliases at one address too (functions_by_name)
        # one name per address: a global one before a local alias (glibc's __GI___ctype_init is __ctype_init)
        table = table[np.lexsort(((table["info"] >> 4) != 1, table["value"]))]
        _, first = np.unique(table["value"], return_index=True)
        table = table[first]
        self.addrs = table["value"].tolist()
        self.sym_sizes = table["size"].tolist()
        self.sym_names = table["name"].tolist()
        self.sym_kinds = (table["info"] & 0xF).tolist()
        return True

    def functions_by_name(self) -> dict[str, tuple[int, int, int]]:
        """name → (ELF address, size, STT kind) of every function symbol, aliases included (the address-sorted
        table keeps one name per address)."""
        if self._by_name is None:
            t = self._all_functions
            self._by_name = {}
            for off, value, size, info in zip(t["name"].tolist(), t["value"].tolist(), t["size"].tolist(),
                                              (t["info"] & 0xF).tolist()):
                name = self.strtab[off:self.strtab.index(b"\0", off)].decode("utf-8", "replace")
                self._by_name.setdefault(name.split("@", 1)[0], (value, size, info))
        return self._by_name

    def name_at(self, i: int) -> str:
        """The function's name, without a symbol version (__libc_start_main@@GLIBC_2.34 is __libc_start_main)."""
        off = self.sym_names[i]
        return self.strtab[off:self.strtab.index(b"\0", off)].decode("utf-8", "replace").split("@", 1)[0]

    def offset_to_vaddr(self, offset: int) -> int | None:
        for p_off, p_vaddr, p_filesz in self.segments:
            if p_off <= offset < p_off + p_filesz:
                return offset - p_off + p_vaddr
        return None

    def symbolize(self, vaddr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i < 0:
            return None
        start, size = self.addrs[i], self.sym_sizes[i]
        if size and vaddr >= start + size:
            return None
        return self.name_at(i), vaddr - start

    def read_at_vaddr(self, vaddr: int, length: int) -> bytes:
        for p_off, p_vaddr, p_filesz in self.segments:
            if p_vaddr <= vaddr < p_vaddr + p_filesz:
                with open_mapped_file(self.path, self.inode) as f:
                    f.seek(vaddr - p_vaddr + p_off)
                    return f.read(min(length, p_vaddr + p_filesz - vaddr))
        return b""


@lru_cache(maxsize=64)
def load_image(path: str, inode: int | None = None) -> ElfImage:
    return ElfImage(path, inode)


def resolve_ip(ip: int, map_start: int, map_pgoff: int, path: str, inode: int | None = None) -> ResolvedIP:
    """RIP − mapping start + mapping file offset = file offset; file offset → ELF vaddr → symbol.

    inode: the mapped file's inode as the capture saw it, for a path read from a recording (the file is read
    only if it is still that regular file; 0: unknown, not read); None for a live caller's own /proc read."""
    file_offset = ip - map_start + map_pgoff
    lines = [f"file offset = RIP 0x{ip:x} − mapping start 0x{map_start:x} + mapping offset 0x{map_pgoff:x} "
             f"= 0x{file_offset:x}"]
    vaddr = symbol = sym_off = None
    if path.startswith("/"):
        img = load_image(path, inode)
        if img.ok:
            vaddr = img.offset_to_vaddr(file_offset)
            if vaddr is not None:
                lines.append(f"ELF address = 0x{vaddr:x} (the PT_LOAD segment holding file offset 0x{file_offset:x})")
                found = img.symbolize(vaddr)
                if found:
                    symbol, sym_off = found
                    lines.append(f"0x{vaddr:x} is {symbol}+0x{sym_off:x} in {path}")
        else:
            lines.append(f"{path} could not be read as ELF")
    return ResolvedIP(ip, path, map_start, file_offset, vaddr, symbol, sym_off, tuple(lines))


def disassemble(path: str, vaddr: int, count: int = 1) -> list[tuple[int, str, str, bytes]]:
    """Instructions at an ELF address: (address, mnemonic, operands, bytes)."""
    import capstone
    img = load_image(path)
    code = img.read_at_vaddr(vaddr, 15 * count)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for insn in md.disasm(code, vaddr):
        out.append((insn.address, insn.mnemonic, insn.op_str, bytes(insn.bytes)))
        if len(out) >= count:
            break
    return out


def line_rows(path: str, only_file: str | None = None):
    """(start, end, source file, line) for each row of the DWARF line tables; nothing without debug info.
    `only_file`: a source file's base name: the units whose file table does not name it are skipped
    unparsed (a library's debug file has thousands)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open_mapped_file(path) as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return
            dwarf = elf.get_dwarf_info()
            for cu in dwarf.iter_CUs():
                program = dwarf.line_program_for_CU(cu)
                if program is None:
                    continue
                files = program["file_entry"]
                if only_file is not None and not any(_base_name(f.name) == only_file for f in files):
                    continue
                base = 0 if program.header["version"] >= 5 else 1
                prev = None
                for entry in program.get_entries():
                    state = entry.state
                    if state is None:
                        continue
                    if prev is not None and state.address > prev.address:
                        name = files[prev.file - base].name
                        yield prev.address, state.address, (name.decode() if isinstance(name, bytes) else str(name)), \
                            prev.line
                    prev = None if state.end_sequence else state
    except (OSError, ELFError, ValueError, IndexError, KeyError):
        return


def source_line(path: str, vaddr: int) -> tuple[str, int] | None:
    """(source file, line) of an ELF address from its DWARF line table, or None without debug info."""
    return next(((name, line) for lo, hi, name, line in line_rows(path) if lo <= vaddr < hi), None)


def rip_facts(ip: int, mapping: MapsLine) -> RipFacts | None:
    """What the ELF file behind ``mapping`` (an evidence.MapsLine) says about ``ip``: file offset, ELF
    address, symbol, the instruction's bytes and its source line, for the evidence file. None when the
    mapping is not a file mapping.

    Read at capture time, where the file is; a replay shows these facts without the file.
    """
    from ..evidence import RipFacts
    if not mapping.path.startswith("/"):
        return None
    r = resolve_ip(ip, mapping.start, mapping.offset, mapping.path, mapping.inode or None)
    facts = RipFacts(ip, mapping, r.file_offset, r.elf_vaddr, r.symbol, r.symbol_offset, list(r.derivations),
                     r.describe())
    if r.elf_vaddr is not None:
        insns = disassemble(mapping.path, r.elf_vaddr, 1)
        if insns:
            a, mnem, ops, raw = insns[0]
            facts.instruction = (a, mnem, ops, raw.hex(" "))
        else:
            facts.error = f"no instruction could be decoded at ELF address 0x{r.elf_vaddr:x}"
        facts.source_line = source_line(mapping.path, r.elf_vaddr)
    return facts


def min_exec_vaddr(path: str) -> int | None:
    """The lowest p_vaddr of the executable PT_LOAD segments: load_elf_binary() sets mm->start_code to it
    plus the load bias, so an ELF address is RIP − (mm->start_code − this)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open_mapped_file(path) as f:
            xs = [seg["p_vaddr"] for seg in ELFFile(f).iter_segments()
                  if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1]
    except (OSError, ELFError, ValueError):
        return None
    return min(xs) if xs else None


def _base_name(name: bytes | str) -> str:
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rsplit("/", 1)[-1]


def line_ranges(path: str, file: str, line: int) -> list[tuple[int, int]]:
    """[start, end) ELF address ranges the DWARF line table gives to `file:line` (file by its base name)."""
    want = file.rsplit("/", 1)[-1]
    return [(lo, hi) for lo, hi, name, n in line_rows(path, want) if n == line and name.rsplit("/", 1)[-1] == want]


def resolve_mapping(ip: int, m: Mapping) -> ResolvedIP:
    """resolve_ip for a mapping of a recording: through the RecordedFiles its reader attached to it
    (symbols/recorded.py: the file is opened only if it is provably the one the capture saw, else the
    recording's saved symbols), or straight from the file for a mapping a live capture read itself."""
    files = getattr(m, "recorded_files", None)
    if files is not None:
        return files.resolve(ip, m)
    return resolve_ip(ip, m.start, m.pgoff, m.path, m.inode)


from .recorded import RecordedFiles  # noqa: E402, F401  (re-exported for journey's readers of recordings)


def eh_frame_unwind(ip: int, sp: int, bp: int, stack: bytes, place, refusal, rules: dict | None = None):
    """symbols/cfi_unwind.unwind for a recording's stack copy: a file whose `refusal(path, inode)` is not ""
    has its .eh_frame left unread, and the walk ends there saying why. `rules`: the code addresses' rules kept
    from one walk to the next (one dict per recording: its places are the recording's)."""
    from .cfi_unwind import CfiTable, cfi_table, unwind

    def tables(path: str, inode: int | None) -> CfiTable:
        why = refusal(path, inode)
        if not why:
            return cfi_table(path, inode)
        return CfiTable.refused(f".eh_frame of {path} not read: {why}")
    return unwind(ip, sp, bp, stack, place, tables, rules, explain=False)
