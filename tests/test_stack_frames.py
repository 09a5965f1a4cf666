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
