"""/proc/kallsyms: kernel addresses to function+offset."""

from __future__ import annotations

import bisect
from pathlib import Path


class KernelSymbols:
    def __init__(self, entries: list[tuple[int, str]]):
        entries = sorted(e for e in entries if e[0])
        self.addresses = [a for a, _ in entries]
        self.names = [n for _, n in entries]

    @classmethod
    def parse(cls, text: str) -> "KernelSymbols":
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                entries.append((int(parts[0], 16), parts[2]))
        return cls(entries)

    @classmethod
    def load(cls, path: Path = Path("/proc/kallsyms")) -> "KernelSymbols":
        try:
            return cls.parse(path.read_text())
        except OSError:
            return cls([])

    @classmethod
    def read_text_base(cls, path: Path = Path("/proc/kallsyms")) -> int | None:
        """_text (or _stext) of this boot without parsing all 200,000 symbols: they stand near the top of
        the file, so a line scan stops there (a full parse takes 0.2 s, which trace would pay up front).
        Falls back to the full parse where they are not found, or the addresses are hidden (zeros)."""
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[2] in ("_text", "_stext") and parts[1] in "tT":
                        address = int(parts[0], 16)
                        return address or None
        except (OSError, ValueError):
            return None
        return cls.load(path).text_base()

    @property
    def usable(self) -> bool:
        """kallsyms shows zeros to readers without privilege."""
        return bool(self.addresses)

    def text_base(self) -> int | None:
        """Where the kernel's text starts this boot (_text): tells one boot's addresses from another's."""
        for addr, name in zip(self.addresses, self.names):
            if name in ("_text", "_stext"):
                return addr
        return self.addresses[0] if self.addresses else None

    def lookup(self, address: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addresses, address) - 1
        if i < 0:
            return None
        return self.names[i], address - self.addresses[i]

    def describe(self, address: int) -> str:
        found = self.lookup(address)
        return f"{found[0]}+0x{found[1]:x}" if found else f"0x{address:x}"


class TextSymbols:
    """/proc/kallsyms' text symbols (t, T, w, W), in address order, parsed with numpy in one pass (a line's
    address is its first 16 hex digits, its type the 18th byte): ~20 ms for its ~120,000 lines where a Python
    loop over them took ~80-130 ms here (KernelSymbols.parse, which keeps every name, 0.2-0.5 s). Reading the file
    is the kernel formatting every line (~45-80 ms here), so trace -g starts it while the program runs
    (prefetch_text_symbols). Shared by trace -g counted in the kernel and the summaries
    of recordings, which name a few kernel addresses each.

    Without root kallsyms shows zeros: symbols_at_or_below() then names nothing (an empty table)."""

    def __init__(self, path: str | Path = "/proc/kallsyms"):
        import numpy as np
        try:
            with open(path, "rb") as f:
                self.data = f.read()
        except OSError:
            self.data = b""
        buf = np.frombuffer(self.data, np.uint8)
        ends = np.flatnonzero(buf == 10)
        starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.zeros(0, np.int64)
        starts = starts[ends - starts > 18]
        kinds = buf[starts + 17]
        starts = starts[np.isin(kinds, np.frombuffer(b"tTwW", np.uint8))]
        hex_value = np.zeros(256, np.uint8)
        hex_value[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
        nibbles = hex_value[buf[starts[:, None] + np.arange(16)]]
        # two hex digits a byte, the 8 bytes a big-endian address
        addresses = np.ascontiguousarray(nibbles[:, 0::2] << 4 | nibbles[:, 1::2]).view(">u8").ravel().astype(np.uint64)
        order = np.argsort(addresses, kind="stable")
        self.addresses, self.starts = addresses[order], starts[order]

    def _name(self, j: int) -> str:
        start = int(self.starts[j]) + 19
        end = self.data.find(b"\n", start)
        return self.data[start:end].split(b"\t", 1)[0].decode(errors="replace")

    def symbols_at_or_below(self, addresses: set[int]) -> dict[int, str]:
        """For each address, the text symbol at or below it: {symbol's address: its name}. Of names sharing an
        address (aliases: memmove and __memmove), the one kernel.kallsyms.KernelSymbols' lookup gives (the last
        in sorted order), so that a flame graph counted in the kernel names frames as one from a recording."""
        import numpy as np
        wanted = np.fromiter(addresses, np.uint64, len(addresses))
        found = np.searchsorted(self.addresses, wanted, side="right") - 1
        out = {}
        for j in {int(j) for j in found if j >= 0}:
            first = int(np.searchsorted(self.addresses, self.addresses[j], side="left"))
            out[int(self.addresses[j])] = max(self._name(k) for k in range(first, j + 1))
        return out

    # KernelSymbols' lookups, answered from this table: what a journey names its few kernel addresses with, without
    # KernelSymbols.load's parse of every name (~150-200 ms here, in a thread that held the GIL against the journey)

    @property
    def usable(self) -> bool:
        """kallsyms shows zeros to readers without privilege."""
        return bool(len(self.addresses)) and bool(self.addresses[-1])

    def lookup(self, address: int) -> tuple[str, int] | None:
        """The text symbol at or below `address` and the offset into it, as KernelSymbols.lookup gives them."""
        found = self.symbols_at_or_below({address}) if self.usable else {}
        if not found:
            return None
        (start, name), = found.items()
        return name, address - start

    def describe(self, address: int) -> str:
        found = self.lookup(address)
        return f"{found[0]}+0x{found[1]:x}" if found else f"0x{address:x}"

    def _text_symbol(self) -> tuple[int, str] | None:
        """_text's line (else _stext's): its address and name, or None where neither is in the file."""
        for name in (b"_text", b"_stext"):
            at = self.data.find(b" T " + name + b"\n")
            if at >= 16:
                return int(self.data[at - 16:at], 16), name.decode()
        return None

    def text_base(self) -> int | None:
        """Where the kernel's text starts this boot (_text, else _stext), as KernelSymbols.text_base gives it."""
        found = self._text_symbol()
        if found is not None:
            return found[0] or None
        return int(self.addresses[0]) if len(self.addresses) else None

    def kernel_symbols(self, addresses: set[int]) -> KernelSymbols:
        """A KernelSymbols that names `addresses` as one over the whole file does, with _text (its text_base())."""
        kept = self.symbols_at_or_below(addresses)
        found = self._text_symbol()
        if found is not None:
            kept[found[0]] = found[1]
        return KernelSymbols([(a, n) for a, n in kept.items() if a])


_prefetched: dict[str, tuple] = {}     # path → (the thread reading it, {"table": its TextSymbols once read})


def prefetch_text_symbols(path: str = "/proc/kallsyms") -> None:
    """Start reading the kernel's text symbols (TextSymbols) in a thread, for text_symbols() to take later: the read
    is mostly the kernel formatting ~120,000 lines, done meanwhile on another CPU while a traced program runs.

    :returns: None at once; a read that fails leaves an empty table (not usable: nothing is named), as reading
        then would."""
    import threading
    if path in _prefetched:
        return
    holder: dict[str, TextSymbols] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("table", TextSymbols(path)), daemon=True,
                              name="pagefault-kallsyms")
    thread.start()
    _prefetched[path] = (thread, holder)


def text_symbols(path: str = "/proc/kallsyms") -> TextSymbols:
    """The kernel's text symbols: the table prefetch_text_symbols(path) started (waited for), else read now.

    :returns: the TextSymbols (empty where kallsyms cannot be read); raises nothing."""
    started = _prefetched.pop(path, None)
    if started:
        thread, holder = started
        thread.join()
        if "table" in holder:
            return holder["table"]
    return TextSymbols(path)
