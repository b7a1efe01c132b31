"""The fast path of `loads_clean`: orjson parses, and containers whose JSON is short
and shallow are not walked; it returns exactly what the walk would have
(bridge/vendor_text.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.vendor_text import MAX_DEPTH, MAX_STRING_CHARS, _bound, loads_clean


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def reference(text: str) -> Any:
    """What loads_clean returned before the fast path: the stdlib, then the walk."""
    return _bound(json.loads(text), 0)


@pytest.mark.parametrize(
    "value",
    [
        {"s": "x" * MAX_STRING_CHARS},
        {"a": [{"s": "x" * (MAX_STRING_CHARS + 1)}]},
        {"a": [{"x" * (MAX_STRING_CHARS + 1): 1}]},
        {"a": nested(MAX_DEPTH - 1)},
        {"a": nested(MAX_DEPTH)},
        {"a": [nested(MAX_DEPTH + 1)]},
        {"a": [{"big": 2**70, "s": "y" * (MAX_STRING_CHARS + 1)}]},
        {"a": [{"s": "{[" * 20}]},
    ],
)
def test_cut_exactly_where_the_walk_cuts(value: Any) -> None:
    text = json.dumps(value)
    assert loads_clean(text) == reference(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab"\\é✓ '), max_size=12)
    | st.sampled_from(["x" * MAX_STRING_CHARS, "y" * (MAX_STRING_CHARS + 3)]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet="ab\"'", max_size=4), children, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=MAX_DEPTH + 3))
def test_loads_clean_returns_what_the_walk_returns(value: Any, depth: int) -> None:
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    text = json.dumps(value, ensure_ascii=False)
    assert loads_clean(text) == reference(text)
    assert loads_clean(text.encode()) == reference(text)
