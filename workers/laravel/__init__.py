"""Laravel queue wire format, pure (no I/O): PHP serialize, PHP json_encode, payload decode/build.

Runtime entry points:

* :func:`decode_payload` (body, headers, app_key=...) -> :class:`DecodedJob`
* :func:`build_payload` (class, data, queue=...) -> :class:`OutgoingMessage`
* :func:`build_chain_payload` ([(class, data), ...], queue=...) -> :class:`OutgoingMessage`
* :func:`next_chain_message` (decoded_job) -> :class:`OutgoingMessage` | None
* :func:`queue_key` (class, data) -> md5 hex
"""

from .crypto import DecryptError, MissingAppKeyError, parse_app_key
from .payload import (
    DEFAULT_PROFILE,
    PROFILES,
    ChainedJob,
    DecodedJob,
    JobClass,
    OutgoingMessage,
    message_properties,
    PayloadError,
    Profile,
    attempts_from_headers,
    build_chain_payload,
    build_payload,
    decode_payload,
    describe,
    infer_profile,
    make_command,
    message_from_payload,
    next_chain_message,
    normalize_command,
    payload_for_command,
    to_jsonable,
)
from .errors import WireFormatError
from .php_json import PhpJsonError, php_array_union, php_json_encode, queue_key, queue_key_json
from .php_serialize import (
    PhpEnum, PhpObject, PhpRef, PhpSerializeError, dumps, format_php_float, loads,
)

__all__ = [
    "WireFormatError",
    "DecryptError", "MissingAppKeyError", "parse_app_key",
    "DEFAULT_PROFILE", "PROFILES", "ChainedJob", "DecodedJob", "JobClass", "OutgoingMessage", "PayloadError",
    "Profile", "attempts_from_headers", "build_chain_payload", "build_payload", "decode_payload", "describe",
    "infer_profile", "make_command", "message_from_payload", "message_properties", "next_chain_message", "normalize_command",
    "payload_for_command", "to_jsonable",
    "PhpJsonError", "php_array_union", "php_json_encode", "queue_key", "queue_key_json",
    "PhpEnum", "PhpObject", "PhpRef", "PhpSerializeError", "dumps", "format_php_float", "loads",
]
