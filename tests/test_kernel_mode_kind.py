"""`journey --kind kernel` (a fault taken in kernel mode): refused in one line where the kernel cannot pick such
a fault (arm64: no exceptions: tracepoints), allowed on x86-64; its journey's mode and system call values come
from the evidence (issue 26, item 1). No machine needed."""

import pytest

from pagefault.core.journey_command import kernel_mode_refusal
from pagefault.decode.arch import Arch
from pagefault.decode.arch_interface import arch_interface
from pagefault.journey.program_journey import syscall_of_chain
from pagefault.journey.vocabulary import FaultKind


def test_kernel_is_a_kind_the_cli_offers_and_the_walk_knows():
    from pagefault.capture.bpf_walk import KINDS
    assert FaultKind.KERNEL.value in KINDS and KINDS.index("kernel") == 9    # enum walk_kind's WK_KERNEL


def test_arm64_refuses_kind_kernel_in_one_line_saying_why():
    why = kernel_mode_refusal(arch_interface(Arch.ARM64), "kind", "kernel")
    assert why is not None and "\n" not in why
    assert "page_fault_kernel" in why and "arm64" in why


@pytest.mark.parametrize("selector, value", [("kind", "anon"), ("nth", 3), ("own", None)])
def test_arm64_leaves_the_other_selectors_to_their_own_refusal(selector, value):
    assert kernel_mode_refusal(arch_interface(Arch.ARM64), selector, value) is None


def test_x86_allows_kind_kernel():
    assert kernel_mode_refusal(arch_interface(Arch.X86_64), "kind", "kernel") is None


def test_the_system_call_is_the_outermost_sys_frame_of_the_chain():
    chain = [(1, "rep_movs_alternative+0x33"), (2, "_copy_to_iter+0x9a"), (3, "filemap_read+0x2c0"),
             (4, "vfs_read+0x250"), (5, "ksys_read+0x6f"), (6, "__x64_sys_read+0x19"), (7, "do_syscall_64+0x82")]
    assert syscall_of_chain(chain) == "read"
    assert syscall_of_chain([(1, "__arm64_sys_pread64+0x10"), (2, "invoke_syscall+0x50")]) == "pread64"
    assert syscall_of_chain([(1, "vfs_readv+0x1"), (2, "do_readv+0x8"), (3, "do_syscall_64+0x71")]) == "readv"
    assert syscall_of_chain([(1, "filemap_read+0x2c0"), (2, "0xffffffff81000000")]) is None
    assert syscall_of_chain([(1, "do_fault+0x10"), (2, "handle_mm_fault+0x8")]) is None   # no dispatcher


def test_a_saved_kernel_mode_capture_says_kernel_mode_and_the_system_call():
    """The journey of a saved --kind kernel capture (read_syscall.c: read() into a fresh buffer) says the mode and
    the system call as observed, each with its source; replayed, no machine needed."""
    from pathlib import Path

    from pagefault.core.journey import replay
    found = sorted(Path(__file__).parent.glob("fixtures/evidence/*/program-kernel.json.gz"))
    assert found, "no saved --kind kernel capture"
    values = {v.label: v for s in replay(found[0]).steps for v in s.values}
    assert values["taken in"].value.startswith("kernel mode") and "page_fault_kernel" in values["taken in"].source
    assert values["system call"].value == "read (number 0)" and values["system call"].provenance == "observed"
    assert values["where"].value.startswith("in the kernel: _copy_to_iter")
    assert values["kind checked afterwards"].value is True
