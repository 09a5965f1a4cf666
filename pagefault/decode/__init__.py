"""Pure decoders: integers in, named fields and derivation lines out. Nothing here touches the machine."""

from .address import AddressSplit, NonCanonicalAddress, check_canonical, join_virtual_address, split_virtual_address
from .bits import DecodeError, FlagWord, to_jsonable
from .error_code import ErrorCode, decode_error_code
from .fault_flags import decode_fault_flags, derive_fault_flags, fallback_fault_flag_values
from .gfp import decode_gfp
from .pagemap import decode_kpageflags, decode_pagemap_entry
from .pte import decode_pte, derive_anonymous_pte, encode_pte
from .vm_flags import decode_vm_flags

__all__ = [
    "AddressSplit", "NonCanonicalAddress", "check_canonical", "join_virtual_address", "split_virtual_address",
    "DecodeError", "FlagWord", "to_jsonable", "ErrorCode", "decode_error_code", "decode_fault_flags",
    "derive_fault_flags", "fallback_fault_flag_values", "decode_gfp", "decode_kpageflags",
    "decode_pagemap_entry", "decode_pte", "derive_anonymous_pte", "encode_pte", "decode_vm_flags",
]
