"""No configured secret reaches a log line, whatever the log call is handed."""

from __future__ import annotations

import io
import json
import logging

import structlog

from bridge.logs import MASK, SecretScrubber, configure_logging
from bridge.settings import settings_from_dict

SECRETS = {
    "api": "api-key-LEAK1",
    "token": "token-LEAK2",
    "whsec": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "mqtt": "mqttLEAK3",
    "base_pw": "basePW-LEAK4",
    "hook_q": "hookQ-LEAK5",
    "header": "hdr-LEAK6",
}


def settings() -> object:
    return settings_from_dict(
        {
            "upstream": {
                "base_url": f"https://ops:{SECRETS['base_pw']}@fleet.example.com",
                "auth_header": "X-Auth-Token",
                "api_key": SECRETS["api"],
                "auth": {"token": SECRETS["token"]},
            },
            "targets": [
                {
                    "name": "w",
                    "type": "webhook",
                    "url": f"https://x.example/in?token={SECRETS['hook_q']}",
                    "secret": SECRETS["whsec"],
                    "headers": {"X-Auth-Key": SECRETS["header"]},
                },
                {"name": "m", "type": "mqtt", "url": f"mqtt://u:{SECRETS['mqtt']}@b:1883"},
            ],
        },
        {},
    )


def test_scrubber_masks_nested_values() -> None:
    s = SecretScrubber(["abcd1234"])
    out = s.scrub({"a": ["x abcd1234 y", {"b": "abcd1234"}], "n": 3})
    assert out == {"a": [f"x {MASK} y", {"b": MASK}], "n": 3}


def test_no_secret_reaches_rendered_json_logs() -> None:
    cfg = settings()
    stream = io.StringIO()
    configure_logging("debug", "json", cfg.secret_values(), stream=stream)  # type: ignore[attr-defined]
    log = structlog.get_logger("test")
    log.info(f"header was Bearer {SECRETS['token']}", headers={"X-Api-Key": SECRETS["api"]})
    log.warning("url", url=f"mqtt://u:{SECRETS['mqtt']}@b:1883", secret=SECRETS["whsec"])
    try:
        raise RuntimeError(f"boom {SECRETS['token']}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("aiohttp.client").error("stdlib %s", SECRETS["api"])
    log.info(
        "urls",
        base=f"https://ops:{SECRETS['base_pw']}@fleet.example.com",
        hook=f"https://x.example/in?token={SECRETS['hook_q']}",
        header=SECRETS["header"],
    )
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.strip().splitlines()]
    assert len(lines) == 5
    for value in SECRETS.values():
        assert value not in text
    assert text.count(MASK) >= 6


def test_tokens_obtained_later_can_be_registered() -> None:
    stream = io.StringIO()
    scrubber = configure_logging("info", "json", [], stream=stream)
    scrubber.add(["fresh-login-token-9"])
    structlog.get_logger().info("got fresh-login-token-9")
    assert "fresh-login-token-9" not in stream.getvalue()
    assert MASK in stream.getvalue()
