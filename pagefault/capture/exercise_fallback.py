"""The exercise program in pure Python (ctypes), for machines without a C compiler.

Same arguments and phase protocol as c/exercise.c; the faulting write is ctypes.memmove,
so the faulting instruction is in the C library, not in a binary of ours.
"""

import ctypes
import ctypes.util
import os
import sys

PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS = 1, 2, 2, 0x20


def main() -> int:
    """The exercise program in Python (argv: control fd, status fd, offset, size[, text]): maps, touches and reports

    each phase on the status fd, and waits for "g" on the control fd before the next.
    :returns: its exit status: 0 when every phase ran, 1 when the mmap failed (said on the status fd); it exits 4
        at once when the control fd says anything but "g"."""
    ctl_fd, status_fd, offset, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3], 0), int(sys.argv[4], 0)
    text = (sys.argv[5] if len(sys.argv) > 5 else "offset world").encode()

    def phase(line: str) -> None:
        os.write(status_fd, line.encode())
        if os.read(ctl_fd, 1) != b"g":
            os._exit(4)

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    phase(f"ready pid={os.getpid()}\n")
    vaddr = libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if vaddr in (None, ctypes.c_void_p(-1).value):
        phase("error mmap failed\n")
        return 1
    phase(f"mapped vaddr=0x{vaddr:x} size=0x{size:x}\n")
    ctypes.memmove(vaddr + offset, text + b"\0", len(text) + 1)
    back = ctypes.string_at(vaddr + offset).decode(errors="replace")[:400]
    phase(f"touched readback={back}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
