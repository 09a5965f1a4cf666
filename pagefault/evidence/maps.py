"""A process's mappings as /proc/PID/maps or a PERF_RECORD_MMAP2 shows them: the evidence records that the
capture's counters need without the rest of records.py (and its decoders) imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Mapping:
    """One mapping of a process: from /proc/PID/maps or a PERF_RECORD_MMAP2."""

    start: int
    end: int
    pgoff: int
    path: str
    prot: int = 0
    source: str = ""
    shared: bool = False      # MAP_SHARED (maps perms "s", or the MMAP2 record's flags)
    inode: int = 0            # the mapped file's inode (0: anonymous, or not known)
    time: int = -1            # an MMAP2 record's time (perf's clock, its sample_id), -1: not known

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


@dataclass(frozen=True)
class MapsLine:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    def as_mapping(self) -> Mapping:
        return Mapping(self.start, self.end, self.offset, self.path, source="observed: /proc/PID/maps")


def parse_maps(text: str) -> list[MapsLine]:
    """The lines of a /proc/PID/maps text (a line that is not one is skipped).

    :returns: one MapsLine per well-formed line, in the text's order; never raises (a damaged line is left out)."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        try:
            lo, hi = parts[0].split("-")
            out.append(MapsLine(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[3], int(parts[4]),
                                parts[5].strip() if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out
