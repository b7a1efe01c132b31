"""The configuration model (SPEC §2) and its loader.

A YAML file is read, `${VAR}` references are expanded, `*_file` keys are read
into their secret, and the result is validated by pydantic-settings, which also
applies `BRIDGE_`-prefixed environment overrides (`BRIDGE_UPSTREAM__API_KEY`).
Environment overrides win over the file. Every problem is collected into one
`ConfigError` whose lines carry the dotted path (`targets[1].url: invalid URL`).
"""

from __future__ import annotations

import os
import re
import stat
import string
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from bridge.clock import parse_rfc3339

NOTIFICATION_TYPES = (
    "event.created",
    "event.updated",
    "clip.requested",
    "clip.updated",
    "clip.completed",
    "clip.failed",
    "upload.updated",
    "report.safety",
    "bridge.test",
)
NotificationType = Literal[
    "event.created",
    "event.updated",
    "clip.requested",
    "clip.updated",
    "clip.completed",
    "clip.failed",
    "upload.updated",
    "report.safety",
    "bridge.test",
]
Category = Literal["sensor", "adas", "dms", "traffic_sign", "other"]
Severity = Literal["minor", "moderate", "severe", "unknown"]
CAMERA_IDS = ("C_F", "C_I", "C_R", "C_E", "GRID", "S_F_I", "ALL")

PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]

# Keys whose `<key>_file` sibling is read from disk (Kubernetes secret mounts).
SECRET_FILE_KEYS = frozenset(
    {"api_key", "token", "password", "secret", "webhook_url", "bot_token", "admin_token"}
)


# Bearer and ingest tokens guard the admin API and the push endpoint: a short one is
# guessable, so it is refused like an empty one.
MIN_TOKEN_LENGTH = 16


def _not_blank(secret: SecretStr) -> SecretStr:
    # An empty secret (an empty file, `${VAR}` set to "", `BRIDGE_…=`) must never mean
    # "no authentication": it is a config error wherever it comes from.
    if not secret.get_secret_value().strip():
        raise ValueError("must not be empty or whitespace")
    return secret


def _long_token(secret: SecretStr) -> SecretStr:
    _not_blank(secret)
    if len(secret.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ValueError(f"must have at least {MIN_TOKEN_LENGTH} characters")
    return secret


def _header_safe(secret: SecretStr) -> SecretStr:
    # Sent as a header value: a line break or NUL would split the request.
    if re.search(r"[\r\n\x00]", secret.get_secret_value()):
        raise ValueError("must not contain a line break or NUL (it is sent as a header)")
    return secret


Secret = Annotated[SecretStr, AfterValidator(_not_blank)]
HeaderSecret = Annotated[SecretStr, AfterValidator(_not_blank), AfterValidator(_header_safe)]
Token = Annotated[SecretStr, AfterValidator(_long_token)]
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an RFC 9110 token


class ConfigError(Exception):
    """The configuration is invalid; `problems` has one `path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- upstream


class EventTypeOverride(_Strict):
    name: str | None = None
    category: Category | None = None


class UpstreamAuth(_Strict):
    """Exactly one of a static `token` or `email` + `password`."""

    token: HeaderSecret | None = None
    email: str | None = None
    password: Secret | None = None
    fleet_id: int | None = None

    @model_validator(mode="after")
    def _one_method(self) -> UpstreamAuth:
        if self.token is not None and (self.email or self.password):
            raise ValueError("give either token or email+password, not both")
        if self.token is None:
            if not self.email or self.password is None:
                raise ValueError("give token, or both email and password")
            if len(self.password.get_secret_value()) < 6:
                raise ValueError("password must have at least 6 characters")
        return self


class UpstreamSettings(_Strict):
    base_url: AnyHttpUrl
    api_key: HeaderSecret
    api_key_header: str = Field("X-Api-Key", pattern=HEADER_NAME_PATTERN)
    auth: UpstreamAuth
    auth_header: str = Field("Authorization", pattern=HEADER_NAME_PATTERN)
    auth_scheme: str = Field("Bearer", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*$")
    timeout_s: PositiveSeconds = 15
    page_size: int = Field(100, ge=1, le=1000)
    max_requests_per_s: PositiveSeconds = 5
    max_retries: int = Field(4, ge=0, le=20)
    event_types: dict[int, EventTypeOverride] = Field(default_factory=dict)
    # Vendor severity values → ours, over the built-in 1/2/3 and Minor/Moderate/Severe
    # (keys are matched case-insensitively; numbers as their digits, e.g. "4": severe).
    severity_levels: dict[str, Severity] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_clashing_userinfo(self) -> UpstreamSettings:
        # aiohttp turns user:password@ into an Authorization header and refuses a request
        # that also sets one: every vendor call would fail.
        if self.base_url.username is not None and self.auth_header.lower() == "authorization":
            raise ValueError(
                "base_url: user:password@ cannot be combined with auth_header Authorization;"
                " remove it from the URL (credentials go in api_key and auth)"
            )
        return self

    @property
    def base(self) -> str:
        """The base URL without a trailing slash."""
        return str(self.base_url).rstrip("/")


# --------------------------------------------------------------------------- polling


def parse_start_from(value: str, now: float) -> float:
    """`now`, a duration (`24h`, `90m`, `30s`, `2d`) back from now, or an ISO instant."""
    v = value.strip()
    if v == "now":
        return now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", v)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - float(m.group(1)) * unit
    return parse_rfc3339(v).timestamp()


class EventsPoll(_Strict):
    interval_s: PositiveSeconds = 30
    lookback_s: NonNegativeSeconds = 900
    # Busy fleets (SPEC §5.1): every run reads the head of the list (the last
    # head_lookback_s); the whole lookback_s window is re-scanned every
    # rescan_interval_s, with at most rescan_budget of max_requests_per_s.
    head_lookback_s: NonNegativeSeconds = 30
    rescan_interval_s: PositiveSeconds = 60
    rescan_budget: float = Field(0.5, gt=0, le=1)
    max_window_s: PositiveSeconds = 3600
    start_from: str = "now"
    types: list[int] = Field(default_factory=list)
    device_cids: list[str] = Field(default_factory=list)
    serial_number: str | None = None
    notify_updates: bool = True
    # SPEC §5.1: fetch GetVideoDetail when an event's video is uploaded; only for
    # events younger than the max age, so a catch-up spends no vendor budget on links.
    video_links: bool = True
    video_links_max_age_s: NonNegativeSeconds = 900
    detail: bool = False  # detailV2 records into data.detail of event.created

    @field_validator("start_from")
    @classmethod
    def _valid_start(cls, v: str) -> str:
        try:
            parse_start_from(v, 0.0)
        except ValueError as err:
            raise ValueError(
                f"must be 'now', a duration such as 24h, or an ISO-8601 instant ({err})"
            ) from None
        return v


class ClipsPoll(_Strict):
    interval_s: PositiveSeconds = 15
    give_up_after_s: PositiveSeconds = 259200


class ManualUploadsPoll(_Strict):
    enabled: bool = False
    interval_s: PositiveSeconds = 60


class SafetyReportPoll(_Strict):
    enabled: bool = False
    cron: str = "0 7 * * *"
    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_tz(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v)
        except ValueError as err:
            raise ValueError(f"invalid cron expression ({err})") from None
        return v


class PollSettings(_Strict):
    events: EventsPoll = EventsPoll()
    clips: ClipsPoll = ClipsPoll()
    manual_uploads: ManualUploadsPoll = ManualUploadsPoll()
    safety_report: SafetyReportPoll = SafetyReportPoll()


# --------------------------------------------------------------------------- clips / ingest


class ClipRuleMatch(_Strict):
    min_severity: Severity | None = None
    categories: list[Category] = Field(default_factory=list)
    event_types: list[int] = Field(default_factory=list)


class ClipRule(_Strict):
    match: ClipRuleMatch = ClipRuleMatch()
    cam_id: str = "ALL"
    duration_s: int = Field(30, ge=1, le=86400)

    @field_validator("cam_id")
    @classmethod
    def _cam(cls, v: str) -> str:
        if v not in CAMERA_IDS:
            raise ValueError(f"unknown camera id; use one of {', '.join(CAMERA_IDS)}")
        return v


class ClipsSettings(_Strict):
    auto_request: list[ClipRule] = Field(default_factory=list)


class VendorWebhookIngest(_Strict):
    enabled: bool = False
    path: str = "/ingest/visionmax"
    token: Token | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v.startswith("/api/"):
            raise ValueError("must start with / and not lie under /api/")
        return v


class IngestSettings(_Strict):
    vendor_webhook: VendorWebhookIngest = VendorWebhookIngest()


# ------------------------------------------------------------------ store / server / logging


class StoreSettings(_Strict):
    url: str = "sqlite:////var/lib/fleet-bridge/bridge.db"
    retention_days: float = Field(14, gt=0)
    pool_size: int = Field(8, ge=2, le=100)  # PostgreSQL: connections per replica
    lease_s: float = Field(15, ge=0.5, le=600)  # PostgreSQL: TTL of the poll lease (§9)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v.startswith("sqlite:///"):
            if len(v) <= len("sqlite:///"):
                raise ValueError("sqlite URL needs a path: sqlite:////abs/path.db")
            return v
        if v.startswith(("postgresql://", "postgres://")):
            return v
        raise ValueError("must be sqlite:///PATH or postgresql://…")

    @property
    def kind(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"

    @property
    def sqlite_path(self) -> str:
        """The file path of a sqlite URL (`sqlite:////abs` → `/abs`, `sqlite:///rel` → `rel`)."""
        return self.url[len("sqlite:///") :]


class ServerSettings(_Strict):
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all interfaces
    port: int = Field(8080, ge=0, le=65535)
    admin_token: Token | None = None
    shutdown_grace_s: NonNegativeSeconds = 20
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # A new connection's request headers, and each request body, must arrive within
    # this (slow clients cannot hold a connection).
    read_timeout_s: PositiveSeconds = 15
    # Open connections at once; past it a new one gets 503 with Retry-After (a few
    # more are kept for the probes: listener.PROBE_CONNECTIONS).
    max_connections: int = Field(64, ge=1, le=100_000)


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


# --------------------------------------------------------------------------- targets


class TargetFilter(_Strict):
    types: list[NotificationType] = Field(default_factory=list)
    event_types: list[int] = Field(default_factory=list)
    categories: list[Category] = Field(default_factory=list)
    min_severity: Severity | None = None
    device_cids: list[str] = Field(default_factory=list)


class StormFilter(TargetFilter):
    """A `filter` for inhibition rules; `max_severity` is a key here too (SPEC §6.5)."""

    max_severity: Severity | None = None


# Dotted paths of event `data` (SPEC §3) that grouping and inhibition may compare.
EVENT_DATA_PATHS = frozenset(
    {
        "ticket",
        "linked_ticket",
        "event_type.code",
        "event_type.name",
        "event_type.category",
        "severity",
        "device.cid",
        "device.serial_number",
        "vehicle.id",
        "driver.id",
        "driver.name",
        "trip_id",
    }
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _types(*names: NotificationType) -> list[NotificationType]:
    return list(names)


def _check_paths(paths: list[str]) -> list[str]:
    unknown = [p for p in paths if p not in EVENT_DATA_PATHS]
    if unknown:
        known = ", ".join(sorted(EVENT_DATA_PATHS))
        raise ValueError(f"unknown path {unknown[0]!r} in data; use one of {known}")
    return paths


class GroupSettings(_Strict):
    by: list[str] = Field(min_length=1)
    types: list[NotificationType] = Field(default_factory=lambda: _types("event.created"))
    wait_s: NonNegativeSeconds = 0
    interval_s: PositiveSeconds = 300
    max_items: int = Field(20, ge=1, le=1000)

    @field_validator("by")
    @classmethod
    def _by(cls, v: list[str]) -> list[str]:
        return _check_paths(v)


class InhibitRule(_Strict):
    when: StormFilter
    suppress: StormFilter
    equal: list[str] = Field(default_factory=list)
    window_s: PositiveSeconds = 120

    @field_validator("equal")
    @classmethod
    def _equal(cls, v: list[str]) -> list[str]:
        return _check_paths(v)


class MuteWindow(_Strict):
    tz: str = "UTC"
    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS))
    from_: str = Field(alias="from")
    to: str
    types: list[NotificationType] = Field(
        default_factory=lambda: _types("event.created", "event.updated")
    )

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_tz(v)

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        for day in v:
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r}; use {', '.join(WEEKDAYS)}")
        return v

    @field_validator("from_", "to")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"{v!r} is not a time of day as HH:MM")
        return v


class RetrySettings(_Strict):
    # None: max_age_s alone decides (SPEC §2); a count cut 1-hour outages short (issue #9).
    max_attempts: int | None = Field(None, ge=1)
    max_age_s: PositiveSeconds = 86400
    base_delay_s: PositiveSeconds = 1
    max_delay_s: PositiveSeconds = 3600


TARGET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class _TargetBase(_Strict):
    name: str = Field(pattern=TARGET_NAME_PATTERN)
    filter: TargetFilter = TargetFilter()
    redact: list[str] = Field(default_factory=list)
    retry: RetrySettings = RetrySettings()
    max_in_flight: int = Field(8, ge=1, le=256)
    rate_limit_per_s: PositiveSeconds | None = None
    timeout_s: PositiveSeconds = 10
    # Storm control (SPEC §6.5), all optional.
    group: GroupSettings | None = None
    inhibit: list[InhibitRule] = Field(default_factory=list)
    mute: list[MuteWindow] = Field(default_factory=list)


def _check_whsec(secret: SecretStr) -> SecretStr:
    import base64
    import binascii

    raw = secret.get_secret_value()
    body = raw.removeprefix("whsec_")
    try:
        if not base64.b64decode(body, validate=True):
            raise ValueError
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret must be whsec_ followed by base64") from None
    return secret


_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110
_MEDIA_TYPE = rf"^{_TCHARS}/{_TCHARS}(\s*;[^\r\n\x00]*)?$"  # type/subtype; parameters


class WebhookTarget(_TargetBase):
    type: Literal["webhook"]
    url: AnyHttpUrl
    secret: SecretStr | list[SecretStr] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # The body (SPEC §6.1): the envelope, a CloudEvent, or a rendered template.
    format: Literal["standard", "cloudevents", "template"] = "standard"
    cloudevents_mode: Literal["structured", "binary"] = "structured"
    cloudevents_type_prefix: str = Field("com.visionmax.", max_length=200)
    template: str | None = Field(None, max_length=65536)
    template_file: Path | None = None
    preset: Literal["pagerduty", "teams", "discord"] | None = None
    vars: dict[str, Secret] = Field(default_factory=dict)
    content_type: str = Field("application/json", pattern=_MEDIA_TYPE, max_length=200)

    @field_validator("template", "template_file", "preset")
    @classmethod
    def _template(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        if info.data.get("format") != "template":
            raise ValueError("needs format: template")
        v_text: str | None = None
        if isinstance(v, Path):
            try:
                v_text = v.read_text("utf-8")
            except OSError as err:
                raise ValueError(f"cannot read ({err.strerror})") from None
            except UnicodeDecodeError:
                raise ValueError("not UTF-8 text") from None
        elif info.field_name == "template":
            v_text = v
        if v_text is not None:
            # Compiled here so `run` and `check` alike report a broken template as a
            # config error; rendering against examples is `check`'s job.
            from bridge.formats.template import syntax_error

            problem = syntax_error(v_text)
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_template(self) -> WebhookTarget:
        given = [k for k in ("template", "template_file", "preset") if getattr(self, k) is not None]
        if self.format == "template" and len(given) != 1:
            raise ValueError(
                "format: template takes exactly one of template, template_file, preset"
            )
        return self

    @field_validator("secret")
    @classmethod
    def _secrets(cls, v: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        if v is None:
            return v
        for s in v if isinstance(v, list) else [v]:
            _check_whsec(_not_blank(s))
        return v

    @property
    def secrets(self) -> list[SecretStr]:
        """The signing secrets, newest first as configured."""
        if self.secret is None:
            return []
        return self.secret if isinstance(self.secret, list) else [self.secret]


class SlackTarget(_TargetBase):
    type: Literal["slack"]
    webhook_url: Secret | None = None
    bot_token: Secret | None = None
    channel: str | None = None
    api_base_url: AnyHttpUrl = AnyHttpUrl("https://slack.com/api")
    tz: str = "UTC"
    rate_limit_per_s: PositiveSeconds | None = 1

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_tz(v)

    @model_validator(mode="after")
    def _one_way(self) -> SlackTarget:
        if (self.webhook_url is None) == (self.bot_token is None):
            raise ValueError("give exactly one of webhook_url or bot_token")
        if self.bot_token is not None and not self.channel:
            raise ValueError("bot_token needs a channel")
        if self.webhook_url is not None:
            url = self.webhook_url.get_secret_value()
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError("webhook_url: invalid URL")
        return self


MQTT_PLACEHOLDERS = frozenset(
    {"prefix", "type", "type_path", "device_cid", "event_type", "severity", "ticket"}
)


class MqttTarget(_TargetBase):
    type: Literal["mqtt"]
    url: str
    topic_prefix: str = "fleet"
    topic: str = "{prefix}/{type_path}/{device_cid}"
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = None
    username: str | None = None
    password: Secret | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("invalid URL: use mqtt://host:1883 or mqtts://host:8883")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("invalid URL: bad port") from None
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as err:
            raise ValueError(f"invalid topic template ({err})") from None
        unknown = names - MQTT_PLACEHOLDERS
        if unknown or "" in names:
            raise ValueError(
                f"unknown placeholder {sorted(unknown or {''})}; "
                f"use {', '.join('{' + p + '}' for p in sorted(MQTT_PLACEHOLDERS))}"
            )
        if "#" in v or "+" in v:
            raise ValueError("a publish topic cannot contain the wildcards # or +")
        return v


class ConsoleTarget(_TargetBase):
    type: Literal["console"]


Target = Annotated[
    WebhookTarget | SlackTarget | MqttTarget | ConsoleTarget, Field(discriminator="type")
]


# --------------------------------------------------------------------------- root


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    upstream: UpstreamSettings
    poll: PollSettings = PollSettings()
    clips: ClipsSettings = ClipsSettings()
    ingest: IngestSettings = IngestSettings()
    store: StoreSettings = StoreSettings()
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()
    targets: list[Target] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment overrides beat the file; no dotenv or secrets-dir magic. The
        # overrides come from the mapping the loader was given (os.environ by default).
        return (_MappingEnvSource(settings_cls), init_settings)

    @model_validator(mode="after")
    def _unique_targets(self) -> Settings:
        problems = _duplicate_target_names({"targets": [{"name": t.name} for t in self.targets]})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def target(self, name: str) -> WebhookTarget | SlackTarget | MqttTarget | ConsoleTarget:
        """The target called `name` (KeyError when there is none)."""
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def secret_values(self) -> list[str]:
        """Every configured secret value, for the log scrubber."""
        out: list[str] = []
        for value in _walk_values(self):
            if isinstance(value, SecretStr):
                out.append(value.get_secret_value())
        for url in self._urls():
            out.extend(url_secrets(url))
        for t in self.targets:
            if isinstance(t, WebhookTarget):
                out.extend(v for k, v in t.headers.items() if is_secret_name(k))
        return [s for s in out if len(s) >= 4]

    def _urls(self) -> list[str]:
        """Every configured URL that may carry credentials (userinfo, ?token=)."""
        urls = [self.store.url, str(self.upstream.base_url)]
        for t in self.targets:
            if isinstance(t, MqttTarget | WebhookTarget):
                urls.append(str(t.url))
        return urls


def _walk_values(obj: Any) -> Iterator[Any]:
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk_values(getattr(obj, name))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _walk_values(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk_values(v)
    else:
        yield obj


def _duplicate_target_names(data: Mapping[str, Any]) -> list[str]:
    targets = data.get("targets")
    if not isinstance(targets, list):
        return []
    seen: set[str] = set()
    problems = []
    for i, t in enumerate(targets):
        name = t.get("name") if isinstance(t, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(f"targets[{i}].name: duplicate target name {name!r}")
            seen.add(name)
    return problems


def _check_tz(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}") from None
    return v


# --------------------------------------------------------------------------- loading

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# The `BRIDGE_` overrides are read from this mapping, so a caller (a test) can pass its
# own environment without touching os.environ.
_OVERRIDES: ContextVar[Mapping[str, str] | None] = ContextVar("bridge_env", default=None)


class _MappingEnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _OVERRIDES.get()
        return parse_env_vars(
            os.environ if env is None else env,
            self.case_sensitive,
            self.env_ignore_empty,
            self.env_parse_none_str,
        )


Warn = Callable[[str], None]


def _path_str(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _expand(
    node: Any,
    loc: tuple[int | str, ...],
    env: Mapping[str, str],
    errs: list[str],
    warn: Warn | None = None,
) -> Any:
    """Expand `${VAR}` in strings and read `<secret>_file` keys, collecting errors."""
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            here = (*loc, str(key))
            value = _expand(value, here, env, errs, warn)
            if isinstance(key, str) and key.endswith("_file") and key[:-5] in SECRET_FILE_KEYS:
                base = key[:-5]
                if base in node:
                    errs.append(f"{_path_str(here)}: give {base} or {key}, not both")
                    continue
                secret = _read_secret_file(Path(str(value)), _path_str(here), errs, warn)
                if secret is not None:
                    out[base] = secret
                continue
            out[key] = value
        return out
    if isinstance(node, list):
        return [_expand(v, (*loc, i), env, errs, warn) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                errs.append(f"{_path_str(loc)}: environment variable {name} is not set")
                return ""
            return env[name]

        return _ENV_REF.sub(sub, node)
    return node


def _read_secret_file(path: Path, where: str, errs: list[str], warn: Warn | None) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except OSError as err:
        errs.append(f"{where}: cannot read secret file ({err.strerror})")
        return None
    except UnicodeDecodeError:
        errs.append(f"{where}: secret file is not UTF-8 text")
        return None
    if mode & stat.S_IROTH and warn is not None:
        warn(f"{where}: secret file {path} is readable by other users (chmod o-r)")
    return text


def _format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    target_tags = {"webhook", "slack", "mqtt", "console"}
    for e in err.errors():
        loc = list(e["loc"])
        # A discriminated union puts the tag in the path (targets.1.webhook.url): drop it.
        if len(loc) >= 3 and loc[0] == "targets" and loc[2] in target_tags:
            del loc[2]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required"
        elif e["type"].startswith("url_"):
            msg = f"invalid URL ({msg})"
        elif e["type"] == "union_tag_invalid":
            msg = "unknown target type; use webhook, slack, mqtt or console"
        lines.append(f"{_path_str(tuple(loc))}: {msg}")
    return lines


def load_settings(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    warn: Warn | None = None,
) -> Settings:
    """Read, expand and validate the config file; raise `ConfigError` listing every problem.

    `warn` receives one line per non-fatal finding (a secret file others can read).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"(file): cannot read {path}: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"(file): {path} is not UTF-8 text"]) from None
    return settings_from_yaml(text, env, warn=warn)


def settings_from_yaml(
    text: str, env: Mapping[str, str] | None = None, *, warn: Warn | None = None
) -> Settings:
    """Validate config given as YAML text (see `load_settings`)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"(file): not valid YAML{_yaml_where(err)}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(["(root): the config must be a mapping"])
    return settings_from_dict(raw, env, warn=warn)


def _yaml_where(err: yaml.YAMLError) -> str:
    # PyYAML's message quotes the offending line, which may hold a secret: keep only the
    # problem and its position.
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}" if problem else where


def settings_from_dict(
    raw: dict[str, Any], env: Mapping[str, str] | None = None, *, warn: Warn | None = None
) -> Settings:
    """Validate an already-parsed config mapping (see `load_settings`)."""
    env = os.environ if env is None else env
    errs: list[str] = []
    data = _expand(raw, (), env, errs, warn)
    errs.extend(_duplicate_target_names(data))
    reset = _OVERRIDES.set(env)
    try:
        settings = Settings(**data)
    except ValidationError as err:
        for line in _format_validation_error(err):
            path = line.split(":", 1)[0]
            # Already reported: a duplicate name, an unset ${VAR}, an unreadable *_file.
            if any(old in line or old.startswith((f"{path}:", f"{path}_file:")) for old in errs):
                continue
            errs.append(line)
        raise ConfigError(errs) from None
    finally:
        _OVERRIDES.reset(reset)
    if errs:
        raise ConfigError(errs)
    return settings


# --------------------------------------------------------------------------- display

MASK = "**********"


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced by a mask."""
    data = settings.model_dump(mode="python", by_alias=True)

    def mask(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return MASK
        if isinstance(node, dict):
            return {k: mask(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mask(v) for v in node]
        if isinstance(node, Path):
            return str(node)
        if isinstance(node, AnyHttpUrl):
            return str(node)
        return node

    out: dict[str, Any] = mask(data)
    out["store"]["url"] = mask_url_password(out["store"]["url"])
    out["upstream"]["base_url"] = mask_url_password(out["upstream"]["base_url"])
    for t in out["targets"]:
        if t.get("type") in ("mqtt", "webhook"):
            t["url"] = mask_url_password(t["url"])
        if t.get("type") == "webhook":
            t["headers"] = {k: MASK if is_secret_name(k) else v for k, v in t["headers"].items()}
    return out


# Header and query parameter names whose values are credentials.
_SECRET_NAME = re.compile(r"auth|token|key|secret|pass|sig|cookie|session|credential", re.I)


def is_secret_name(name: str) -> bool:
    """True for a header or query parameter that carries a credential (`Authorization`…)."""
    return _SECRET_NAME.search(name) is not None


def url_secrets(url: str) -> list[str]:
    """The credentials inside a URL: userinfo password and secret query values."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    out = [password] if password else []
    out.extend(v for k, v in parse_qsl(parts.query) if v and is_secret_name(k))
    return out


def mask_url_password(url: str) -> str:
    """`mqtt://user:pass@host/?token=t` → `mqtt://user:**********@host/?token=**********`."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
        parts = parts._replace(netloc=netloc)
    if parts.query:
        query = [(k, MASK if is_secret_name(k) else v) for k, v in parse_qsl(parts.query, True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()
