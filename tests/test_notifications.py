"""Notification ids and the body encoding (bridge/notifications.py)."""

from __future__ import annotations

import json
import random
import re

from hypothesis import given
from hypothesis import strategies as st

from bridge.notifications import dumps, new_notification_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode(notification_id: str) -> int:
    """The 128-bit ULID value of an id, decoded digit by digit (the slow, obvious way)."""
    value = 0
    for char in notification_id.removeprefix("ntf_"):
        value = value * 32 + CROCKFORD.index(char)
    return value


@given(st.integers(min_value=0, max_value=2**48 - 1))
def test_id_carries_its_millisecond_in_the_top_48_bits(ms: int) -> None:
    notification_id = new_notification_id((ms + 0.5) / 1000)
    assert re.fullmatch(r"ntf_[0-7][0-9A-HJKMNP-TV-Z]{25}", notification_id)
    assert decode(notification_id) >> 80 == ms


def test_ids_sort_by_time_and_do_not_repeat() -> None:
    ids = [new_notification_id(1_764_000_000 + i / 1000) for i in range(5000)]
    assert ids == sorted(ids)
    same_ms = {new_notification_id(1_764_000_000.5) for _ in range(5000)}
    assert len(same_ms) == 5000
    # The random part really varies in every digit, not only in the low ones.
    randoms = {decode(i) & (2**80 - 1) for i in same_ms}
    assert max(randoms) >= 2**79
    assert min(randoms) < 2**76


def test_dumps_is_compact_utf8_json_like_the_stdlib() -> None:
    value = {"ticket": "Zoë ✓", "n": [1, 2.5, None, True], "nested": {"a": "b\n"}}
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_dumps_falls_back_to_the_stdlib_for_what_orjson_refuses() -> None:
    assert dumps({1: "int key"}) == '{"1":"int key"}'
    assert dumps({"big": 2**70}) == '{"big":1180591620717411303424}'


def test_ids_stay_unique_when_someone_reseeds_the_random_module() -> None:
    random.seed(7)
    first = new_notification_id(1_764_000_000)
    random.seed(7)
    assert new_notification_id(1_764_000_000) != first
