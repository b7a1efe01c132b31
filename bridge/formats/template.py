"""Template bodies (SPEC §6.1 `format: template`): Jinja2 in a sandbox. Pure: no I/O
except reading a `template_file` or a shipped preset once, when the target is built.

Templates see `notification` (the envelope, redacted for the target), `data`,
`type`, `vars` (the target's `vars`: secrets, so they are never logged or shown),
`target` (its name) and the filters `tojson`, `local_time(tz)`, `map_link`, and for
vendor text in a receiver's markdown `md_escape(limit)`, `discord_escape(limit)` and
`discord_link(label)` (`bridge.markup`).

The environment is Jinja2's immutable sandbox: a template cannot reach Python
internals, call unsafe methods or mutate the notification, and `range` is capped.
Undefined names are errors (`StrictUndefined`) so a typo fails `fleet-bridge check`
instead of sending an empty field; a key that may be absent is read with
`data.get("key")` or `| default(none)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import tzinfo
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.display import coordinates
from bridge.display import local_time as _local_time
from bridge.formats import Rendered, RenderError
from bridge.markup import discord_link, escape_discord, escape_markdown, fit_escaped
from bridge.notifications import dumps

if TYPE_CHECKING:
    from bridge.settings import WebhookTarget

MAX_BODY_CHARS: Final = 1 << 20  # a runaway loop must not build a huge request
ERROR_CHARS: Final = 300


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON for any value, UTF-8 kept; safe to place anywhere a JSON value goes."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # names what is missing, unlike json's TypeError
    if indent is None:
        return dumps(value)
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _zone(tz: str) -> tzinfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"local_time: unknown time zone {tz!r}") from None


def _local_time_filter(value: Any, tz: str = "UTC") -> Any:
    """An RFC 3339 instant in `tz` (`2026-11-24 07:00:10 CET`); other values unchanged."""
    return _local_time(value, _zone(tz)) or value


def _map_link(location: Any) -> str | None:
    """A map URL for `{lat, lng}`, or None without valid coordinates."""
    coords = coordinates(location)
    if coords is None:
        return None
    return f"https://www.google.com/maps?q={coords[0]},{coords[1]}"


def _escape_filter(escape: Callable[[str], str]) -> Callable[[Any, int | None], Any]:
    """A filter: text escaped for one markup, cut to `limit` characters when given.

    Escape first, cut after, in one step: Jinja's `truncate` after an escape could
    cut between a backslash and what it escapes. None and numbers pass through
    unchanged (nothing to escape, and a JSON value keeps its type).
    """

    def escaped(value: Any, limit: int | None = None) -> Any:
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        if value is None or isinstance(value, int | float):
            return value
        text = escape(value if isinstance(value, str) else str(value))
        return text if limit is None else fit_escaped(text, limit)

    return escaped


def _discord_link(url: Any, label: Any) -> str | None:
    """`[label](url)` for Discord, or None unless `url` is a plain http(s) URL."""
    for value in (url, label):
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
    return discord_link(url, str(label))


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters["tojson"] = _tojson
    env.filters["local_time"] = _local_time_filter
    env.filters["map_link"] = _map_link
    env.filters["md_escape"] = _escape_filter(escape_markdown)
    env.filters["discord_escape"] = _escape_filter(escape_discord)
    env.filters["discord_link"] = _discord_link
    return env


_ENV: Final = _environment()


def preset_source(name: str) -> str:
    """The text of a shipped preset (`bridge/formats/presets/<name>.j2`)."""
    return resources.files("bridge.formats").joinpath("presets", f"{name}.j2").read_text("utf-8")


def template_source(cfg: WebhookTarget) -> str:
    """The template text of a target: inline, from its file, or a shipped preset."""
    if cfg.template is not None:
        return cfg.template
    if cfg.template_file is not None:
        return cfg.template_file.read_text("utf-8")
    if cfg.preset is not None:
        return preset_source(cfg.preset)
    raise ValueError("no template configured")


def template_field(cfg: WebhookTarget) -> str:
    """Which key holds the template, for error paths (`template`, `template_file`, `preset`)."""
    for key in ("template", "template_file", "preset"):
        if getattr(cfg, key) is not None:
            return key
    return "template"


def syntax_error(source: str) -> str | None:
    """A one-line description of a syntax error in `source`, or None when it compiles."""
    try:
        _ENV.parse(source)
    except TemplateSyntaxError as err:
        return f"syntax error on line {err.lineno}: {err.message}"
    return None


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class TemplateFormat:
    """Renders one target's template; JSON bodies are checked and sent compact."""

    def __init__(
        self,
        source: str,
        *,
        target: str,
        variables: Mapping[str, str],
        content_type: str = "application/json",
    ) -> None:
        self._template: Template = _ENV.from_string(source)
        self._target = target
        self._vars = dict(variables)
        self._content_type = content_type
        self._json = is_json(content_type)
        # Longest first, so a value containing another is masked whole.
        self._secrets = sorted((v for v in self._vars.values() if len(v) >= 4), key=len)[::-1]

    @classmethod
    def from_target(cls, cfg: WebhookTarget) -> TemplateFormat:
        return cls(
            template_source(cfg),
            target=cfg.name,
            variables={k: v.get_secret_value() for k, v in cfg.vars.items()},
            content_type=cfg.content_type,
        )

    def render(self, envelope: Mapping[str, Any], body: str = "") -> Rendered:
        envelope = dict(envelope)
        try:
            text = self._template.render(
                notification=envelope,
                data=envelope.get("data"),
                type=envelope.get("type"),
                vars=self._vars,
                target=self._target,
            )
        # A user's template can fail in any way a Python expression can; the boundary
        # turns every failure into this delivery's error.
        except Exception as err:
            raise RenderError(self._describe(err)) from None
        if len(text) > MAX_BODY_CHARS:
            raise RenderError(f"template error: body longer than {MAX_BODY_CHARS} characters")
        if self._json:
            try:
                text = dumps(json.loads(text))
            except json.JSONDecodeError as err:
                raise RenderError(
                    f"template error: the body is not valid JSON ({err.msg} at line "
                    f"{err.lineno} column {err.colno})"
                ) from None
        return Rendered(text, self._content_type)

    def _describe(self, err: Exception) -> str:
        text = f"template error: {type(err).__name__}: {err}"
        for value in self._secrets:
            text = text.replace(value, "***")
        return text[:ERROR_CHARS]
