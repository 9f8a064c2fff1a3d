"""Request checking: every refusal is an HTTP status and a JSON error naming the field.

    {"error": "instances[2].input_mask[7]: expected 0 or 1, got 3"}

Field paths are written as a client would index the JSON body.
"""

import json
from typing import Any, Callable, List, Sequence


class InputError(Exception):
    """A request the server refuses: status (4xx/5xx) and `field: what was expected`."""

    def __init__(self, field: str, message: str, status: int = 400, headers=None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": str(self)}


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; InputError('body', ...) when it is not."""
    if not raw:
        raise InputError("body", "empty; expected a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise InputError("body", "not UTF-8; expected a JSON object") from None
    except json.JSONDecodeError as e:
        raise InputError("body", f"malformed JSON at line {e.lineno} column {e.colno} "
                         f"({e.msg})") from None
    except ValueError as e:  # an integer literal past Python's int-parsing digit limit
        raise InputError("body", f"number too long for the JSON parser ({e}); expected "
                         "int32 token ids") from None
    except RecursionError:
        raise InputError("body", "nested too deeply for the JSON parser; expected a JSON "
                         "object of arrays") from None


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def require_object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(field, f"expected a JSON object, got {type_name(value)}")
    return value


def refuse_unknown_keys(doc: dict, known: Sequence[str], field: str) -> None:
    unknown = sorted(set(doc) - set(known))
    if unknown:
        where = f"{field}.{unknown[0]}" if field else unknown[0]
        raise InputError(where, f"unknown field; expected only {', '.join(known)}")


def instance_list(value: Any, field: str, max_instances: int) -> list:
    """A non-empty JSON array of at most `max_instances` items."""
    if not isinstance(value, list):
        raise InputError(field, f"expected a JSON array, got {type_name(value)}")
    if not value:
        raise InputError(field, "empty; expected at least one instance")
    if len(value) > max_instances:
        raise InputError(field, f"{len(value)} instances; expected at most {max_instances} "
                         "per request (--max_instances)")
    return value


def instances_or_one(doc: Any, max_instances: int, parse_one: Callable[[dict, str], Any]):
    """A body that is one instance, or {"instances": [...]} of at most `max_instances`:
    parse_one(object, field) of each ("" or "instances[i]"), in order."""
    doc = require_object(doc, "body")
    if "instances" in doc:
        refuse_unknown_keys(doc, ("instances",), "")
        items = instance_list(doc["instances"], "instances", max_instances)
        return [parse_one(require_object(item, f"instances[{i}]"), f"instances[{i}]")
                for i, item in enumerate(items)]
    return [parse_one(doc, "")]


INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def int_list(value: Any, field: str, max_len: int) -> List[int]:
    """A non-empty JSON array of at most `max_len` int32 integers (booleans refused)."""
    if not isinstance(value, list):
        raise InputError(field, f"expected a JSON array of integers, got {type_name(value)}")
    if not value:
        raise InputError(field, "empty; expected at least one token")
    if len(value) > max_len:
        raise InputError(field, f"{len(value)} tokens; expected at most {max_len} (the "
                         "longest sequence bucket)")
    for i, v in enumerate(value):
        if type(v) is not int:
            raise InputError(f"{field}[{i}]", f"expected an integer, got {type_name(v)}")
        if not INT32_MIN <= v <= INT32_MAX:
            shown = str(v) if v.bit_length() < 128 else f"of {v.bit_length()} bits"
            raise InputError(f"{field}[{i}]", f"integer {shown} outside int32; expected "
                             f"[{INT32_MIN}, {INT32_MAX}]")
    return value


def text_field(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(field, f"expected a string, got {type_name(value)}")
    if not value.strip():
        raise InputError(field, "empty; expected text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800"
        raise InputError(field, f"unpaired surrogate U+{ord(value[e.start]):04X} at "
                         f"character {e.start}; expected valid Unicode text") from None
    return value
