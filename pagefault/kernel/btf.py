"""A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux).

No maintained Python library parses BTF (libbpf is C, drgn needs /proc/kcore
or a vmlinux for a live kernel), so this reads the documented format
(Documentation/bpf/btf.rst) by hand: only enums and struct member offsets,
the two things pagefault asks the running kernel for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F

# kind -> bytes that follow the 12-byte common header, per vlen entry or fixed
_KIND_INT, _KIND_ARRAY, _KIND_STRUCT, _KIND_UNION, _KIND_ENUM = 1, 3, 4, 5, 6
_KIND_FUNC_PROTO, _KIND_VAR, _KIND_DATASEC, _KIND_DECL_TAG, _KIND_ENUM64 = 13, 14, 15, 17, 19
_FIXED_EXTRA = {_KIND_INT: 4, _KIND_ARRAY: 12, _KIND_VAR: 4, _KIND_DECL_TAG: 4}
_PER_MEMBER = {_KIND_STRUCT: 12, _KIND_UNION: 12, _KIND_ENUM: 8, _KIND_FUNC_PROTO: 8,
               _KIND_DATASEC: 12, _KIND_ENUM64: 12}


class BTFError(Exception):
    """The BTF blob is missing, unreadable or malformed."""


@dataclass
class BTF:
    """Enums (by enum name and by enumerator name) and struct layouts."""

    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    enumerators: dict[str, int] = field(default_factory=dict)
    struct_members: dict[str, dict[str, int]] = field(default_factory=dict)

    def enum(self, name: str) -> dict[str, int] | None:
        return self.enums.get(name)

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of a member, or None (bitfields report their bit offset // 8)."""
        return self.struct_members.get(struct_name, {}).get(member)


def parse_btf(blob: bytes, want_structs: frozenset[str] = frozenset()) -> BTF:
    if len(blob) < 24:
        raise BTFError("BTF blob is shorter than its header")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
    if magic != BTF_MAGIC:
        raise BTFError(f"bad BTF magic 0x{magic:x} (expected 0x{BTF_MAGIC:x})")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    types_start = hdr_len + type_off
    strings_start = hdr_len + str_off
    if types_start + type_len > len(blob) or strings_start + str_len > len(blob):
        raise BTFError("BTF sections run past the end of the blob")
    strings = blob[strings_start:strings_start + str_len]

    def name_at(off: int) -> str:
        end = strings.find(b"\0", off)
        return strings[off:end].decode("ascii", "replace")

    result = BTF()
    pos, end = types_start, types_start + type_len
    unpack_hdr = struct.Struct("<III").unpack_from
    while pos < end:
        name_off, info, _size = unpack_hdr(blob, pos)
        pos += 12
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if kind in (_KIND_ENUM, _KIND_ENUM64):
            values: dict[str, int] = {}
            signed = bool(info >> 31)
            for i in range(vlen):
                if kind == _KIND_ENUM:
                    m_name, raw = struct.unpack_from("<Ii" if signed else "<II", blob, pos + 8 * i)
                else:
                    m_name, lo, hi = struct.unpack_from("<III", blob, pos + 12 * i)
                    raw = lo | (hi << 32)
                values[name_at(m_name)] = raw
            result.enumerators.update(values)
            result.enums[name_at(name_off) or f"(anonymous #{len(result.enums)})"] = values
        elif kind == _KIND_STRUCT and want_structs and name_at(name_off) in want_structs:
            kind_flag = bool(info >> 31)
            members: dict[str, int] = {}
            for i in range(vlen):
                m_name, _type, m_off = struct.unpack_from("<III", blob, pos + 12 * i)
                bit_off = m_off & 0xFFFFFF if kind_flag else m_off
                members[name_at(m_name)] = bit_off // 8
            result.struct_members[name_at(name_off)] = members
        pos += _FIXED_EXTRA.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
    return result


def btf_sections(path: Path = VMLINUX_BTF) -> tuple[bytes, bytes]:
    """(the type section, the string section) of the BTF file at `path`.

    :raises BTFError: the file cannot be read or is not BTF."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise BTFError(f"cannot read {path}: {exc.strerror}") from exc
    if len(blob) < 24 or struct.unpack_from("<H", blob)[0] != BTF_MAGIC:
        raise BTFError(f"{path} is not BTF")
    hdr_len = struct.unpack_from("<I", blob, 4)[0]
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    return (blob[hdr_len + type_off:hdr_len + type_off + type_len],
            blob[hdr_len + str_off:hdr_len + str_off + str_len])


def find_enums(names: tuple[str, ...], path: Path = VMLINUX_BTF) -> dict[str, dict[str, int]]:
    """The named enums of the BTF at `path`, found without walking every type (parse_btf's walk of the kernel's
    ~150,000 types costs 0.1-0.2 s in Python, once per command that names a value): each name's offset in the
    string section, then the enum record that starts with it, found by a search of the type section and taken
    only when its kind, member count and every member's name agree; of two enums of one name, the later (as
    parse_btf keeps it). A name missing from the result was not
    found this way (none such, or only a forward declaration): the caller walks the types for it.

    :raises BTFError: the file cannot be read or is not BTF."""
    types, strings = btf_sections(path)

    def a_name(off: int) -> bool:
        return 0 < off < len(strings) and strings[off - 1] == 0 and strings[off] != 0

    out: dict[str, dict[str, int]] = {}
    for name in names:
        name_off = strings.find(b"\0" + name.encode() + b"\0") + 1
        if name_off <= 0:
            continue
        needle = struct.pack("<I", name_off)
        at = types.rfind(needle)   # from the end: where two enums share a name, parse_btf keeps the later
        while at >= 0 and name not in out:
            _name, info, _size = struct.unpack_from("<III", types, at) if at + 12 <= len(types) else (0, 0, 0)
            kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
            width = 8 if kind == _KIND_ENUM else 12 if kind == _KIND_ENUM64 else 0
            if at % 4 == 0 and width and vlen and at + 12 + width * vlen <= len(types):
                values: dict[str, int] = {}
                for i in range(vlen):
                    if kind == _KIND_ENUM:
                        m_name, raw = struct.unpack_from("<Ii" if signed else "<II", types, at + 12 + 8 * i)
                    else:
                        m_name, lo, hi = struct.unpack_from("<III", types, at + 12 + 12 * i)
                        raw = lo | (hi << 32)
                    if not a_name(m_name):
                        break
                    values[strings[m_name:strings.index(b"\0", m_name)].decode("ascii", "replace")] = raw
                else:
                    out[name] = values
            at = types.rfind(needle, 0, at + 3)   # the next hit before this one (overlaps included)
    return out


_cache: dict[Path, BTF] = {}


def load_vmlinux_btf(path: Path = VMLINUX_BTF) -> BTF:
    """Parse the running kernel's BTF once per process."""
    if path not in _cache:
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise BTFError(f"cannot read {path}: {exc.strerror}") from exc
        _cache[path] = parse_btf(blob, frozenset({"mm_struct", "vm_area_struct", "task_struct"}))
    return _cache[path]
