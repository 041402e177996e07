"""An Observation's result, which may be any JSON value, split into typed columns and joined again.

Numbers and strings get columns of their own so that `$filter=result gt 5` and
`result eq 'charging'` compare natively and use indexes; everything else is kept as JSON.
"""

from __future__ import annotations

from typing import Any

INT, FLOAT, STRING, BOOL, JSON = 1, 2, 3, 4, 5
_MAX_EXACT_INT = 2**53


def encode_result(value: Any) -> tuple[int, float | None, str | None, Any]:
    """(result_type, result_number, result_string, result_json) for a result value."""
    if isinstance(value, bool):
        return BOOL, float(value), None, None
    if isinstance(value, int) and -_MAX_EXACT_INT < value < _MAX_EXACT_INT:
        return INT, float(value), None, None
    if isinstance(value, float):
        return FLOAT, value, None, None
    if isinstance(value, str):
        return STRING, None, value, None
    return JSON, None, None, value


def decode_result(kind: int, number: float | None, string: str | None, json: Any) -> Any:
    """The result value from its typed columns."""
    if kind == INT:
        return int(number)  # type: ignore[arg-type]
    if kind == FLOAT:
        return number
    if kind == STRING:
        return string
    if kind == BOOL:
        return bool(number)
    return json
