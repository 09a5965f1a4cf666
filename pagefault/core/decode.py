"""`pagefault decode KIND VALUE`: one number of a fault's life decoded into named, explained fields.

Pure decoding (decode/) with the running kernel's tables where the kind needs them (kernel/facts.py); the
architecture's own formats (address, page-table entry, the trap's syndrome) come from its Arch interface.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable

from ..views.terminal import print_json
from .arguments import parse_number
from .errors import Outcome, UsageError
from .output import terminal_console

Decoded = tuple[str, list, list[str], Any]     # (title, rows of (field, value, meaning), derivations, result)


def _decode_kernel(requested: str | None):
    """The kernel whose tables decode a value: --kernel X.Y, or the running one (with its configuration).

    :raises UsageError: X.Y is not a kernel version.
    """
    from ..decode.swap_entry import SwapConfig
    from ..kernel.facts import kernel_version, parse_kernel_version, swap_config
    running = kernel_version()
    if requested is None:
        return running, swap_config()
    try:
        wanted = parse_kernel_version(requested)
    except ValueError:
        raise UsageError(f"--kernel {requested!r} is not a kernel version; fix: give it as MAJOR.MINOR, e.g. 6.12") from None
    if wanted == running:
        return wanted, swap_config()
    return wanted, SwapConfig(source=f"kernel {wanted[0]}.{wanted[1]} is not the running one, so its configuration "
                                     "is unknown")


# --- rows of each decoded record, chosen by the record's type (each architecture's decoder has its own) -----

def _address_rows(r, value: int, shape) -> Decoded:
    rows = [(i.level + " index", str(i.index), f"bits {i.high_bit}..{i.shift} = {i.bits}") for i in r.indices]
    rows += [("page offset", f"{r.page_offset} (0x{r.page_offset:x})", "bits 11..0"),
             ("virtual page number", f"0x{r.virtual_page_number:x}", ""),
             ("page base", f"0x{r.page_base:x}", ""), ("offset in 2 MiB page", f"0x{r.offset_in_2m:x}", ""),
             ("offset in 1 GiB page", f"0x{r.offset_in_1g:x}", ""), ("half", r.half, ""),
             ("bits", r.binary, "top index … offset")]
    return f"virtual address 0x{value:x} ({shape.paging_levels}-level paging)", rows, list(r.derivations), r


def _arm64_address_rows(r, value: int, shape) -> Decoded:
    rows = [(f"{i.level} index (level {i.architectural_level})", str(i.index), f"bits {i.high_bit}..{i.shift} = {i.bits}")
            for i in r.indices]
    rows += [("page offset", f"0x{r.page_offset:x}", ""), ("page base", f"0x{r.page_base:x}", ""),
             ("table base", r.table_base, f"the {r.half} half"), ("tag", f"0x{r.tag:x}", "bits 63..56 (TBI)")]
    return (f"arm64 virtual address 0x{value:x} ({shape.va_bits}-bit VA, {shape.granule // 1024} KiB pages, "
            f"{r.levels} levels)", rows, list(r.derivations), r)


def _error_code_rows(r, value: int, shape) -> Decoded:
    rows = [(m.split(":")[0], "", m.split(":", 1)[1].strip()) for m in r.bit_meanings]
    return r.summary, rows, list(r.derivations), r


def _esr_rows(r, value: int, shape) -> Decoded:
    rows = [("EC", f"0x{r.exception_class:02x}", r.class_meaning), ("IL", str(int(r.instruction_length_32)), ""),
            ("ISS", f"0x{r.iss:x}", "")]
    if r.is_abort:
        rows += [("fault status", f"0x{r.fault_status:02x}", r.fault_status_meaning),
                 ("access", "instruction fetch" if r.instruction_fetch else "write" if r.write else "read",
                  "WnR and not CM" if r.write else ""),
                 ("from", "user (EL0)" if r.from_user else "kernel (EL1)", ""),
                 ("S1PTW", "yes" if r.stage1_walk else "no", "fault on the table walk"),
                 ("FAR valid", "yes" if r.far_valid else "no", "")]
    return f"ESR_EL1 {r.summary}", rows, list(r.derivations), r


def _pte_rows(r, value: int, shape) -> Decoded:
    from ..views.decode_view import field_rows, flag_rows
    if r.swap is not None:
        swap = r.swap
        rows = flag_rows(r.flags) + [("kind", swap.kind.value, swap.summary),
                                     ("swap type", str(swap.swap_type), "bits 63..59"),
                                     ("offset", f"0x{swap.offset:x}", "bits 58..9, stored inverted")]
        if swap.pfn is not None:
            rows.append(("PFN", f"0x{swap.pfn:x}", "the offset of a migration, hwpoison or device entry"))
        if swap.marker is not None:
            rows += flag_rows(swap.marker)
        rows.append(("table", "", swap.table_source))
    else:
        rows = flag_rows(r.flags) + [("kind", r.kind.value, "")] + field_rows(
            r, ["pfn", "physical_address", "protection_key", "huge", "points_to"]) + [("table", "", r.table_source)]
    return f"{r.level} entry 0x{value:x}: {r.kind.value}", rows, list(r.derivations), r


def _descriptor_rows(r, value: int, shape) -> Decoded:
    from ..views.decode_view import field_rows, flag_rows
    rows = flag_rows(r.flags) + [("kind", r.kind.value, f"level {r.architectural_level}")]
    if r.swap is not None:
        rows += [("swap type", str(r.swap.swap_type), ""), ("offset", f"0x{r.swap.offset:x}", r.swap.summary)]
    else:
        rows += field_rows(r, ["output_address", "pfn", "memory_type", "access", "shareability", "block_size"])
    rows.append(("table", "", r.table_source))
    return f"arm64 {r.level} descriptor 0x{value:x}: {r.kind.value}", rows, list(r.derivations), r


def _rows_by_record() -> dict[type, Callable[[Any, int, Any], Decoded]]:
    from ..decode.address import AddressSplit
    from ..decode.arm64_address import Arm64AddressSplit
    from ..decode.arm64_descriptor import Arm64Descriptor
    from ..decode.error_code import ErrorCode
    from ..decode.esr import Syndrome
    from ..decode.pte import PageTableEntry
    return {AddressSplit: _address_rows, Arm64AddressSplit: _arm64_address_rows, ErrorCode: _error_code_rows,
            Syndrome: _esr_rows, PageTableEntry: _pte_rows, Arm64Descriptor: _descriptor_rows}


def _decode_own(kind: str, value: int, shape, level: str, kernel: str | None) -> Decoded:
    """address, pte and the trap's syndrome, with the architecture's own decoders."""
    if kind == "address":
        record = shape.decode_address(value)
    elif kind == "pte":
        version, config = _decode_kernel(kernel)
        record = shape.decode_entry(value, level, version, config)
    else:
        record = shape.decode_syndrome_fully(value)
    return _rows_by_record()[type(record)](record, value, shape)


def _decode_shared(kind: str, value: int, from_error_code: bool, kernel: str | None, shape) -> Decoded:
    """The kinds whose formats are the kernel's, whatever the architecture (vm_flags' arch bits aside)."""
    from ..decode import decode_fault_flags, decode_gfp, decode_kpageflags, decode_pagemap_entry, decode_vm_flags, derive_fault_flags
    from ..kernel.facts import fault_flag_values, gfp_bits, kernel_version
    from ..views.decode_view import field_rows, flag_rows
    if kind == "fault-flags":
        table = fault_flag_values()
        if from_error_code:
            ff = derive_fault_flags(value, table.values, source=table.source)
            rows = [(s.name, f"0x{s.value:x}", s.reason) for s in ff.steps]
            return (f"fault flags for error code 0x{value:x} = 0x{ff.value:x} ({table.source})", rows,
                    list(ff.derivations), ff)
        r = decode_fault_flags(value, table.values, table.source)
        return f"fault flags 0x{value:x} ({table.source})", flag_rows(r), list(r.derivations), r
    if kind == "vm-flags":
        vm = decode_vm_flags(value, kernel_version(), shape.arch)
        return f"vm_flags 0x{value:x} ({vm.table_source})", flag_rows(vm), list(vm.derivations), vm
    if kind == "pagemap":
        version, config = _decode_kernel(kernel)
        pm = decode_pagemap_entry(value, version, config)
        rows = flag_rows(pm.flags) + field_rows(pm, ["pfn", "swap_type", "swap_offset"])
        if pm.table_source:
            rows.append(("table", "", pm.table_source))
        return f"pagemap entry 0x{value:x}: {pm.summary}", rows, list(pm.derivations), pm
    if kind == "kpageflags":
        kp = decode_kpageflags(value, kernel_version())
        return f"kpageflags 0x{value:x}", flag_rows(kp), list(kp.derivations), kp
    if kind == "gfp":
        gfp_table = gfp_bits()
        g = decode_gfp(value, gfp_table.values, gfp_table.source)
        return f"GFP flags 0x{value:x} = {g.symbolic} ({gfp_table.source})", flag_rows(g.flags), list(g.derivations), g
    raise UsageError(f"unknown kind {kind!r}")


def _syndrome_kinds() -> dict[str, Any]:
    """Each architecture's syndrome kind → its interface: the kind is that architecture's alone."""
    from ..decode.arch import Arch
    from ..decode.arch_interface import arch_interface
    return {a.syndrome_kind: a for a in (arch_interface(arch) for arch in Arch)}


def _machine_shape(arch) -> tuple[int, str, int, str] | None:
    """(VA bits, granule, PA bits, how known) of this machine's own walk if it is ``arch``'s and its shape is
    more than its depth; None otherwise."""
    from ..decode.arch import arch_of_machine
    from ..decode.bits import DecodeError
    try:
        here = arch_of_machine(os.uname().machine)
    except DecodeError:
        return None
    if here is not arch:
        return None
    from ..decode.arm64_address import lpa2_in_use
    from ..kernel.facts import arm64_translation
    va_bits, page_size, how = arm64_translation()
    return va_bits, f"{page_size // 1024}k", 52 if lpa2_in_use(va_bits, page_size) else 48, how


def _fill_shape(args: argparse.Namespace, arch) -> str:
    """Fill --va-bits, --granule and --pa-bits left out: this machine's own where it is of ``arch`` (a 16 KiB or
    52-bit kernel decodes as itself), else Linux's most common shape (48-bit, 4 KiB). → what was assumed ("" if
    nothing was)."""
    given = {"va_bits": args.va_bits, "granule": args.granule, "pa_bits": args.pa_bits}
    if all(v is not None for v in given.values()):
        return ""
    own_shape = _machine_shape(arch)
    if own_shape is not None:
        va_bits, granule, pa_bits, how = own_shape
        own: dict[str, Any] = {"va_bits": va_bits, "granule": granule, "pa_bits": pa_bits}
        whence = f"this machine's ({how})"
    else:
        own = {"va_bits": 48, "granule": "4k", "pa_bits": 48}
        whence = f"Linux's most common {arch.value} shape"
    filled = [f"--{name.replace('_', '-')} {own[name]}" for name, value in given.items() if value is None]
    for name, value in given.items():
        if value is None:
            setattr(args, name, own[name])
    return f"assumed {', '.join(filled)}: {whence}"


def decode_for(args: argparse.Namespace, value: int) -> tuple[str, str, Decoded]:
    """→ (the architecture decoded as, what its shape assumed, (title, rows, derivations, result)).

    :raises UsageError: --arch is unknown, or the kind is another architecture's (the message names its own).
    :raises DecodeError: the value is not one of its kind (too wide, non-canonical, reserved).
    """
    from ..decode.arch import arch_of_machine, parse_arch
    from ..decode.arch_interface import arch_interface
    from ..decode.bits import DecodeError
    try:
        arch = parse_arch(args.arch) if args.arch else arch_of_machine(os.uname().machine)
    except DecodeError as exc:
        raise UsageError(f"{exc}; fix: --arch x86_64 or --arch arm64") from None
    owner = _syndrome_kinds().get(args.kind)
    if owner is not None and owner.arch is not arch:
        raise UsageError(f"{args.kind} is {owner.arch.value}'s, and the architecture is {arch.value}; "
                         f"{arch_interface(arch).syndrome_decode_hint}")
    usual = arch_interface(arch)
    if args.kind == "fault-flags" and args.from_error_code and usual.syndrome_kind != "error-code":
        raise UsageError(f"--from-error-code takes an x86 error code; on {arch.value}, decode the "
                         f"{usual.syndrome_noun} (decode {usual.syndrome_kind} VALUE) and read the flags it gives")
    own_format = args.kind in ("address", "pte") or args.kind == usual.syndrome_kind
    assumed = _fill_shape(args, arch) if own_format and usual.shape_beyond_levels else ""
    granule = {"4k": 4096, "16k": 16384, "64k": 65536}[args.granule or "4k"]
    shape = arch_interface(arch, args.levels, va_bits=args.va_bits or 48, granule=granule, pa_bits=args.pa_bits or 48)
    if own_format:
        return arch.value, assumed, _decode_own(args.kind, value, shape, args.level, args.kernel)
    return arch.value, assumed, _decode_shared(args.kind, value, args.from_error_code, args.kernel, shape)


def run(args: argparse.Namespace) -> Outcome:
    """`pagefault decode`: prints the table (or JSON with --json) on standard output.

    Takes the parsed arguments (kind, value, levels, level, from_error_code, kernel, arch, va_bits, granule,
    pa_bits, json). Needs no root: the running kernel's tables are read from files any user may read.

    :raises UsageError: the value is not a number of its kind, or the options do not fit it.
    """
    from ..decode import DecodeError, to_jsonable
    value = parse_number(args.value, args.kind)
    try:
        arch, assumed, (title, rows, derivations, result) = decode_for(args, value)
    except DecodeError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(json.dumps({"kind": args.kind, "value": value, "provenance": "derived", "title": title,
                               "architecture": arch, "assumed": assumed, "result": to_jsonable(result)}, indent=2))
        return Outcome.DONE
    _print_decoded(title, rows, derivations, result, arch, assumed, args.arch is not None)
    return Outcome.DONE


def _print_decoded(title: str, rows: list, derivations: list[str], result, arch: str, assumed: str,
                   arch_given: bool) -> None:
    from rich.table import Table
    doubts = list(getattr(result, "suspicions", ()) or ()) + list(getattr(result, "impossible", ()) or ())
    console = terminal_console()
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("field")
    table.add_column("value")
    table.add_column("meaning")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if derivations:
        console.print("[bold]derivation[/bold]")
        for line in derivations:
            console.print("  " + line, highlight=False, markup=False)
    console.print(f"decoded as {arch}" + ("" if arch_given else " (this machine's architecture; --arch to choose)"),
                  highlight=False, markup=False)
    if assumed:
        console.print(assumed, highlight=False, markup=False)
    for line in doubts:
        console.print("[bold yellow]doubt:[/bold yellow] " + line, highlight=False)
