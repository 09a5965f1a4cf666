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
