"""Flame-graph stacks keep only the program's frames: a frame-pointer walk that left the code ends the stack,
and the tracer's own frames at the kernel leaf are dropped (issue 29: ~10,900 one-sample stacks through data
addresses, and identical stacks split by __traceiter_page_fault_user)."""

from pagefault.capture.records import Mapping
from pagefault.journey.fault_stacks import TRUNCATED, Symbolizer
from pagefault.kernel.kallsyms import KernelSymbols

CODE = Mapping(0x400000, 0x401000, 0, "", prot=5)             # r-x, anonymous (JIT-like): named without ELF reads
DATA = Mapping(0x600000, 0x700000, 0, "[heap]", prot=3)       # rw-: a return address never points here
KSYMS = KernelSymbols([(0xffffffff81000000, "_text"), (0xffffffff81100000, "__traceiter_page_fault_user"),
                       (0xffffffff81200000, "exc_page_fault"), (0xffffffff81300000, "asm_exc_page_fault")])


def test_a_user_walk_through_data_ends_at_the_first_address_outside_code():
    sym = Symbolizer([CODE, DATA], KSYMS)
    leaf_first = [0x400010, 0x400020, 0x612345, 0x400030]      # the third "frame" is a heap address
    assert sym.user_frames(leaf_first) == [TRUNCATED, "[anon]+0x20", "[anon]+0x10"]
    assert sym.user_frames([0x400010, 0x400020]) == ["[anon]+0x20", "[anon]+0x10"]
    assert sym.user_frames([0x612345]) == [TRUNCATED]


def test_the_tracers_own_frames_at_the_kernel_leaf_are_dropped():
    sym = Symbolizer([CODE], KSYMS)
    with_tracer = [0xffffffff81100010, 0xffffffff81200010, 0xffffffff81300010]
    without = [0xffffffff81200010, 0xffffffff81300010]
    assert sym.kernel_frames(with_tracer) == sym.kernel_frames(without) == ["asm_exc_page_fault_[k]",
                                                                            "exc_page_fault_[k]"]


# --- call sites of faults counted with their stacks (trace -g without -o) --------------------------------------

def test_counted_site_keys_find_the_faulting_instruction_by_mode_and_name_it_as_a_recording_does():
    """A user-mode fault's site is its user stack's leaf; a kernel-mode fault's is the frame the exception
    interrupted (rootward of its entry in its kernel stack); a stack not read, no entry in it, or no kernel symbols
    say so; rows come back in the summary's shape (error code ... vma key, faults, tgid)."""
    from pagefault.journey.fault_stacks import KERNEL_SITE, NO_SITE, USER_SITE, Symbolizer, counted_site_keys
    ksyms = KernelSymbols([(0xffffffff81000000, "_text"), (0xffffffff81100000, "_copy_to_user"),
                           (0xffffffff81200000, "exc_page_fault"), (0xffffffff81300000, "asm_exc_page_fault"),
                           (0xffffffff81380000, "asm_fred_entrypoint_kernel"), (0xffffffff81400000, "ksys_read")])
    user_fault, kernel_fault = 6, 2            # X86_PF_USER | X86_PF_WRITE; a kernel-mode write
    stacks = {1: [0x400010, 0x400800],
              2: [0xffffffff81200040, 0xffffffff81300011, 0xffffffff81100028, 0xffffffff81400100],
              3: [0xffffffff81200040, 0xffffffff81400100],       # no entry frame: the interrupted one unknown
              4: [0xffffffff81380005, 0xffffffff81100030]}       # FRED's entry
    rows = [(user_fault, 1, 0, 0, 0, 0, 0x600000 << 3, 5, 1, 9, 77),
            (kernel_fault, 1, 0, 0, 0, 0, 0x600000 << 3, 2, 1, 2, 77),
            (kernel_fault, 0, 0, 0, 0, 0, 0, 1, 1, 3, 78),
            (user_fault, 0, 0, 0, 0, 0, 0, 3, -14, 9, 78),
            (kernel_fault, 0, 0, 0, 0, 0, 0, 1, 1, -17, 78),
            (kernel_fault, 0, 0, 0, 0, 0, 0, 4, 1, 4, 79)]
    keyed = counted_site_keys(rows, stacks, ksyms)
    assert [row for row, _key in keyed] == [r[:8] + (r[10],) for r in rows]
    keys = [key for _row, key in keyed]
    assert keys == [(USER_SITE, 0x400010), (KERNEL_SITE, 0xffffffff81100028),
                    (NO_SITE, "(in the kernel: the interrupted instruction is not in its stack)"),
                    (NO_SITE, "(no user stack read)"), (NO_SITE, "(no kernel stack read)"),
                    (KERNEL_SITE, 0xffffffff81100030)]
    names = [Symbolizer([CODE, DATA], ksyms).site_name(k) for k in keys]
    assert names == ["0x400010",                         # no file behind the code mapping: its address
                     "kernel: _copy_to_user+0x28", keys[2][1], keys[3][1], keys[4][1], "kernel: _copy_to_user+0x30"]
    # without kernel symbols the entry cannot be found: the key says so, not that the stack lacks it
    (_row, key), = counted_site_keys(rows[1:2], stacks, None)
    assert key == (NO_SITE, "(in the kernel: no kernel symbols to find the instruction by)")
