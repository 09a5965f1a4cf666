"""Property tests: round trips, vectorised == scalar, and no traceback on any CLI input."""

import contextlib
import io

import numpy as np
from hypothesis import given, settings, strategies as st

from pagefault.cli import main
from pagefault.decode import (DecodeError, decode_pagemap_entry, decode_pte, encode_pte, join_virtual_address,
                              split_virtual_address)
from pagefault.decode.pte import FLAG_BY_NAME, EntryKind
from pagefault.decode.swap_entry import encode_swap_pte
from pagefault.decode.vectorised import decode_pagemap_array, split_addresses


def canonical(levels):
    width = 12 + 9 * levels
    return st.integers(0, (1 << width) - 1).map(
        lambda a: a | (((1 << 64) - 1) ^ ((1 << width) - 1)) if a >> (width - 1) else a)


@given(st.sampled_from([4, 5]).flatmap(lambda lv: st.tuples(st.just(lv), canonical(lv))))
def test_split_join_round_trip(args):
    levels, address = args
    s = split_virtual_address(address, levels)
    assert join_virtual_address([i.index for i in s.indices], s.page_offset, levels) == address


@given(st.lists(st.integers(0, 511), min_size=4, max_size=4), st.integers(0, 4095))
def test_join_split_round_trip(indices, offset):
    address = join_virtual_address(indices, offset, 4)
    s = split_virtual_address(address, 4)
    assert [i.index for i in s.indices] == indices and s.page_offset == offset


_LEAF_FLAGS = [n for n in FLAG_BY_NAME if n not in ("PS", "P")]


@given(st.integers(0, (1 << 40) - 1), st.lists(st.sampled_from(_LEAF_FLAGS), unique=True), st.integers(0, 15))
def test_pte_encode_decode_round_trip(pfn, flags, pkey):
    flags = ["P"] + flags  # encode_pte builds present entries; the others are swap entries, tested below
    value = encode_pte(pfn, flags, pkey)
    p = decode_pte(value)
    assert p.pfn == pfn and p.protection_key == pkey
    assert set(p.flags.names) == set(flags)
    assert encode_pte(p.pfn, p.flags.names, p.protection_key) == value


@given(st.integers(0, (1 << 64) - 1), st.sampled_from([None, (6, 1), (6, 12), (6, 18)]))
def test_any_64_bit_pte_decodes_at_every_level(value, kernel):
    for level in ("PGD", "P4D", "PUD", "PMD", "PTE"):
        p = decode_pte(value, level, kernel=kernel)
        assert p.present == bool(value & 1)
        # a frame is claimed only where the kernel reads one
        assert (p.pfn is None) == (p.kind in (EntryKind.EMPTY, EntryKind.NOT_PRESENT)
                                   or p.kind is EntryKind.SWAP_FORMAT and not p.swap.kind.holds_pfn)


@given(st.integers(0, 31), st.integers(0, (1 << 50) - 1), st.booleans(), st.booleans(), st.booleans(),
       st.sampled_from([None, (6, 1), (6, 12), (6, 18)]))
def test_swap_entry_encode_decode_round_trip(swap_type, offset, soft_dirty, uffd_wp, exclusive, kernel):
    try:
        value = encode_swap_pte(swap_type, offset, soft_dirty, uffd_wp, exclusive)
    except DecodeError:   # the one entry stored as 0 (the offset is kept inverted), which no kernel makes
        assert (swap_type, offset, soft_dirty, uffd_wp, exclusive) == (0, (1 << 50) - 1, False, False, False)
        return
    assert not value & 1 and not value & 0x100 and value
    p = decode_pte(value, "PTE", kernel=kernel)
    assert p.kind is EntryKind.SWAP_FORMAT and (p.swap.swap_type, p.swap.offset) == (swap_type, offset)
    assert [p.swap.flags.has(n) for n in ("SWP_SOFT_DIRTY", "SWP_UFFD_WP", "SWP_EXCLUSIVE")] == \
        [soft_dirty, uffd_wp, exclusive]


@given(st.integers(0, (1 << 40) - 1), st.integers(0, 0xFFF))
def test_prot_none_pfn_is_un_inverted(pfn, low):
    # what pfn_pte() with PAGE_NONE stores: the frame inverted (protnone_mask), bit 8 set, P clear
    flags = (low | 0x100) & ~1
    value = ((~(pfn << 12)) & 0x000F_FFFF_FFFF_F000) | flags
    p = decode_pte(value, "PTE")
    assert p.kind is EntryKind.PROT_NONE and p.pfn == pfn and not p.present


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=32)), st.integers(0, 10))
def test_swap_entry_encoder_refuses_out_of_range(swap_type, offset):
    try:
        encode_swap_pte(swap_type, offset)
    except DecodeError:
        return
    raise AssertionError("accepted an impossible swap type")


@settings(max_examples=50)
@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=64))
def test_vectorised_pagemap_equals_scalar(values):
    arr = np.array(values, dtype=np.uint64)
    out = decode_pagemap_array(arr)
    for i, v in enumerate(values):
        e = decode_pagemap_entry(v)
        assert out["present"][i] == e.present and out["swapped"][i] == e.swapped
        assert out["exclusive"][i] == e.exclusive and out["soft_dirty"][i] == e.soft_dirty
        assert int(out["pfn"][i]) == (e.pfn or 0)
        if e.swap_type is not None:
            assert int(out["swap_type"][i]) == e.swap_type and int(out["swap_offset"][i]) == e.swap_offset


@settings(max_examples=50)
@given(st.lists(canonical(4), min_size=1, max_size=64))
def test_vectorised_split_equals_scalar(addresses):
    out = split_addresses(np.array(addresses, dtype=np.uint64))
    for i, a in enumerate(addresses):
        s = split_virtual_address(a)
        assert [int(out[lv][i]) for lv in ("PGD", "PUD", "PMD", "PTE")] == [x.index for x in s.indices]
        assert int(out["offset"][i]) == s.page_offset


@given(st.integers())
def test_encode_rejects_out_of_range_pfn_or_key(n):
    if not 0 <= n < 1 << 40:
        try:
            encode_pte(n, [])
        except DecodeError:
            pass
        else:
            raise AssertionError("accepted an out-of-range PFN")


KINDS = ["address", "error-code", "fault-flags", "vm-flags", "pte", "pagemap", "kpageflags", "gfp", "nonsense"]
VALUES = st.one_of(st.integers(-(1 << 70), 1 << 70).map(str), st.integers(0, 1 << 66).map(hex),
                   st.text(max_size=20), st.sampled_from(["0x", "--json", "-1", "0b102", "1_000", "0xffff800000000000"]))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(KINDS), VALUES, st.lists(st.sampled_from(["--json", "--levels", "5", "4", "--level", "PMD",
                                                                   "--from-error-code", "--bogus"]), max_size=3))
def test_cli_never_tracebacks(kind, value, extra):
    out_buf, err_buf = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
        try:
            code = main(["decode", kind, value, *extra])
        except SystemExit as exc:  # --help / --version only
            code = exc.code
    out, err = out_buf.getvalue(), err_buf.getvalue()
    assert code in (0, 2)
    assert "Traceback" not in out + err
    if code == 2:
        assert err.startswith("pagefault: ") and err.count("\n") == 1


# --- the maple-tree model and smaps VmFlags ------------------------------------------------------------

from pagefault.decode.vm_flags import SMAPS_MNEMONICS, decode_vm_flags, vm_flags_from_smaps  # noqa: E402
from pagefault.model.maple_tree import search as maple_search  # noqa: E402


@st.composite
def vma_layouts(draw):
    pages = sorted(draw(st.sets(st.integers(1, 1 << 20), min_size=2, max_size=80)))
    pairs = [(pages[i] << 12, pages[i + 1] << 12) for i in range(0, len(pages) - 1, 2)]
    return pairs, draw(st.integers(0, (1 << 47) - 1))


@given(vma_layouts())
def test_maple_search_finds_the_vma_holding_the_address_or_a_gap(args):
    vmas, address = args
    found = maple_search(vmas, address).found
    assert found.first <= address <= found.last
    holder = next(((s, e) for s, e in vmas if s <= address < e), None)
    assert found.vma == holder


@given(st.lists(st.sampled_from(sorted(SMAPS_MNEMONICS) + ["bt", "mt", "zz"]), unique=True))
def test_smaps_mnemonics_round_trip_through_vm_flags(mnemonics):
    from pagefault.decode.vm_flags import vm_flags_table
    known = {f.name for f in vm_flags_table((6, 18))[0]}
    value, _lines, unknown = vm_flags_from_smaps(mnemonics, (6, 18))
    assert set(unknown) == {m for m in mnemonics if SMAPS_MNEMONICS.get(m) not in known}
    assert set(decode_vm_flags(value, (6, 18)).names) == {SMAPS_MNEMONICS[m] for m in mnemonics if m not in unknown}


@given(st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_a_refused_error_code_says_so_first_and_a_handled_one_never(code):
    from pagefault.decode.fault_flags import derive_fault_flags
    d = derive_fault_flags(code, {"FAULT_FLAG_WRITE": 1, "FAULT_FLAG_INSTRUCTION": 0x100, "FAULT_FLAG_USER": 0x40})
    said = [line for line in d.derivations if line.startswith("handle_mm_fault() never gets these flags")]
    assert bool(said) == bool(d.rejected)
    # the code's own bits decide it: a write or shadow-stack access to a present page can reach the handler
    if code & 0x1 and not code & 0x42 and code & 0x4:
        assert d.rejected


# PROT_NONE (no READ/WRITE/EXEC bit) is left out: such a fault is refused before do_anonymous_page
@given(st.integers(0, (1 << 40) - 1), st.integers(0, 0xF).filter(lambda p: p & 7), st.booleans(),
       st.sampled_from([None, (6, 1), (6, 5), (6, 6), (6, 12), (6, 18)]))
def test_the_derived_pte_is_the_same_on_every_kernel_and_its_last_step_is_its_value(pfn, prot_bits, soft, kernel):
    from pagefault.decode.pte import derive_anonymous_pte
    vm_flags = prot_bits | 0x70            # VM_MAY* set, as mmap leaves them
    d = derive_anonymous_pte(pfn, vm_flags, True, soft_dirty=soft, kernel=kernel)
    assert d.value == derive_anonymous_pte(pfn, vm_flags, True, soft_dirty=soft, kernel=(6, 1)).value
    assert d.derivations[-1].endswith(f"0x{d.value:x}")
    assert not d.value & (1 << 58)          # SAVED_DIRTY never survives into the installed entry
    assert decode_pte(d.value).pfn == pfn
