"""The BTF reader against hand-built blobs and against the running kernel."""

import struct
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from pagefault.decode import fallback_fault_flag_values
from pagefault.kernel.btf import BTFError, parse_btf
from pagefault.kernel.facts import fault_flag_values, gfp_bits, kernel_version

VMLINUX = Path("/sys/kernel/btf/vmlinux")


def make_btf(enum_name: str, members: dict[str, int]) -> bytes:
    strings = b"\0"
    offs = {}
    for name in [enum_name, *members]:
        offs[name] = len(strings)
        strings += name.encode() + b"\0"
    types = struct.pack("<III", offs[enum_name], (6 << 24) | len(members), 4)
    for name, value in members.items():
        types += struct.pack("<Ii", offs[name], value)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_parse_handmade_enum():
    btf = parse_btf(make_btf("fault_flag", {"FAULT_FLAG_WRITE": 1, "FAULT_FLAG_MKWRITE": 2}))
    assert btf.enum("fault_flag") == {"FAULT_FLAG_WRITE": 1, "FAULT_FLAG_MKWRITE": 2}


@given(st.binary(max_size=64))
def test_garbage_is_refused_cleanly(blob):
    try:
        parse_btf(blob)
    except (BTFError, struct.error):
        pass


def test_bad_magic():
    with pytest.raises(BTFError, match="magic"):
        parse_btf(b"\0" * 32)


@pytest.mark.skipif(not VMLINUX.exists(), reason="this kernel exposes no /sys/kernel/btf/vmlinux")
def test_running_kernel_fault_flags_match_the_fallback_table():
    live = fault_flag_values()
    assert live.source.startswith("observed: enum fault_flag")
    table, _ = fallback_fault_flag_values(kernel_version())
    assert live.values == table


@pytest.mark.skipif(not VMLINUX.exists(), reason="this kernel exposes no /sys/kernel/btf/vmlinux")
def test_running_kernel_gfp_bits_are_read():
    bits = gfp_bits()
    assert bits.source.startswith("observed")
    assert bits.values["__GFP_ZERO"] == 8 and bits.values["__GFP_MOVABLE"] == 3


def test_the_quick_text_base_is_the_full_parses(tmp_path):
    from pagefault.kernel.kallsyms import KernelSymbols
    f = tmp_path / "kallsyms"
    f.write_text("0000000000000000 A fixed_percpu_data\nffffffff81000000 T srso_alias_untrain_ret\n"
                 "ffffffff81000000 T _stext\nffffffff81000000 T _text\nffffffff81000010 T __entry_text_start\n")
    assert KernelSymbols.read_text_base(f) == KernelSymbols.load(f).text_base() == 0xffffffff81000000
    f.write_text("0000000000000000 T _text\n0000000000000000 T startup_64\n")     # hidden from non-root
    assert KernelSymbols.read_text_base(f) is None
