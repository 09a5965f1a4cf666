"""What the commands' speed rests on (issue 30's targets): the modules a command imports at its start, and the
hook choice's one pass over the kernel's BTF names. Each test fails on the code before the change it guards."""

import struct
import subprocess
import sys

import pytest

import pagefault.decode
import pagefault.evidence
from pagefault.capture.bpf import KernelHooks
from pagefault.capture.kernel_counts import HOOKS
from pagefault.kernel.btf import BTF_MAGIC


def test_the_summary_only_path_imports_no_decoder_and_not_the_evidence_records():
    # trace --summary-only needs the counter, its summary and the VMAs' /proc-style lines (evidence.maps): the
    # records' dataclasses and every decoder's tables cost it ~50 ms at each start (before: all were imported)
    code = ("import sys\nfrom pagefault import cli\nfrom pagefault.capture import kernel_counts, mapping_watch\n"
            "from pagefault.journey import count_summary\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pagefault.decode.', 'pagefault.evidence.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    assert "pagefault.evidence.records" not in loaded
    assert not [m for m in loaded if m.startswith("pagefault.decode.") and m not in ("pagefault.decode.arch",
                                                                                       "pagefault.decode.bits")], loaded


@pytest.mark.parametrize("package", [pagefault.decode, pagefault.evidence])
def test_every_name_the_lazy_packages_export_is_there_and_is_the_defining_modules(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert value is getattr(sys.modules[value.__module__], name) if hasattr(value, "__module__") else value
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_maps_lines_are_the_same_class_wherever_they_are_imported_from():
    from pagefault.evidence import MapsLine, parse_maps
    from pagefault.evidence.maps import MapsLine as MapsLineThere
    from pagefault.evidence.records import MapsLine as MapsLineRecords
    assert MapsLine is MapsLineThere is MapsLineRecords
    (line,) = parse_maps("7f0000000000-7f0000001000 r-xp 00001000 08:01 42 /usr/lib/libc.so.6\n")
    assert (line.start, line.end, line.perms, line.offset, line.inode, line.path) == (
        0x7F0000000000, 0x7F0000001000, "r-xp", 0x1000, 42, "/usr/lib/libc.so.6")


def _btf(types: bytes, strings: bytes) -> bytes:
    """A BTF blob: its 24-byte header (Documentation/bpf/btf.rst), then the type section, then the strings."""
    header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_a_btf_typedef_name_counts_only_from_the_string_section(tmp_path):
    # the hook choice reads the names from BTF's string section alone: bytes in the type section that happen to
    # spell a name are no typedef (before: the whole blob was searched, and such bytes chose tp_btf)
    btf = tmp_path / "vmlinux"
    btf.write_bytes(_btf(b"\0btf_trace_page_fault_user\0" + bytes(4), b"\0int\0btf_trace_mm_page_alloc\0"))
    kernel = KernelHooks(btf, tmp_path)
    assert not kernel.has_btf_tracepoint("page_fault_user")
    assert kernel.has_btf_tracepoint("mm_page_alloc")
    assert not kernel.has_btf_tracepoint("mm_page")   # a prefix of a name is not the name


def test_the_running_kernels_raw_tracepoints_are_found_as_libbpf_finds_their_typedefs():
    from pagefault.capture.libbpf import LibbpfError, kernel_functions, lib
    try:
        kernel_functions(())
        library = lib()
    except LibbpfError as exc:
        pytest.skip(str(exc))
    import ctypes
    library.btf__find_by_name_kind.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32)
    btf = library.btf__load_vmlinux_btf()
    if not btf:
        pytest.skip("no kernel BTF here")
    try:
        kernel = KernelHooks()
        for hook in HOOKS:
            typedef = library.btf__find_by_name_kind(btf, f"btf_trace_{hook.event}".encode(), 8) > 0  # BTF_KIND_TYPEDEF
            assert kernel.has_btf_tracepoint(hook.event) == typedef, hook.event
    finally:
        library.btf__free(btf)


def _enum(name_off: int, members: list[tuple[int, int]]) -> bytes:
    """A BTF_KIND_ENUM record: name, info (kind 6, member count), size 4, then (name, value) per member."""
    return struct.pack("<III", name_off, (6 << 24) | len(members), 4) + b"".join(
        struct.pack("<Ii", n, v) for n, v in members)


def test_the_gfp_bits_enum_is_found_in_btf_without_walking_every_type(tmp_path):
    from pagefault.kernel.facts import _gfp_bit_enumerators
    strings = b"\0int\0___GFP_DMA_BIT\0___GFP_IO_BIT\0___GFP_LAST_BIT\0other\0"
    dma, io, last, other = (strings.index(n) for n in (b"___GFP_DMA_BIT", b"___GFP_IO_BIT", b"___GFP_LAST_BIT",
                                                        b"other"))
    int_type = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", 32)   # BTF_KIND_INT and its 4 bytes
    # a decoy first: an enum with one of the names among others is not the GFP bits' enum
    decoy = _enum(other, [(other, 1), (dma, 2)])
    btf = tmp_path / "vmlinux"
    btf.write_bytes(_btf(int_type + decoy + _enum(0, [(dma, 0), (io, 6), (last, 7)]), strings))
    assert _gfp_bit_enumerators(btf) == {"___GFP_DMA_BIT": 0, "___GFP_IO_BIT": 6, "___GFP_LAST_BIT": 7}
    btf.write_bytes(_btf(int_type + decoy, strings))   # no such enum: {} (the caller walks the types)
    assert _gfp_bit_enumerators(btf) == {}


def test_gfp_bits_from_the_running_kernel_are_the_full_parse_and_need_no_walk(monkeypatch):
    from pagefault.kernel import btf, facts
    try:
        full = btf.load_vmlinux_btf().enumerators
    except btf.BTFError as exc:
        pytest.skip(str(exc))
    expected = {"__GFP_" + k[len("___GFP_"):-len("_BIT")]: v for k, v in full.items()
                if k.startswith("___GFP_") and k.endswith("_BIT") and k not in ("___GFP_LAST_BIT", "___GFP_UNUSED_BIT")}
    if not expected:
        pytest.skip("this kernel's BTF has no ___GFP_*_BIT (before 6.10): the built-in table is used")

    def walk(*_args):
        raise AssertionError("every type of the kernel's BTF walked for the GFP bits")
    monkeypatch.setattr(facts, "load_vmlinux_btf", walk)
    table = facts.gfp_bits()
    assert table.values == expected and table.source.startswith("observed: enum ___GFP_*_BIT")


def test_every_named_enum_of_the_running_kernel_is_found_as_the_full_parse_has_it():
    from pagefault.kernel import btf
    try:
        full = btf.load_vmlinux_btf()
    except btf.BTFError as exc:
        pytest.skip(str(exc))
    names = tuple(n for n, values in full.enums.items() if values and not n.startswith("(anonymous"))
    assert names
    assert btf.find_enums(names) == {n: full.enums[n] for n in names}


def test_of_two_enums_of_one_name_the_later_is_found_as_the_full_parse_keeps_it(tmp_path):
    from pagefault.kernel.btf import find_enums, parse_btf
    strings = b"\0e\0A\0B\0C\0"
    e, a, b, c = (strings.index(n, 1) for n in (b"e\0", b"A\0", b"B\0", b"C\0"))
    blob = _btf(_enum(e, [(a, 1)]) + _enum(e, [(b, 2), (c, -3)]), strings)
    (tmp_path / "btf").write_bytes(blob)
    # an unsigned enum (kind_flag clear): -3 is read back as its u32, as parse_btf reads it
    assert find_enums(("e", "missing"), tmp_path / "btf") == {"e": parse_btf(blob).enums["e"]} == {
        "e": {"B": 2, "C": 2**32 - 3}}


def test_the_journeys_enums_are_read_without_walking_every_type(monkeypatch):
    from pagefault.kernel import btf, facts
    try:
        full = btf.load_vmlinux_btf()
    except btf.BTFError as exc:
        pytest.skip(str(exc))
    if not all(full.enum(n) for n in ("migratetype",) + facts.JOURNEY_ENUMS):
        pytest.skip("an enum of the journey is missing from this kernel's BTF: its lookup walks the types")
    expected = facts.migratetype_names(), facts.kernel_enums()

    def walk(*_args):
        raise AssertionError("every type of the kernel's BTF walked")
    monkeypatch.setattr(facts, "load_vmlinux_btf", walk)
    assert (facts.migratetype_names(), facts.kernel_enums()) == expected
