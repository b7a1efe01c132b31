"""Webhook bodies (SPEC §6.1 `format`): the envelope, a CloudEvent, or a rendered template.

A body format turns one (possibly redacted) envelope into the bytes a webhook
target POSTs: the body, its content type and any extra headers (the CloudEvents
binary mode's `ce-*`). The webhook target stays a thin sender: it signs whatever
comes out with the Standard Webhooks headers and classifies the answer.

`render` raises `RenderError` when a notification cannot be turned into a body;
the target then reports a permanent failure, so the delivery goes dead at once
with the error as its `last_error` (a template bug does not heal by retrying).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bridge.settings import WebhookTarget


class RenderError(Exception):
    """A notification could not be turned into a body; the message is secret-free."""


@dataclass(frozen=True)
class Rendered:
    """What one delivery POSTs."""

    body: str
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


class BodyFormat(Protocol):
    def render(self, envelope: Mapping[str, Any], body: str) -> Rendered:
        """The request for one notification; `body` is the envelope's compact JSON."""
        ...


class StandardFormat:
    """The envelope as stored: no parsing, no re-encoding."""

    def render(self, envelope: Mapping[str, Any], body: str) -> Rendered:
        return Rendered(body, "application/json")


def body_format(cfg: WebhookTarget) -> BodyFormat:
    """The body format a webhook target is configured with."""
    if cfg.format == "cloudevents":
        from bridge.formats.cloudevents import CloudEventsFormat

        return CloudEventsFormat(mode=cfg.cloudevents_mode, type_prefix=cfg.cloudevents_type_prefix)
    if cfg.format == "template":
        from bridge.formats.template import TemplateFormat

        return TemplateFormat.from_target(cfg)
    return StandardFormat()
