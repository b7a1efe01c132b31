"""Configuration: expansion, secret files, env overrides, validation paths, masking."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from bridge.settings import (
    MASK,
    ConfigError,
    load_settings,
    masked_dump,
    parse_start_from,
    settings_from_dict,
    settings_from_yaml,
)

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def base_config(**extra: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "upstream": {
            "base_url": "https://fleet.example.com",
            "api_key": "key-123456",
            "auth": {"token": "token-abcdef"},
        }
    }
    cfg.update(extra)
    return cfg


def problems(cfg: dict[str, object], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(cfg, env or {})
    return info.value.problems


def test_minimal_config_gets_spec_defaults() -> None:
    s = settings_from_dict(base_config(), {})
    assert s.upstream.api_key_header == "X-Api-Key"
    assert s.upstream.auth_scheme == "Bearer"
    assert s.poll.events.interval_s == 30
    assert s.poll.events.lookback_s == 900
    assert s.poll.events.video_links is True
    assert s.poll.events.video_links_max_age_s == 900
    assert s.poll.events.detail is False
    assert s.store.url == "sqlite:////var/lib/fleet-bridge/bridge.db"
    assert s.server.admin_token is None
    assert s.targets == []


def test_env_reference_is_expanded() -> None:
    cfg = base_config()
    cfg["upstream"]["api_key"] = "${FLEET_API_KEY}"  # type: ignore[index]
    s = settings_from_dict(cfg, {"FLEET_API_KEY": "from-env-1"})
    assert s.upstream.api_key.get_secret_value() == "from-env-1"


def test_unset_env_reference_names_path_and_variable() -> None:
    cfg = base_config()
    cfg["upstream"]["api_key"] = "${NOPE_NOT_SET}"  # type: ignore[index]
    assert problems(cfg) == ["upstream.api_key: environment variable NOPE_NOT_SET is not set"]


def test_secret_file_is_read(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("file-token-xyz\n")
    cfg = base_config()
    cfg["upstream"]["auth"] = {"token_file": str(f)}  # type: ignore[index]
    s = settings_from_dict(cfg, {})
    assert s.upstream.auth.token is not None
    assert s.upstream.auth.token.get_secret_value() == "file-token-xyz"


def test_missing_secret_file_is_an_error_with_path(tmp_path: Path) -> None:
    cfg = base_config()
    cfg["upstream"]["api_key_file"] = str(tmp_path / "missing")  # type: ignore[index]
    del cfg["upstream"]["api_key"]  # type: ignore[attr-defined]
    out = problems(cfg)
    assert len(out) == 1
    assert out[0].startswith("upstream.api_key_file: cannot read secret file")


def test_env_override_beats_file_and_parses_decimals() -> None:
    env = {"BRIDGE_UPSTREAM__API_KEY": "env-key-999", "BRIDGE_POLL__EVENTS__INTERVAL_S": "2.5"}
    s = settings_from_dict(base_config(), env)
    assert s.upstream.api_key.get_secret_value() == "env-key-999"
    assert s.poll.events.interval_s == 2.5


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {
                "targets": [
                    {"name": "a", "type": "console"},
                    {"name": "h", "type": "webhook", "url": "not a url"},
                ]
            },
            "targets[1].url: invalid URL",
        ),
        ({"poll": {"events": {"interval_s": -5}}}, "poll.events.interval_s: Input should be"),
        ({"poll": {"events": {"intervall_s": 5}}}, "poll.events.intervall_s: unknown key"),
        ({"surprise": 1}, "surprise: unknown key"),
        (
            {"targets": [{"name": "x", "type": "console"}, {"name": "x", "type": "console"}]},
            "targets[1].name: duplicate target name 'x'",
        ),
        ({"targets": [{"name": "x", "type": "pager"}]}, "targets[0]: unknown target type"),
        (
            {
                "targets": [
                    {
                        "name": "m",
                        "type": "mqtt",
                        "url": "mqtt://b:1883",
                        "topic": "{prefix}/{nope}",
                    }
                ]
            },
            "targets[0].topic: unknown placeholder",
        ),
        (
            {"targets": [{"name": "s", "type": "slack", "bot_token": "xoxb-1"}]},
            "targets[0]: bot_token needs a channel",
        ),
        (
            {
                "targets": [
                    {
                        "name": "h",
                        "type": "webhook",
                        "url": "https://x.example",
                        "secret": "whsec_***",
                    }
                ]
            },
            "targets[0].secret: webhook secret must be whsec_ followed by base64",
        ),
        ({"poll": {"safety_report": {"tz": "Mars/Base"}}}, "poll.safety_report.tz: unknown time"),
        ({"poll": {"events": {"start_from": "yesterday"}}}, "poll.events.start_from: must be"),
        (
            {"poll": {"events": {"video_links_max_age_s": -1}}},
            "poll.events.video_links_max_age_s: Input should be",
        ),
        ({"poll": {"events": {"detail": "sometimes"}}}, "poll.events.detail: Input should be"),
        ({"store": {"url": "mysql://x"}}, "store.url: must be sqlite"),
    ],
)
def test_invalid_config_names_the_path(patch: dict[str, object], expected: str) -> None:
    out = problems(base_config(**patch))
    assert any(line.startswith(expected) for line in out), out


def test_every_problem_is_listed_at_once() -> None:
    cfg = base_config(
        poll={"events": {"interval_s": 0}},
        targets=[{"name": "a", "type": "webhook", "url": "nope"}, {"name": "a", "type": "console"}],
    )
    cfg["upstream"]["api_key"] = "${UNSET_VAR_1}"  # type: ignore[index]
    out = problems(cfg)
    assert len(out) == 4, out
    assert {line.split(":")[0] for line in out} == {
        "upstream.api_key",
        "poll.events.interval_s",
        "targets[0].url",
        "targets[1].name",
    }


def test_auth_needs_exactly_one_method() -> None:
    cfg = base_config()
    cfg["upstream"]["auth"] = {"token": "t-123456", "email": "a@b.c", "password": "pw-123456"}  # type: ignore[index]
    assert any("either token or email+password" in p for p in problems(cfg))
    cfg["upstream"]["auth"] = {"email": "a@b.c"}  # type: ignore[index]
    assert any("upstream.auth" in p for p in problems(cfg))


def test_masked_dump_hides_every_secret() -> None:
    secrets = {
        "api": "api-key-SECRET1",
        "pw": "password-SECRET2",
        "wh": WHSEC,
        "slack_url": "https://hooks.slack.com/services/SECRET3",
        "bot": "xoxb-SECRET4",
        "admin": "admin-SECRET5-long-enough",
        "ingest": "ingest-SECRET6-long-enough",
        "mqttpw": "mqttSECRET7",
        "pgpw": "pgSECRET8",
        "base_pw": "basePW-SECRET9",
        "hook_pw": "hookPW-SECRET10",
        "hook_q": "hookQ-SECRET11",
        "header": "Bearer header-SECRET12",
    }
    cfg = {
        "upstream": {
            "base_url": f"https://ops:{secrets['base_pw']}@fleet.example.com",
            "auth_header": "X-Auth-Token",
            "api_key": secrets["api"],
            "auth": {"email": "ops@example.com", "password": secrets["pw"]},
        },
        "ingest": {"vendor_webhook": {"enabled": True, "token": secrets["ingest"]}},
        "store": {"url": f"postgresql://bridge:{secrets['pgpw']}@db:5432/bridge"},
        "server": {"admin_token": secrets["admin"]},
        "targets": [
            {
                "name": "w",
                "type": "webhook",
                "url": f"https://u:{secrets['hook_pw']}@r.example/x?token={secrets['hook_q']}&a=b",
                "secret": [WHSEC, WHSEC],
                "headers": {"Authorization": secrets["header"], "X-Env": "prod"},
            },
            {"name": "s1", "type": "slack", "webhook_url": secrets["slack_url"]},
            {"name": "s2", "type": "slack", "bot_token": secrets["bot"], "channel": "#x"},
            {"name": "m", "type": "mqtt", "url": f"mqtt://u:{secrets['mqttpw']}@broker:1883"},
        ],
    }
    s = settings_from_dict(cfg, {})
    text = yaml.safe_dump(masked_dump(s)) + json.dumps(masked_dump(s))
    for value in secrets.values():
        assert value not in text
    assert MASK in text
    assert "postgresql://bridge:**********@db:5432/bridge" in text
    assert "https://u:**********@r.example/x?token=**********&a=b" in text
    assert "prod" in text  # a header that is no credential stays readable
    assert set(s.secret_values()) >= set(secrets.values())


@pytest.mark.parametrize(
    ("where", "value", "env"),
    [
        ("upstream.api_key", "   ", {}),
        ("upstream.api_key", "${EMPTY}", {"EMPTY": ""}),
        ("upstream.auth.token", "${BLANK}", {"BLANK": " \t "}),
        ("server.admin_token", "", {}),
        ("ingest.vendor_webhook.token", "  ", {}),
        ("targets[0].secret", "", {}),
        ("targets[1].bot_token", " ", {}),
        ("targets[1].webhook_url", "", {}),
        ("targets[2].password", "", {}),
        ("targets[0].vars.routing_key", " ", {}),
    ],
)
def test_an_empty_or_blank_secret_is_a_config_error(
    where: str, value: str, env: dict[str, str]
) -> None:
    cfg = _every_secret_config()
    _set_path(cfg, where, value)
    assert any(p.startswith(f"{where}: ") for p in problems(cfg, env)), problems(cfg, env)


def _every_secret_config() -> dict[str, object]:
    return base_config(
        server={"admin_token": "admin-token-0123456789"},
        ingest={"vendor_webhook": {"enabled": True, "token": "ingest-token-0123456789"}},
        targets=[
            {
                "name": "w",
                "type": "webhook",
                "url": "https://r.example/x",
                "secret": WHSEC,
                "vars": {"routing_key": "rk-0123"},
            },
            {"name": "s", "type": "slack", "webhook_url": "https://hooks.slack.com/x"},
            {"name": "m", "type": "mqtt", "url": "mqtt://b:1883", "password": "mqtt-pw"},
        ],
    )


def _set_path(cfg: dict[str, object], dotted: str, value: str) -> None:
    node: object = cfg
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    assert isinstance(node, dict)
    if parts[-1] == "bot_token":
        node.pop("webhook_url")
        node["channel"] = "#c"
    node[parts[-1]] = value


@pytest.mark.parametrize("source", ["file", "env", "override"])
def test_an_empty_admin_token_from_any_source_is_refused(tmp_path: Path, source: str) -> None:
    cfg = base_config()
    env: dict[str, str] = {}
    if source == "file":
        f = tmp_path / "admin"
        f.write_text("  \n")
        cfg["server"] = {"admin_token_file": str(f)}
    elif source == "env":
        cfg["server"] = {"admin_token": "${ADMIN}"}
        env["ADMIN"] = ""
    else:
        cfg["server"] = {"admin_token": "admin-token-0123456789"}
        env["BRIDGE_SERVER__ADMIN_TOKEN"] = " "
    assert problems(cfg, env) == ["server.admin_token: must not be empty or whitespace"]


def test_admin_and_ingest_tokens_need_16_characters() -> None:
    cfg = base_config(
        server={"admin_token": "short-token"},
        ingest={"vendor_webhook": {"enabled": True, "token": "x" * 15}},
    )
    assert problems(cfg) == [
        "ingest.vendor_webhook.token: must have at least 16 characters",
        "server.admin_token: must have at least 16 characters",
    ]
    cfg["server"] = {"admin_token": "a" * 16}
    cfg["ingest"] = {"vendor_webhook": {"enabled": True, "token": "b" * 16}}
    assert settings_from_dict(cfg, {}).server.admin_token is not None


def test_loading_with_a_given_environment_leaves_os_environ_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another thread reading the process environment while settings load must never see
    # it emptied or replaced (it used to be cleared and rewritten around validation).
    monkeypatch.setenv("BRIDGE_POLL__EVENTS__INTERVAL_S", "7")
    monkeypatch.setenv("FLEET_CANARY", "present")
    seen: set[str | None] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(os.environ.get("FLEET_CANARY"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(200):
            s = settings_from_dict(base_config(), {"BRIDGE_POLL__EVENTS__INTERVAL_S": "9"})
    finally:
        stop.set()
        watcher.join()
    assert s.poll.events.interval_s == 9
    assert seen == {"present"}
    # And the process environment is what applies when none is given.
    assert settings_from_dict(base_config()).poll.events.interval_s == 7


def test_userinfo_in_base_url_cannot_go_with_the_authorization_header() -> None:
    # aiohttp would refuse every vendor request: a URL password and an Authorization header.
    cfg = base_config()
    cfg["upstream"]["base_url"] = "https://ops:pw-123456@fleet.example.com"  # type: ignore[index]
    (line,) = problems(cfg)
    assert line.startswith("upstream: base_url: user:password@ cannot be combined")
    assert "pw-123456" not in line


def test_a_yaml_syntax_error_does_not_echo_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text('upstream:\n  api_key: "key-TOPSECRET\n  base_url: [x\n')
    with pytest.raises(ConfigError) as info:
        load_settings(p, {})
    (line,) = info.value.problems
    assert line.startswith("(file): not valid YAML at line ")
    assert "TOPSECRET" not in line


def test_a_secret_file_readable_by_others_gives_one_warning(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("file-token-xyz\n")
    cfg = base_config()
    cfg["upstream"]["auth"] = {"token_file": str(f)}  # type: ignore[index]
    warnings: list[str] = []
    f.chmod(0o640)
    settings_from_dict(cfg, {}, warn=warnings.append)
    assert warnings == []
    f.chmod(0o644)
    settings_from_dict(cfg, {}, warn=warnings.append)
    assert len(warnings) == 1
    assert warnings[0].startswith("upstream.auth.token_file: secret file ")
    assert "readable by other users" in warnings[0]
    assert "file-token-xyz" not in warnings[0]


def test_load_settings_reads_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(base_config()))
    assert load_settings(p, {}).upstream.base == "https://fleet.example.com"
    p.write_text("upstream: [unclosed")
    with pytest.raises(ConfigError) as info:
        load_settings(p, {})
    assert info.value.problems[0].startswith("(file): not valid YAML")


def test_settings_from_yaml_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError):
        settings_from_yaml("- a\n- b\n", {})


def test_start_from_forms() -> None:
    now = 1_800_000_000.0
    assert parse_start_from("now", now) == now
    assert parse_start_from("24h", now) == now - 86400
    assert parse_start_from("90m", now) == now - 5400
    assert parse_start_from("2026-11-24T10:00:00Z", now) == 1_795_514_400.0
    with pytest.raises(ValueError, match="time zone"):
        parse_start_from("2026-11-24T10:00:00", now)


def test_duplicate_name_alone_is_reported_once() -> None:
    out = problems(
        base_config(targets=[{"name": "x", "type": "console"}, {"name": "x", "type": "console"}])
    )
    assert out == ["targets[1].name: duplicate target name 'x'"]
