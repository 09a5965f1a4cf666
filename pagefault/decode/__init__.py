"""Pure decoders: integers in, named fields and derivation lines out. Nothing here touches the machine.

The names below are imported at their first use (module __getattr__): a command that needs one decoder
(decode.arch, decode.gfp) does not pay for every table of the others at its start."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .address import AddressSplit, NonCanonicalAddress, check_canonical, join_virtual_address, split_virtual_address
    from .bits import DecodeError, FlagWord, to_jsonable
    from .error_code import ErrorCode, decode_error_code
    from .fault_flags import decode_fault_flags, derive_fault_flags, fallback_fault_flag_values
    from .gfp import decode_gfp
    from .pagemap import decode_kpageflags, decode_pagemap_entry
    from .pte import decode_pte, derive_anonymous_pte, encode_pte
    from .vm_flags import decode_vm_flags

# each name → the module of this package that defines it
_HOMES = {
    "address": ("AddressSplit", "NonCanonicalAddress", "check_canonical", "join_virtual_address",
                "split_virtual_address"),
    "bits": ("DecodeError", "FlagWord", "to_jsonable"),
    "error_code": ("ErrorCode", "decode_error_code"),
    "fault_flags": ("decode_fault_flags", "derive_fault_flags", "fallback_fault_flag_values"),
    "gfp": ("decode_gfp",),
    "pagemap": ("decode_kpageflags", "decode_pagemap_entry"),
    "pte": ("decode_pte", "derive_anonymous_pte", "encode_pte"),
    "vm_flags": ("decode_vm_flags",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> object:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "AddressSplit", "NonCanonicalAddress", "check_canonical", "join_virtual_address", "split_virtual_address",
    "DecodeError", "FlagWord", "to_jsonable", "ErrorCode", "decode_error_code", "decode_fault_flags",
    "derive_fault_flags", "fallback_fault_flag_values", "decode_gfp", "decode_kpageflags",
    "decode_pagemap_entry", "decode_pte", "derive_anonymous_pte", "encode_pte", "decode_vm_flags",
]
