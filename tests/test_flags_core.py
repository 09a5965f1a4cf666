"""The flags word of struct page and struct folio is read through CO-RE (pagefault.bpf.h page_flags_word,
folio_flags_word): an unsigned long up to 6.17, a memdesc_flags_t (a struct holding `f`) from 6.18. The
relocation, not luck, chooses: libbpf's log must show exactly one of the two local flavours matching the
running kernel's struct, per object that reads it (issue 26; order_of_folio read offset 0 raw before)."""

import re

import pytest

pytestmark = pytest.mark.live

EXISTS = re.compile(r"relo #(\d+): <field_exists> \[\d+\] struct (folio|page)___flags_(long|memdesc)\.")
MATCHED = re.compile(r"relo #(\d+): matching candidate #\d+ <field_exists> \[\d+\] struct (folio|page)\.")


def flavours_matched(obj_name: str, programs: set[str]) -> dict[tuple[str, str], bool]:
    from pagefault.capture.bpf import object_path
    from pagefault.capture.libbpf import BpfObject
    obj = BpfObject(object_path(obj_name), keep_log=True)
    try:
        obj.load_only(programs)
        obj.load()
        log = list(obj.log)
    finally:
        obj.close()
    asked: dict[tuple[str, str, str], str] = {}
    seen: dict[tuple[str, str], bool] = {}
    prog = ""
    for line in log:
        m = re.search(r"prog '(\w+)': ", line)
        prog = m.group(1) if m else prog
        e = EXISTS.search(line)
        if e:
            asked[(prog, e.group(1), e.group(2))] = e.group(3)
            seen.setdefault((e.group(2), e.group(3)), False)
        c = MATCHED.search(line)
        if c:
            flavour = next((v for (p, relo, _s), v in asked.items() if p == prog and relo == c.group(1)), None)
            if flavour is not None:
                seen[(c.group(2), flavour)] = True
    return seen


@pytest.mark.parametrize("obj_name, programs, struct", [("fault_count", {"cache_btf"}, "folio"),
                                                         ("journey_walk", {"fault_btf", "syscall_btf"}, "page")])
def test_exactly_one_flags_flavour_is_chosen_by_the_relocation(can_trace, obj_name, programs, struct):
    from pagefault.capture.libbpf import LibbpfError
    try:
        seen = flavours_matched(obj_name, programs)
    except LibbpfError as exc:
        pytest.skip(f"{obj_name} does not load here: {exc}")
    assert (struct, "long") in seen and (struct, "memdesc") in seen, seen
    assert seen[(struct, "long")] != seen[(struct, "memdesc")], seen
