"""`pagefault report FILE --events`: every sample of a recording, one line each, as perf script prints it.

    COMM  TID [CPU] SECONDS.MICROS: EVENT: IP SYMBOL field=0x… …

(perf script -F comm,tid,cpu,time,event,ip,sym,trace shows the same things.) Half a million lines are
too many to format one by one in Python (about 3 µs a line), so the lines are built as byte matrices with
numpy: every column of one event type is rendered at a fixed width (decimal and hex digits by arithmetic
on whole arrays, names and symbols by indexing a small table of padded strings), the rows of all types are
laid into one matrix in time order, and the bytes of each row up to its type's width are the output. Hex
fields are zero-padded to the widest value of their column; symbols are padded to the longest one shown.

No library formats numpy columns into text rows (numpy.char.mod and pandas' to_string go value by value),
so this is written here.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .safe_text import escape_controls

ROWS_PER_BLOCK = 1 << 16
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SPACE, _ZERO = ord(" "), ord("0")


def symbolizer(addresses: list[int], names: list[str]) -> Callable[[np.ndarray], dict[int, str]]:
    """A function mapping an array of ips to {ip: "symbol+0xoff"} for its distinct values (kallsyms order)."""
    starts = np.array(addresses, dtype=np.uint64)

    def lookup(ips: np.ndarray) -> dict[int, str]:
        unique = np.unique(ips)
        if not len(starts):
            return {int(ip): "[unknown]" for ip in unique.tolist()}
        at = np.searchsorted(starts, unique, side="right") - 1
        out = {}
        for ip, i in zip(unique.tolist(), at.tolist()):
            out[ip] = f"{names[i]}+0x{ip - int(starts[i]):x}" if i >= 0 else "[unknown]"
        return out
    return lookup


def _constant(text: str, rows: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode(), dtype=np.uint8), (rows, len(text.encode())))


def _decimal_digits(values: np.ndarray, width: int) -> np.ndarray:
    """Each value's last `width` decimal digits, most significant first, as an (n, width) array (hex digits
    need no division: see _hex)."""
    v = values.astype(np.uint64)
    out = np.empty((len(v), width), dtype=np.uint64)
    for k in range(width):
        out[:, width - 1 - k] = v % np.uint64(10)
        v = v // np.uint64(10)
    return out


def _hex(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded lowercase hex: nibbles by shift and mask (no division), looked up in a 16-byte table."""
    v = values.astype(np.uint64)
    shifts = np.arange(4 * (width - 1), -1, -4, dtype=np.uint64)
    return _HEX[((v[:, None] >> shifts[None, :]) & np.uint64(0xF)).astype(np.intp)]


def _decimal(values: np.ndarray, width: int, pad: int = _SPACE) -> np.ndarray:
    """Right-aligned decimal, padded on the left with spaces (or zeros)."""
    digits = _decimal_digits(values, width)
    text = (digits + np.uint64(_ZERO)).astype(np.uint8)
    if pad == _SPACE and width > 1:
        # a leading zero is a space up to the first non-zero digit (the last digit always shows)
        leading = np.cumsum(digits[:, :-1] != 0, axis=1) == 0
        text[:, :-1][leading] = _SPACE
    return text


def _table(strings: list[str], index: np.ndarray, width: int, right: bool) -> np.ndarray:
    """Strings by index, each padded with spaces to `width` bytes (longer ones cut), as an (n, width) array."""
    encoded = [s.encode(errors="replace")[:width] for s in strings]
    padded = b"".join(e.rjust(width) if right else e.ljust(width) for e in encoded)
    table = np.frombuffer(padded, dtype=np.uint8).reshape(len(strings), width) if strings else \
        np.zeros((0, width), dtype=np.uint8)
    return table[index]


def _width(values: np.ndarray, base: int) -> int:
    top = int(values.max()) if len(values) else 0
    return max(1, len(f"{top:x}" if base == 16 else str(top)))


def _type_matrix(name: str, rows: np.ndarray, columns: dict[str, np.ndarray], fields: dict[str, np.ndarray],
                 comm_index: np.ndarray, comm_names: list[str], ips: np.ndarray, symbol_of: dict[int, str],
                 seconds_width: int) -> np.ndarray:
    """The lines of one event type's rows, without their newline, as an (len(rows), width) byte matrix."""
    n = len(rows)
    micros = columns["time"][rows].astype(np.uint64) // np.uint64(1000)
    row_ips = ips[rows].astype(np.uint64)
    unique_ips, ip_index = np.unique(row_ips, return_inverse=True)
    symbols = [escape_controls(symbol_of.get(int(ip), "[unknown]")) for ip in unique_ips.tolist()]
    symbol_width = max((len(s.encode()) for s in symbols), default=1)
    parts = [_table(comm_names, comm_index[rows], 16, right=True), _constant(" ", n),
             _decimal(columns["tid"][rows], 7), _constant(" [", n),
             _decimal(columns["cpu"][rows], 3, pad=_ZERO), _constant("] ", n),
             _decimal(micros // np.uint64(1_000_000), seconds_width), _constant(".", n),
             _decimal(micros % np.uint64(1_000_000), 6, pad=_ZERO), _constant(f": {escape_controls(name)}: ", n),
             _hex(row_ips, 16), _constant(" ", n), _table(symbols, ip_index, symbol_width, right=False)]
    for key, values in fields.items():
        v = np.asarray(values)
        if len(v) != n:      # a damaged recording: this field's column does not cover the rows
            continue
        if v.dtype.kind == "i" and (v < 0).any():
            width = _width(np.abs(v), 10)
            parts += [_constant(f" {escape_controls(key)}=", n), np.where((v < 0)[:, None], ord("-"), _SPACE).astype(np.uint8),
                      _decimal(np.abs(v), width)]
        else:
            width = _width(v.astype(np.uint64), 16)
            parts += [_constant(f" {escape_controls(key)}=0x", n), _hex(v, width)]
    return np.ascontiguousarray(np.hstack(parts))


def event_lines(columns: dict[str, np.ndarray], names: list[str], fields: dict[str, dict[str, np.ndarray]],
                comms: dict[int, str], ips: np.ndarray, symbols: dict[int, str]) -> Iterator[bytes]:
    """The lines in time order, in blocks of ROWS_PER_BLOCK lines (each block ends with a newline)."""
    n = len(columns["time"])
    if not n:
        return
    event = np.asarray(columns["event"])
    tids = np.asarray(columns["tid"])
    unique_tids, comm_index = np.unique(tids, return_inverse=True)
    # names from the recording (the comm the program gave itself, the symbols) are escaped here, once per
    # distinct name, so no line carries a control character a terminal would act on
    comm_names = [escape_controls(comms.get(int(t), "-")) for t in unique_tids.tolist()]
    seconds_width = _width(columns["time"].astype(np.uint64) // np.uint64(1_000_000_000), 10)
    matrices, where = {}, {}
    for k, name in enumerate(names):
        rows = np.nonzero(event == k)[0]
        if len(rows):
            matrices[k] = _type_matrix(name, rows, columns, fields.get(name, {}), comm_index, comm_names, ips,
                                       symbols, seconds_width)
            where[k] = np.searchsorted(rows, np.arange(n))   # a row's position among its type's rows
    widest = max(m.shape[1] for m in matrices.values()) + 1
    for start in range(0, n, ROWS_PER_BLOCK):
        stop = min(n, start + ROWS_PER_BLOCK)
        block = np.zeros((stop - start, widest), dtype=np.uint8)
        lengths = np.zeros(stop - start, dtype=np.int64)
        for k, matrix in matrices.items():
            mine = np.nonzero(event[start:stop] == k)[0]
            if not len(mine):
                continue
            width = matrix.shape[1]
            block[mine, :width] = matrix[where[k][start + mine]]
            block[mine, width] = ord("\n")
            lengths[mine] = width + 1
        keep = np.arange(widest)[None, :] < lengths[:, None]
        yield block[keep].tobytes()
