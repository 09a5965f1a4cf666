"""arm64 decoders: hand-checked values, round trips, bad input, and the other architecture's values.

The hand-checked values were worked out bit by bit from Debian's 6.1.192 and 6.12.117 arm64 headers
(pgtable-hwdef.h, pgtable-prot.h, pgtable.h, esr.h); the ESRs are those the kernel's own "Unable to
handle" reports print for the same faults.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagefault.decode.arch import Arch, arch_of_machine, parse_arch
from pagefault.decode.arm64_address import AddressOutsideTranslation, join_arm64_address, split_arm64_address, translation_levels
from pagefault.decode.arm64_descriptor import (
    PAGE_NONE_BEFORE_6_10,
    PAGE_NONE_FROM_6_10,
    DescriptorKind,
    decode_arm64_descriptor,
    derive_arm64_anonymous_pte,
    encode_arm64_swap_pte,
)
from pagefault.decode.bits import DecodeError
from pagefault.decode.error_code import decode_error_code
from pagefault.decode.esr import FaultStatusKind, decode_esr, derive_esr, encode_esr, fault_flags_from_esr
from pagefault.decode.pte import decode_pte
from pagefault.decode.swap_entry import SwapConfig, SwapEntryKind
from pagefault.decode.vm_flags import decode_vm_flags

VM_READ_WRITE_PRIVATE = 0x73  # VM_READ|VM_WRITE|VM_MAYREAD|VM_MAYWRITE|VM_MAYEXEC


# --- addresses -----------------------------------------------------------------------------------

def test_user_address_48_bit_4k_hand_checked():
    split = split_arm64_address(0xFFFFA1234567)
    assert [(i.level, i.architectural_level, i.index) for i in split.indices] == [
        ("PGD", 0, 511), ("PUD", 1, 510), ("PMD", 2, 265), ("PTE", 3, 52)]
    assert split.page_offset == 0x567 and split.table_base == "TTBR0_EL1" and split.tag == 0


def test_tagged_user_address_keeps_the_tag_out_of_the_walk():
    plain, tagged = split_arm64_address(0xFFFFA1234567), split_arm64_address(0x0B00FFFFA1234567)
    assert tagged.tag == 0x0B and tagged.half == "user"
    assert [i.index for i in tagged.indices] == [i.index for i in plain.indices]


def test_kernel_linear_map_address_uses_ttbr1():
    split = split_arm64_address(0xFFFF000012345000)   # PAGE_OFFSET with VA_BITS 48 is 0xffff000000000000
    assert split.table_base == "TTBR1_EL1" and split.indices[0].index == 0


@pytest.mark.parametrize("va_bits,granule,levels,top_bits", [
    (39, 4096, 3, 9), (48, 4096, 4, 9), (52, 4096, 5, 4), (36, 16384, 2, 11), (47, 16384, 3, 11),
    (48, 16384, 4, 1), (42, 65536, 2, 13), (48, 65536, 3, 6), (52, 65536, 3, 10)])
def test_levels_and_top_index_width(va_bits, granule, levels, top_bits):
    assert translation_levels(va_bits, granule) == levels
    top = split_arm64_address(0, va_bits, granule).indices[0]
    assert top.high_bit - top.shift + 1 == top_bits
    assert top.architectural_level == 4 - levels


def test_x86_57_bit_kernel_address_is_outside_arm64_translation():
    with pytest.raises(AddressOutsideTranslation, match="bits 55..48"):
        split_arm64_address(0xFF11000012345000)    # an x86 5-level direct-map address


def test_kernel_address_without_ff_top_byte_is_refused():
    with pytest.raises(AddressOutsideTranslation, match="0xff in bits 63..56"):
        split_arm64_address(0x00FF000012345000 | 1 << 55)


@pytest.mark.parametrize("bad", [-1, 1 << 64, "0x10", True])
def test_bad_address_words(bad):
    with pytest.raises(DecodeError):
        split_arm64_address(bad)


def test_unbuildable_va_sizes_are_refused():
    with pytest.raises(DecodeError, match="VA_BITS"):
        split_arm64_address(0, 47, 4096)
    with pytest.raises(DecodeError, match="granule"):
        split_arm64_address(0, 48, 8192)


_SHAPES = st.sampled_from([(39, 4096), (48, 4096), (52, 4096), (36, 16384), (47, 16384), (48, 16384), (42, 65536),
                           (48, 65536), (52, 65536)])


@settings(max_examples=300)
@given(shape=_SHAPES, data=st.data())
def test_split_join_round_trip(shape, data):
    va_bits, granule = shape
    kernel = data.draw(st.booleans())
    address = data.draw(st.integers(0, (1 << va_bits) - 1))
    tag = 0 if kernel else data.draw(st.integers(0, 255))
    if kernel:
        address |= ((1 << 64) - 1) ^ ((1 << va_bits) - 1)
    else:
        address |= tag << 56
    split = split_arm64_address(address, va_bits, granule)
    assert join_arm64_address([i.index for i in split.indices], split.page_offset, va_bits, granule,
                              kernel=kernel, tag=tag) == address


@settings(max_examples=300)
@given(value=st.integers(0, (1 << 64) - 1), shape=_SHAPES)
def test_any_word_is_split_or_refused_with_a_reason(value, shape):
    try:
        split = split_arm64_address(value, *shape)
    except AddressOutsideTranslation as exc:
        assert "0x" in str(exc)
    else:
        assert all(0 <= i.index < 1 << (i.high_bit - i.shift + 1) for i in split.indices)


# --- descriptors ---------------------------------------------------------------------------------

def test_anonymous_write_fault_pte_hand_checked():
    # PAGE_READONLY = 3 | AF 0x400 | SH 0x300 | USER 0x40 | RDONLY 0x80 | nG 0x800 | PXN | UXN = 0x60000000000fc3;
    # pte_mkdirty sets bit 55; pte_mkwrite sets DBM (51) and clears RDONLY: 0x00e8000000000f43 | phys
    for kernel in ((6, 1), (6, 12)):
        derived = derive_arm64_anonymous_pte(0x41234, VM_READ_WRITE_PRIVATE, kernel=kernel)
        assert derived.value == 0x00E8000041234F43
    entry = decode_arm64_descriptor(0x00E8000041234F43, kernel=(6, 1))
    assert entry.kind is DescriptorKind.PAGE and entry.pfn == 0x41234 and entry.output_address == 0x41234000
    assert entry.writable and entry.dirty and entry.accessed and entry.not_global
    assert entry.access_permissions == 0b01 and entry.shareability == "inner shareable"
    assert entry.user_execute_never and entry.privileged_execute_never and not entry.suspicions
    assert set(entry.flags.names) == {"VALID", "PAGE", "USER", "AF", "nG", "DBM", "PXN", "UXN", "DIRTY"}


def test_shared_mapping_and_read_fault():
    shared = derive_arm64_anonymous_pte(0x1000, VM_READ_WRITE_PRIVATE | 0x8 | 0x80)
    assert shared.value & (1 << 7) == 0 and shared.value & (1 << 51)       # writable, hardware-dirty
    zero = derive_arm64_anonymous_pte(0x1000, VM_READ_WRITE_PRIVATE, write_fault=False)
    assert zero.value & (1 << 56) and zero.value & (1 << 7)                  # SPECIAL, read-only


def test_executable_protection_is_not_guessed():
    with pytest.raises(DecodeError, match="Enhanced PAN"):
        derive_arm64_anonymous_pte(0x1000, 0x75)


def test_table_and_block_descriptors():
    table = decode_arm64_descriptor(0x812F5003, level="PMD")
    assert table.kind is DescriptorKind.TABLE and table.output_address == 0x812F5000
    block = decode_arm64_descriptor(0x00E8000040200F41, level="PMD")   # bits 1..0 = 01 at level 2: 2 MiB
    assert block.kind is DescriptorKind.BLOCK and block.block_size == 2 << 20 and block.output_address == 0x40200000
    gig = decode_arm64_descriptor(0x40000701, level="PUD")
    assert gig.kind is DescriptorKind.BLOCK and gig.block_size == 1 << 30
    reserved = decode_arm64_descriptor(0x41234001, level="PTE")
    assert reserved.kind is DescriptorKind.RESERVED and reserved.pfn is None


def test_levels_are_those_of_the_walk():
    assert decode_arm64_descriptor(0x41234003, level="PMD", va_bits=39).architectural_level == 2
    with pytest.raises(DecodeError, match="PGD, PMD, PTE"):
        decode_arm64_descriptor(0x41234003, level="PUD", va_bits=39)


def test_prot_none_moved_in_6_10():
    old = decode_arm64_descriptor(PAGE_NONE_BEFORE_6_10 | 0x41234000, kernel=(6, 1))
    new = decode_arm64_descriptor(PAGE_NONE_FROM_6_10 | 0x41234000, kernel=(6, 12))
    assert old.kind is new.kind is DescriptorKind.PROT_NONE
    assert old.pfn == new.pfn == 0x41234 and old.present and not old.valid
    # 6.12's PROT_NONE read with 6.1's rules is no PROT_NONE: nG alone meant nothing then
    assert decode_arm64_descriptor(PAGE_NONE_FROM_6_10 | 0x41234000, kernel=(6, 1)).kind is DescriptorKind.SWAP_FORMAT


@pytest.mark.parametrize("kernel,type_shift,offset_shift", [((6, 1), 3, 8), ((6, 12), 6, 12)])
def test_swap_entry_layout_per_version(kernel, type_shift, offset_shift):
    value = 2 << type_shift | 0x1234 << offset_shift | 1 << 2
    entry = decode_arm64_descriptor(value, kernel=kernel, swap_config=SwapConfig(True, True, True, True))
    assert entry.kind is DescriptorKind.SWAP_FORMAT and entry.swap.swap_type == 2 and entry.swap.offset == 0x1234
    assert entry.swap.kind is SwapEntryKind.SWAP and "SWP_EXCLUSIVE" in entry.flags.names and entry.pfn is None


def test_migration_entry_carries_a_pfn():
    config = SwapConfig(True, True, True, True)
    entry = decode_arm64_descriptor(encode_arm64_swap_pte(30 - 4 - 1, 0x41234, (6, 12)), kernel=(6, 12),
                                    swap_config=config)
    assert entry.swap.kind.holds_pfn and entry.pfn == 0x41234


@settings(max_examples=300)
@given(swap_type=st.integers(0, 31), offset=st.integers(0, (1 << 50) - 1),
       kernel=st.sampled_from([(6, 1), (6, 12)]), exclusive=st.booleans())
def test_swap_round_trip(swap_type, offset, kernel, exclusive):
    try:
        value = encode_arm64_swap_pte(swap_type, offset, kernel, exclusive)
    except DecodeError:   # the one entry stored as 0, which no kernel makes
        assert (swap_type, offset, exclusive) == (0, 0, False)
        return
    entry = decode_arm64_descriptor(value, kernel=kernel, swap_config=SwapConfig(True, True, True, True))
    # neither layout lets the offset reach the PROT_NONE marker (bit 58 before 6.10, nG from 6.10)
    assert entry.kind is DescriptorKind.SWAP_FORMAT
    assert (entry.swap.swap_type, entry.swap.offset) == (swap_type, offset)
    assert ("SWP_EXCLUSIVE" in entry.flags.names) == exclusive


@settings(max_examples=500)
@given(value=st.integers(0, (1 << 64) - 1), level=st.sampled_from(["PGD", "PUD", "PMD", "PTE"]),
       kernel=st.sampled_from([None, (6, 1), (6, 12), (6, 18)]))
def test_any_word_decodes_and_a_pfn_only_where_linux_reads_one(value, level, kernel):
    entry = decode_arm64_descriptor(value, level, kernel=kernel)
    frame_kinds = (DescriptorKind.PAGE, DescriptorKind.BLOCK, DescriptorKind.TABLE, DescriptorKind.PROT_NONE)
    if entry.pfn is not None:
        assert entry.kind in frame_kinds or (entry.swap and entry.swap.kind.holds_pfn)
    if entry.kind in (DescriptorKind.PAGE, DescriptorKind.BLOCK):
        assert entry.valid and entry.output_address % entry.block_size == 0


@settings(max_examples=300)
@given(pfn=st.integers(0, (1 << 36) - 1), shared=st.booleans(), kernel=st.sampled_from([(6, 1), (6, 12)]))
def test_derived_pte_decodes_back(pfn, shared, kernel):
    vm_flags = VM_READ_WRITE_PRIVATE | (0x88 if shared else 0)
    entry = decode_arm64_descriptor(derive_arm64_anonymous_pte(pfn, vm_flags, kernel=kernel).value, kernel=kernel)
    assert entry.kind is DescriptorKind.PAGE and entry.pfn == pfn and entry.writable and entry.dirty
    assert entry.access_permissions == 0b01 and not entry.suspicions


@settings(max_examples=200)
@given(pfn=st.integers(0, (1 << 40) - 1), granule=st.sampled_from([4096, 65536]))
def test_52_bit_output_addresses_round_trip(pfn, granule):
    shift = 12 if granule == 4096 else 16
    pfn &= (1 << (52 - shift)) - 1
    value = derive_arm64_anonymous_pte(pfn, VM_READ_WRITE_PRIVATE, granule=granule, pa_bits=52).value
    va_bits = 52
    assert decode_arm64_descriptor(value, va_bits=va_bits, granule=granule, pa_bits=52).pfn == pfn


# --- ESR -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,ec,status,write,user,instruction,level", [
    (0x92000047, 0x24, 0x07, True, True, False, 3),     # user write, PTE missing
    (0x92000006, 0x24, 0x06, False, True, False, 2),    # user read, PMD missing
    (0x9200004F, 0x24, 0x0F, True, True, False, 3),     # user write to a read-only page: permission fault
    (0x96000045, 0x25, 0x05, True, False, False, 1),    # the kernel's own write, level 1 translation
    (0x82000007, 0x20, 0x07, False, True, True, 3),     # user instruction fetch
])
def test_esr_hand_checked(value, ec, status, write, user, instruction, level):
    syndrome = decode_esr(value)
    assert (syndrome.exception_class, syndrome.fault_status, syndrome.write, syndrome.from_user,
            syndrome.instruction_fetch, syndrome.fault_level) == (ec, status, write, user, instruction, level)
    assert syndrome.instruction_length_32 and syndrome.far_valid


def test_esr_kinds_and_cache_maintenance():
    assert decode_esr(0x9200004F).fault_status_kind is FaultStatusKind.PERMISSION
    assert decode_esr(0x9200000B).fault_status_kind is FaultStatusKind.ACCESS_FLAG
    cm = decode_esr(0x92000147)               # WnR and CM: a DC instruction, handled as a read
    assert cm.cache_maintenance and not cm.write
    svc = decode_esr(0x56000000)
    assert not svc.is_abort and "SVC" in svc.class_meaning


def test_esr_lpa2_level_minus_one():
    assert decode_esr(0x9200002B).fault_level == -1


def test_flags_and_esr_agree_both_ways():
    derived = derive_esr(write=True, instruction=False, user=True, fault_level=3)
    assert derived.value == 0x92000047
    assert fault_flags_from_esr(derived.syndrome) == ("USER", "WRITE")
    assert fault_flags_from_esr(decode_esr(0x82000007)) == ("USER", "INSTRUCTION")
    with pytest.raises(DecodeError):
        derive_esr(write=True, instruction=True, user=True, fault_level=3)


@settings(max_examples=300)
@given(ec=st.sampled_from([0x20, 0x21, 0x24, 0x25]), status=st.integers(0, 63), write=st.booleans(),
       cm=st.booleans(), s1ptw=st.booleans())
def test_esr_round_trip(ec, status, write, cm, s1ptw):
    write = write and ec in (0x24, 0x25)
    syndrome = decode_esr(encode_esr(ec, status, write, cache_maintenance=cm, stage1_walk=s1ptw))
    assert (syndrome.exception_class, syndrome.fault_status, syndrome.stage1_walk) == (ec, status, s1ptw)
    assert syndrome.write == (write and not cm) and syndrome.fault_status_meaning


@settings(max_examples=300)
@given(value=st.integers(0, (1 << 64) - 1))
def test_any_esr_word_decodes_or_is_refused(value):
    if value >> 56:
        with pytest.raises(DecodeError, match="RES0"):
            decode_esr(value)
    else:
        assert decode_esr(value).summary


# --- the other architecture's values -------------------------------------------------------------

def test_x86_values_given_to_arm64_decoders_are_doubted():
    x86_pte = decode_arm64_descriptor(0x8000000123456067)
    assert any("NX" in s for s in x86_pte.suspicions) and any("shareable" in s for s in x86_pte.suspicions)
    assert "x86 page-fault error code" in decode_esr(0x6).suspicions[0]


def test_arm64_values_given_to_x86_decoders_are_doubted():
    arm_pte = decode_pte(0x00E8000041234F43)
    assert any("arm64" in s for s in arm_pte.suspicions)
    assert not decode_pte(0x8000000123456067).suspicions
    assert any("arm64 ESR" in s for s in decode_error_code(0x92000047).impossible)
    assert not decode_error_code(0x6).impossible


def test_arm64_vm_flags_per_version():
    assert decode_vm_flags(1 << 24, (6, 1), Arch.ARM64).names == ["VM_ARM64_BTI"]
    assert decode_vm_flags(1 << 32, (6, 1), Arch.ARM64).names == ["VM_MTE"]
    assert decode_vm_flags(1 << 36, (6, 12), Arch.ARM64).names == ["VM_MTE"]
    assert decode_vm_flags(1 << 24, (6, 12), Arch.X86_64).names == ["VM_PAT"]


def test_arch_names():
    assert arch_of_machine("aarch64") is parse_arch("arm64") is Arch.ARM64
    assert parse_arch("amd64") is Arch.X86_64
    with pytest.raises(DecodeError, match="accepted: x86_64, arm64"):
        parse_arch("riscv64")


# --- the command line ----------------------------------------------------------------------------

def _decode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagefault", "decode", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_arm64_pte_json():
    done = _decode("pte", "0xe8000041234f43", "--arch", "arm64", "--kernel", "6.12", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["architecture"] == "arm64" and out["result"]["pfn"] == 0x41234 and out["result"]["kind"] == "page"


def test_cli_names_the_other_architectures_decoder():
    done = _decode("esr", "0x92000047", "--arch", "x86_64")
    assert done.returncode == 2 and "error-code" in done.stderr and "Traceback" not in done.stderr
    done = _decode("error-code", "0x6", "--arch", "arm64")
    assert done.returncode == 2 and "decode esr" in done.stderr
    done = _decode("pte", "0x1", "--arch", "mips")
    assert done.returncode == 2 and "accepted: x86_64, arm64" in done.stderr


def test_cli_prints_doubts_and_the_assumed_architecture():
    done = _decode("pte", "0xe8000041234f43", "--arch", "x86_64")
    assert done.returncode == 0 and "doubt:" in done.stdout and "decoded as x86_64" in done.stdout


def test_cli_says_which_walk_shape_it_assumed():
    done = _decode("address", "0xffffa1234567", "--arch", "arm64", "--json")
    out = json.loads(done.stdout)
    assert "--va-bits 48, --granule 4k, --pa-bits 48" in out["assumed"] and len(out["result"]["indices"]) == 4
    done = _decode("address", "0x7fff12345678", "--arch", "arm64", "--granule", "16k", "--va-bits", "47", "--json")
    out = json.loads(done.stdout)
    assert out["assumed"].startswith("assumed --pa-bits 48") and len(out["result"]["indices"]) == 3
    done = _decode("address", "0x7fff12345678", "--arch", "arm64", "--granule", "16k", "--va-bits", "47",
                   "--pa-bits", "48", "--json")
    assert json.loads(done.stdout)["assumed"] == ""


def test_cli_vm_flags_follow_the_architecture():
    arm = json.loads(_decode("vm-flags", "0x1000073", "--arch", "arm64", "--json").stdout)
    x86 = json.loads(_decode("vm-flags", "0x1000073", "--arch", "x86_64", "--json").stdout)
    assert any("VM_ARM64_BTI" in d for d in arm["result"]["derivations"])
    assert any("VM_PAT" in d for d in x86["result"]["derivations"])
