"""CloudEvents 1.0 over HTTP (SPEC §6.1 `format: cloudevents`). Pure: no I/O.

Structured mode sends the whole event as `application/cloudevents+json`; binary
mode sends `data` as the body and the attributes as `ce-*` headers. Either way a
receiver using the CloudEvents SDK's `from_http(headers, body)` gets the same
event: `id` = the notification id (stable across retries, so receivers can
de-duplicate), `source` = the vendor portal, `type` = prefix + notification type,
`subject` = the ticket or clip task the notification is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from bridge.formats import Rendered, RenderError
from bridge.notifications import dumps

SPEC_VERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
# HTTP binding §3.1.3.2: header values percent-encode space, '"', '%' and anything
# outside printable ASCII; everything else printable stays as is.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def subject(envelope: Mapping[str, Any]) -> str | None:
    """The ticket of an event (or of a clip's resulting event), else the clip task id."""
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        return None
    for key in ("ticket", "task_id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def attributes(envelope: Mapping[str, Any], type_prefix: str) -> dict[str, str]:
    """The context attributes, without `data`; optional ones only when known."""
    try:
        attrs = {
            "specversion": SPEC_VERSION,
            "id": str(envelope["id"]),
            "source": str(envelope["source"]["base_url"]),
            "type": f"{type_prefix}{envelope['type']}",
            "time": str(envelope["created_at"]),
        }
    except (KeyError, TypeError) as err:
        raise RenderError(f"cloudevents: envelope lacks {err}") from None
    subj = subject(envelope)
    if subj is not None:
        attrs["subject"] = subj
    return attrs


def header_value(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE)


class CloudEventsFormat:
    def __init__(self, *, mode: Literal["structured", "binary"], type_prefix: str) -> None:
        self._mode = mode
        self._prefix = type_prefix

    def render(self, envelope: Mapping[str, Any], body: str) -> Rendered:
        attrs = attributes(envelope, self._prefix)
        data = envelope.get("data")
        if self._mode == "binary":
            headers = tuple((f"ce-{k}", header_value(v)) for k, v in attrs.items())
            return Rendered(dumps(data), DATA_CONTENT_TYPE, headers)
        event = {**attrs, "datacontenttype": DATA_CONTENT_TYPE, "data": data}
        return Rendered(dumps(event), STRUCTURED_CONTENT_TYPE)
