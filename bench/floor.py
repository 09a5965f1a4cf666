#!/usr/bin/env python3
"""The floor under pagefault's in-kernel counts: run a command with bench/c/floor.bpf.o's programs attached
(empty ones on the counter's two busiest hooks, or a user-stack read at each fault) and nothing else, in a Python
process that loads them through pagefault's own libbpf binding, as pagefault does. What this costs over the
untraced command is what any Python tool on these hooks pays, before doing any work of its own.

    python3 bench/floor.py OBJECT {empty|stack} -- CMD ARGS...

Used by bench/summary_only.py and bench/flame.py (which build OBJECT); needs root.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pagefault.capture.libbpf import BpfObject  # noqa: E402
from pagefault.capture.runner import spawn_held  # noqa: E402

PROGRAMS = {"empty": ("empty_fault", "empty_alloc"), "stack": ("stack_fault",)}


def main() -> int:
    obj_path, what, dashes, *argv = sys.argv[1:]
    if dashes != "--" or what not in PROGRAMS or not argv:
        sys.exit(__doc__.strip().splitlines()[-3])
    target = spawn_held(argv)
    with BpfObject(Path(obj_path)) as obj:
        for name in obj.programs():
            obj.set_autoload(name, name in PROGRAMS[what])
        obj.set_rodata(target.pid.to_bytes(4, "little"))
        obj.load()
        for name in PROGRAMS[what]:
            obj.attach(name)
        target.release()
        target.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
