"""Decoders against values checked by hand (and, for the PTE, seen on this project's machines)."""

import pytest

from pagefault.decode.pte import EntryKind
from pagefault.decode.swap_entry import SwapConfig, SwapEntryKind, encode_swap_pte, special_swap_types
from pagefault.decode import (DecodeError, NonCanonicalAddress, decode_error_code, decode_fault_flags,
                              decode_gfp, decode_kpageflags, decode_pagemap_entry, decode_pte, decode_vm_flags,
                              derive_anonymous_pte, derive_fault_flags, fallback_fault_flag_values,
                              split_virtual_address)
from pagefault.decode.gfp import DEFAULT_GFP_BITS


def indices(split):
    return [i.index for i in split.indices]


def test_seed_address_split():
    s = split_virtual_address(0x716B326C8100)
    assert indices(s) == [226, 428, 403, 200]
    assert s.page_offset == 256
    assert s.page_base == 0x716B326C8000
    assert "(0x716b326c8100 >> 39) & 0x1ff = 226" in s.derivations[0]


def test_second_seed_address_and_its_shift():
    s = split_virtual_address(0x784DBA14E000)
    assert indices(s) == [240, 310, 464, 334]
    assert s.page_offset == 0
    assert 0x784DBA14E000 >> 21 == 63073744
    assert s.offset_in_2m == 0x784DBA14E000 & 0x1FFFFF == 0x14E000


def test_five_level_split_has_p4d():
    s = split_virtual_address(0x00FF_FFFF_FFFF_F000, levels=5)
    assert [i.level for i in s.indices] == ["PGD", "P4D", "PUD", "PMD", "PTE"]
    assert indices(s) == [255, 511, 511, 511, 511]


def test_binary_slicing_is_grouped_by_level():
    s = split_virtual_address(0x716B326C8100)
    assert s.binary == "011100010 110101100 110010011 011001000 000100000000"


@pytest.mark.parametrize("address,levels", [(0x0000_8000_0000_0000, 4), (0x0100_0000_0000_0000, 5),
                                            (0xFFFF_7FFF_FFFF_FFFF, 4)])
def test_non_canonical_addresses_are_refused_with_the_reason(address, levels):
    with pytest.raises(NonCanonicalAddress, match="not canonical"):
        split_virtual_address(address, levels)


def test_kernel_half_address_is_canonical():
    s = split_virtual_address(0xFFFF_8880_0000_0000)
    assert s.half == "kernel" and indices(s)[0] == 273


def test_error_code_user_write_not_present():
    e = decode_error_code(0x6)
    assert (e.present, e.write, e.user, e.instruction) == (False, True, True, False)
    assert e.summary == "0x6 = a user-mode write to a not-present page"


def test_error_code_instruction_fetch_protection():
    e = decode_error_code(0x15)
    assert e.present and e.instruction and e.user and not e.write
    assert "instruction fetch to a present page" in e.summary


def test_error_code_pk_and_sgx_bits():
    e = decode_error_code(0x8027)
    assert {"PROT", "WRITE", "USER", "PK", "SGX"} == set(e.flags.names)


def test_fault_flags_for_user_write_are_0x1255():
    values, _ = fallback_fault_flag_values((6, 18))
    d = derive_fault_flags(0x6, values)
    assert d.value == 0x1255
    assert [s.name for s in d.steps] == ["FAULT_FLAG_ALLOW_RETRY", "FAULT_FLAG_KILLABLE", "FAULT_FLAG_INTERRUPTIBLE",
                                         "FAULT_FLAG_WRITE", "FAULT_FLAG_USER", "FAULT_FLAG_VMA_LOCK"]
    assert d.derivations[-1].endswith("= 0x1255")


def test_fault_flags_mmap_lock_path_and_instruction_fetch():
    values, _ = fallback_fault_flag_values((6, 18))
    assert derive_fault_flags(0x14, values, vma_lock=False).value == 0x214 | 0x40 | 0x100
    assert derive_fault_flags(0x4, values).value == 0x1254


def test_fault_flag_tables_by_version():
    assert "FAULT_FLAG_VMA_LOCK" not in fallback_fault_flag_values((6, 3))[0]
    assert fallback_fault_flag_values((6, 4))[0]["FAULT_FLAG_VMA_LOCK"] == 0x1000
    assert "older" in fallback_fault_flag_values((4, 19))[1]


def test_decode_fault_flags_names_every_bit():
    values, _ = fallback_fault_flag_values((6, 18))
    w = decode_fault_flags(0x1255, values)
    assert w.names == ["FAULT_FLAG_WRITE", "FAULT_FLAG_ALLOW_RETRY", "FAULT_FLAG_KILLABLE", "FAULT_FLAG_USER",
                       "FAULT_FLAG_INTERRUPTIBLE", "FAULT_FLAG_VMA_LOCK"]
    assert not w.unknown_bits
    assert decode_fault_flags(0x4000, values).unknown_bits == (14,)


def test_vm_flags_of_a_private_anonymous_rw_mapping():
    w = decode_vm_flags(0x100073)
    assert w.names == ["VM_READ", "VM_WRITE", "VM_MAYREAD", "VM_MAYWRITE", "VM_MAYEXEC", "VM_ACCOUNT"]


def test_vm_flags_differ_by_version():
    assert decode_vm_flags(1 << 42, (6, 18)).names == ["VM_SEALED"]
    assert decode_vm_flags(1 << 63, (6, 12)).names == ["VM_SEALED"]
    assert decode_vm_flags(1 << 42, (6, 12)).unknown_bits == (42,)


def test_pte_seen_on_the_project_machines():
    p = decode_pte(0x800000013A875067)
    assert p.pfn == 0x13A875
    assert (p.present, p.writable, p.user, p.accessed, p.dirty, p.no_execute) == (True,) * 6
    assert p.physical_address == 0x13A875000
    assert not p.flags.unknown_bits


def test_upper_level_table_entry_points_to_next_table():
    p = decode_pte(0x1047B6067, "PGD")
    assert p.pfn == 0x1047B6 and not p.leaf and "next level's table at physical 0x1047b6000" in p.points_to


def test_huge_pmd_entry():
    p = decode_pte(0x80000001_2340_00E7, "PMD")
    assert p.huge and p.leaf and p.pfn == 0x123400
    assert "2 MiB" in p.points_to


def test_derived_anonymous_pte_matches_the_one_seen():
    d = derive_anonymous_pte(0x13A875, 0x100073, write_fault=True)
    assert d.value == 0x800000013A875067


def test_derived_zero_page_pte_is_read_only_special():
    d = decode_pte(derive_anonymous_pte(0x1234, 0x100073, write_fault=False).value)
    assert not d.writable and d.present and d.flags.has("SPECIAL")


def test_pagemap_seed_entry():
    e = decode_pagemap_entry(0x81800000002CAD54)
    assert e.present and e.exclusive and e.soft_dirty and not e.swapped
    assert e.pfn == 0x2CAD54


def test_pagemap_non_root_reads_pfn_zero():
    e = decode_pagemap_entry(0x8180000000000000)
    assert e.pfn == 0 and e.pfn_hidden and "hidden" in e.summary


def test_pagemap_swap_entry():
    e = decode_pagemap_entry((1 << 62) | (0x1234 << 5) | 3)
    assert e.swapped and not e.present and e.swap_type == 3 and e.swap_offset == 0x1234 and e.pfn is None


def test_kpageflags():
    w = decode_kpageflags((1 << 5) | (1 << 11) | (1 << 12) | (1 << 14))
    assert w.names == ["KPF_LRU", "KPF_MMAP", "KPF_ANON", "KPF_SWAPBACKED"]


def test_gfp_highuser_movable_zero():
    b = DEFAULT_GFP_BITS
    value = sum(1 << b[n] for n in ("__GFP_DIRECT_RECLAIM", "__GFP_KSWAPD_RECLAIM", "__GFP_IO", "__GFP_FS",
                                    "__GFP_HARDWALL", "__GFP_HIGHMEM", "__GFP_MOVABLE", "__GFP_ZERO"))
    assert value == 0x100DCA  # 0x100000|0x800|0x400|0x100|0x80|0x40|0x8|0x2
    assert decode_gfp(value).symbolic == "GFP_HIGHUSER_MOVABLE|__GFP_ZERO"


def test_out_of_range_values_are_refused():
    with pytest.raises(DecodeError):
        decode_error_code(1 << 64)
    with pytest.raises(DecodeError):
        decode_pte(-1)
    with pytest.raises(DecodeError, match="unknown page-table level"):
        decode_pte(0, "PXD")


def test_vm_flags_from_smaps_of_an_anonymous_rw_mapping():
    from pagefault.decode.vm_flags import vm_flags_from_smaps
    value, lines, unknown = vm_flags_from_smaps(["rd", "wr", "mr", "mw", "me", "ac"])
    assert value == 0x100073 and not unknown and lines[-1].endswith("= 0x100073")


def test_derived_pte_with_soft_dirty_sets_bit_11():
    d = derive_anonymous_pte(0x13A875, 0x100073, write_fault=True, soft_dirty=True)
    assert d.value == 0x800000013A875867


def test_maple_search_hand_checked():
    from pagefault.model.maple_tree import search
    r = search([(0x1000, 0x3000), (0x7000, 0x8000)], 0x7100)
    assert (r.leaf_index, r.slot_index, r.found.vma) == (0, 3, (0x7000, 0x8000))
    gap = search([(0x1000, 0x3000), (0x7000, 0x8000)], 0x4000)
    assert gap.found.vma is None and "SEGV_MAPERR" in gap.derivations[-1]


def test_tables_are_keyed_to_the_kernel_they_hold_for():
    """Names and bit positions that changed between the matrix kernels, checked against the headers."""
    from pagefault.decode.gfp import builtin_gfp_bits, decode_gfp
    from pagefault.decode.pagemap import decode_kpageflags
    bit34 = 1 << 34
    assert decode_kpageflags(bit34, (6, 1)).names == ["KPF_MAPPEDTODISK"]
    assert decode_kpageflags(bit34, (6, 11)).names == ["KPF_MAPPEDTODISK"]
    assert decode_kpageflags(bit34, (6, 12)).names == ["KPF_OWNER_2"]
    assert "before Linux 6.12" in decode_kpageflags(bit34, (6, 1)).table_source
    table, what, holds = builtin_gfp_bits((6, 1))
    assert holds and table["__GFP_ATOMIC"] == 9 and "__GFP_NO_OBJ_EXT" not in table and "6.1" in what
    # GFP_ATOMIC on 6.1 = __GFP_HIGH | __GFP_ATOMIC | __GFP_KSWAPD_RECLAIM = 0x20 | 0x200 | 0x800
    assert decode_gfp(0xA20, table).symbolic == "GFP_ATOMIC"
    table, _what, holds = builtin_gfp_bits((6, 18))
    assert holds and "__GFP_ATOMIC" not in table and table["__GFP_NO_OBJ_EXT"] == 24
    _table, _what, holds = builtin_gfp_bits((5, 4))
    assert not holds


def test_fault_flags_of_a_kernel_mode_error_code_follow_fault_c():
    """arch/x86/mm/fault.c: FAULT_FLAG_USER only if user_mode(regs); the per-VMA lock only for user faults."""
    from pagefault.decode.fault_flags import derive_fault_flags, fallback_fault_flag_values
    table, _ = fallback_fault_flag_values((6, 18))
    user = derive_fault_flags(0x6, table)
    assert user.value == 0x1255 and user.user_mode and user.vma_lock
    kernel = derive_fault_flags(0x2, table)       # a kernel-mode write to a not-present user page
    # FAULT_FLAG_DEFAULT (ALLOW_RETRY 0x4 | KILLABLE 0x10 | INTERRUPTIBLE 0x200) | WRITE 0x1 = 0x215
    assert kernel.value == 0x215 and not kernel.user_mode and not kernel.vma_lock
    assert any("no per-VMA lock" in line for line in kernel.derivations)
    assert derive_fault_flags(0x6, fallback_fault_flag_values((6, 1))[0]).value == 0x255   # no VMA_LOCK in 6.1's enum
    pk_without_p = derive_fault_flags(0x24, table)
    assert pk_without_p.impossible and "PK is set without P" in pk_without_p.impossible[0]


def test_cleared_error_code_bits_say_what_their_value_means():
    from pagefault.decode.error_code import decode_error_code
    meanings = decode_error_code(0x4).bit_meanings
    assert meanings[1] == "bit 1 WRITE = 0: the access was a read (or an instruction fetch, with INSTR)"
    assert meanings[4] == "bit 4 INSTR = 0: the access was not an instruction fetch"
    assert meanings[2] == "bit 2 USER = 1: the access came from user mode (CPL 3)"
    assert "never reports" in decode_error_code(0x12 | 0x1).summary     # INSTR with WRITE
    assert "never reports" not in decode_error_code(0x15).summary       # a user instruction fetch, NX


# --- entries that are not present (issue 14 point 4) ----------------------------------------------
# Hand-checked against include/linux/swap.h of Debian's linux-headers 6.1.0-56 and 6.12.117 with
# Debian's configuration (MIGRATION, MEMORY_FAILURE and PTE_MARKER on, DEVICE_PRIVATE off), and
# against this machine's 6.18 (MEMORY_FAILURE and DEVICE_PRIVATE off), where the live test saw the
# guard marker as type 31.

DEBIAN = SwapConfig(migration=True, memory_failure=True, device_private=False, pte_marker=True, source="test")
HOST_6_18 = SwapConfig(migration=True, memory_failure=False, device_private=False, pte_marker=True, source="test")


def test_special_swap_types_of_6_1_as_debian_builds_it():
    t = special_swap_types((6, 1), DEBIAN)
    # 32 - 3 migration - 1 hwpoison - 1 marker - 1 swap-in error = 26
    assert t.max_swapfiles == 26
    assert t.kinds == {26: SwapEntryKind.HWPOISON, 27: SwapEntryKind.MIGRATION_READ,
                       28: SwapEntryKind.MIGRATION_READ_EXCLUSIVE, 29: SwapEntryKind.MIGRATION_WRITE,
                       30: SwapEntryKind.PTE_MARKER, 31: SwapEntryKind.SWAPIN_ERROR}


def test_special_swap_types_of_6_12_and_of_this_6_18():
    t = special_swap_types((6, 12), DEBIAN)
    assert t.max_swapfiles == 27 and t.kinds[27] is SwapEntryKind.HWPOISON and t.kinds[31] is SwapEntryKind.PTE_MARKER
    h = special_swap_types((6, 18), HOST_6_18)
    assert h.max_swapfiles == 28 and h.kinds[28] is SwapEntryKind.MIGRATION_READ
    assert h.kinds[31] is SwapEntryKind.PTE_MARKER and 27 not in h.kinds


def test_device_private_takes_four_types_and_an_unread_config_is_said_to_be_assumed():
    t = special_swap_types((6, 12), SwapConfig(True, True, True, True, "test"))
    assert t.max_swapfiles == 23 and t.kinds[27] is SwapEntryKind.DEVICE_PRIVATE_WRITE
    assert "assumed as Debian builds it" in special_swap_types((6, 12)).source
    assert "not checked for 6.18" in special_swap_types((6, 18), SwapConfig(True, True, True, True, "t")).source


def test_swap_pte_of_slot_1_as_seen_live():
    # read by bpftrace on 6.18 after MADV_PAGEOUT; pagemap said swap area 0, slot 1
    p = decode_pte(0x07FFFFFFFFFFFC08, "PTE", kernel=(6, 18), swap_config=HOST_6_18)
    assert p.kind is EntryKind.SWAP_FORMAT and p.pfn is None and not p.present
    assert (p.swap.swap_type, p.swap.offset, p.swap.kind) == (0, 1, SwapEntryKind.SWAP)
    assert p.swap.flags.names == ["SWP_EXCLUSIVE"]


def test_guard_marker_as_seen_live_and_its_name_on_older_kernels():
    p = decode_pte(0xFFFFFFFFFFFFF600, "PTE", kernel=(6, 18), swap_config=HOST_6_18)
    assert p.swap.kind is SwapEntryKind.PTE_MARKER and p.swap.offset == 4
    assert p.swap.marker.names == ["PTE_MARKER_GUARD"]
    # on 6.12 bit 2 of a marker has no name: guard regions came in 6.13
    old = decode_pte(0xFFFFFFFFFFFFF600, "PTE", kernel=(6, 12), swap_config=DEBIAN)
    assert old.swap.marker.unknown_bits == (2,)
    # on 6.1 type 31 is a swap-in error, not a marker
    assert decode_pte(0xFFFFFFFFFFFFF600, "PTE", kernel=(6, 1), swap_config=DEBIAN).swap.kind \
        is SwapEntryKind.SWAPIN_ERROR


def test_migration_entry_holds_the_pfn():
    # type 28 on 6.18 (MIGRATION_READ), offset = PFN 0x123456; ~0x123456 << 14 >> 5 | 28 << 59
    value = encode_swap_pte(28, 0x123456)
    assert value == 0xE7FFFFFFDB975200
    p = decode_pte(value, "PTE", kernel=(6, 18), swap_config=HOST_6_18)
    assert p.swap.kind is SwapEntryKind.MIGRATION_READ and p.pfn == 0x123456


def test_prot_none_entry_as_seen_live():
    # mprotect(PROT_NONE) of a written page on 6.18; pagemap said present, PFN 0x1576c9
    p = decode_pte(0x040FFFFEA8936120, "PTE", kernel=(6, 18))
    assert p.kind is EntryKind.PROT_NONE and not p.present and p.pfn == 0x1576C9
    assert p.flags.has("PROTNONE") and not p.flags.has("G")


def test_software_bit_58_was_devmap_before_6_6():
    v = 0x0400_0001_3A87_5067  # bit 58 set on a present PTE
    assert decode_pte(v, "PTE", kernel=(6, 1)).flags.has("DEVMAP")
    assert decode_pte(v, "PTE", kernel=(6, 12)).flags.has("SAVED_DIRTY")
    w = 0x0200_0001_3A87_5067  # bit 57
    assert decode_pte(w, "PTE", kernel=(6, 12)).flags.has("DEVMAP")
    assert decode_pte(w, "PTE", kernel=(6, 18)).flags.has("SOFTW4")
    assert decode_pte(w, "PTE", kernel=(6, 1)).flags.unknown_bits == (57,)


def test_pagemap_names_the_swap_type_with_the_kernel_table():
    e = decode_pagemap_entry((1 << 62) | (4 << 5) | 31, (6, 18), HOST_6_18)
    assert e.swap_kind is SwapEntryKind.PTE_MARKER and "PTE_MARKER_GUARD" in e.summary
    hidden = decode_pagemap_entry(1 << 62, (6, 18), HOST_6_18)
    assert "hidden" in hidden.summary


@pytest.mark.parametrize("code, words", [
    (0x5, "a read of a present page"), (0x15, "an instruction fetch of a present page"),
    (0x26, "protection key"), (0x8006, "SGX"), (0xE, "reserved bit"), (0x10, "kernel-mode code fetching"),
])
def test_error_codes_the_kernel_refuses_before_handle_mm_fault_say_so(code, words):
    """arch/x86/mm/fault.c (6.1 to 6.18): these never reach handle_mm_fault(); the flags are not what it gets."""
    from pagefault.decode.fault_flags import derive_fault_flags
    d = derive_fault_flags(code, {"FAULT_FLAG_WRITE": 1, "FAULT_FLAG_USER": 0x40})
    assert any(words in r for r in d.rejected), d.rejected
    assert d.derivations[[i for i, line in enumerate(d.derivations) if "never gets" in line][0]].startswith(
        "handle_mm_fault() never gets these flags")


@pytest.mark.parametrize("code", [0x4, 0x6, 0x7, 0x14, 0x2])
def test_error_codes_that_reach_handle_mm_fault_are_not_refused(code):
    from pagefault.decode.fault_flags import derive_fault_flags
    assert derive_fault_flags(code, {"FAULT_FLAG_WRITE": 1}).rejected == ()


def test_derived_pte_middle_step_uses_saved_dirty_from_6_6_only():
    # hand-checked against mksaveddirty_shift/clear_saveddirty_shift (arch/x86/include/asm/pgtable.h, 6.6+):
    # a private writable mapping's vm_page_prot has no RW, so pte_mkdirty's D lands in SAVED_DIRTY (bit 58)
    new = derive_anonymous_pte(0x13A875, 0x100073, write_fault=True, kernel=(6, 12))
    assert "= 0x840000013a875025" in new.derivations[2] and "SAVED_DIRTY" in new.derivations[2]
    assert new.value == 0x800000013A875067          # the installed entry is the same on every version
    old = derive_anonymous_pte(0x13A875, 0x100073, write_fault=True, kernel=(6, 1))
    assert "= 0x800000013a875065" in old.derivations[2] and "moved to SAVED_DIRTY" not in old.derivations[2]
    assert old.value == new.value
    # a shared writable mapping's vm_page_prot has RW already: D is set directly, on 6.12 too
    shared = derive_anonymous_pte(0x13A875, 0x1000FB, write_fault=True, kernel=(6, 12))
    assert "SAVED_DIRTY" not in " ".join(shared.derivations) and shared.value & 0x42 == 0x42
