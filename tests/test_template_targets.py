"""Template targets end to end: config errors, `fleet-bridge check`, and a running
bridge where a render error makes the delivery dead at once (SPEC §6.1), while the
`vars` secrets never reach logs, `check` output or the admin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bridge_rig import make_rig
from conftest import wait_for
from structlog.testing import capture_logs
from test_cli import GOOD, run_cli, write_config
from third_party import ThirdParty

from bridge.formats.check import template_problems
from bridge.settings import ConfigError, settings_from_dict

ROUTING_KEY = "pd-R0UTING-KEY-7f3a9c"
UPSTREAM = GOOD["upstream"]


def config(*targets: dict[str, Any]) -> dict[str, Any]:
    return {"upstream": UPSTREAM, "targets": list(targets)}


def hook(name: str = "t", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": "https://hooks.example.com/x", **extra}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, {"TEST_FLEET_KEY": "k"})
    return err.value.problems


# --------------------------------------------------------------------------- config


def test_template_keys_are_checked_with_their_paths(tmp_path: Path) -> None:
    found = problems(
        config(
            hook("a", preset="teams"),  # no format: template
            hook("b", format="template"),  # no template at all
            hook("c", format="template", template="{{ data.x }", preset="teams"),
            hook("d", format="template", template_file=str(tmp_path / "missing.j2")),
            hook("e", format="template", preset="slack"),
            hook("f", format="template", preset="teams", content_type="json\r\nx: y"),
            hook("g", format="cloudevents", cloudevents_mode="batch"),
        )
    )
    text = "\n".join(found)
    assert "targets[0].preset: needs format: template" in text
    assert (
        "targets[1]: format: template takes exactly one of template, template_file, preset" in text
    )
    assert "targets[2].template: syntax error on line 1" in text
    assert "targets[3].template_file: cannot read (No such file or directory)" in text
    assert "targets[4].preset:" in text
    assert "targets[5].content_type:" in text
    assert "targets[6].cloudevents_mode:" in text


def test_check_renders_every_type_the_filter_lets_through() -> None:
    fails_without_ticket = '{"t": {{ data.ticket | tojson }}}'
    settings = settings_from_dict(
        config(
            hook("pd", format="template", preset="pagerduty"),  # routing_key missing
            hook("ok", format="template", preset="pagerduty", vars={"routing_key": ROUTING_KEY}),
            hook(
                "events",
                format="template",
                template=fails_without_ticket,
                filter={"types": ["event.created", "clip.completed"]},
            ),
            hook(
                "severe",
                format="template",
                template=fails_without_ticket,
                filter={"min_severity": "severe"},
            ),
            hook(
                "grouped",
                format="template",
                template=fails_without_ticket,
                filter={"types": ["event.created"]},
                group={"by": ["vehicle.id"]},
            ),
        ),
        {"TEST_FLEET_KEY": "k"},
    )
    found = template_problems(settings)
    # An event.group (no ticket) is rendered only for the target whose storm control
    # builds one; it is not in the 9 types of a target without it.
    grouped = [p.split(": ")[1] for p in found if p.startswith("targets[4].template")]
    assert grouped == ["bridge.test", "event.group"]
    assert not any(": event.group: " in p for p in found if not p.startswith("targets[4]"))
    pd = [p for p in found if p.startswith("targets[0].preset: ")]
    # Every type, bridge.test included (the test endpoint ignores filters).
    assert len(pd) == 9
    assert "targets[0].preset: event.created: template error: UndefinedError:" in pd[0]
    assert "routing_key" in pd[0]
    assert not any(p.startswith("targets[1]") for p in found)
    # Only bridge.test lacks a ticket among the types the filter lets through.
    events = [p.split(": ")[1] for p in found if p.startswith("targets[2].template")]
    assert events == ["bridge.test"]
    severe = [p.split(": ")[1] for p in found if p.startswith("targets[3].template")]
    assert severe == ["bridge.test"]  # min_severity keeps clip, upload and report types out


def test_check_renders_the_redacted_notification() -> None:
    """A template that reads a path the target redacts would fail on every delivery."""
    names_driver = '{"driver": {{ data.driver.name | tojson }}}'
    target = hook(
        "d", format="template", template=names_driver, filter={"types": ["event.created"]}
    )
    clean = settings_from_dict(config(target), {"TEST_FLEET_KEY": "k"})
    redacted = settings_from_dict(
        config({**target, "redact": ["driver.name"]}), {"TEST_FLEET_KEY": "k"}
    )
    assert [p.split(": ")[1] for p in template_problems(clean)] == ["bridge.test"]
    assert [p.split(": ")[1] for p in template_problems(redacted)] == [
        "event.created",
        "bridge.test",
    ]


def test_check_cli_exits_2_naming_the_template_and_type(tmp_path: Path) -> None:
    bad = write_config(
        tmp_path,
        config(
            hook("pd", format="template", preset="pagerduty", vars={"routing_key": ROUTING_KEY}),
            hook(
                "x",
                format="template",
                template='{"v": {{ data.vehicle.id | tojson }}}',
                filter={"types": ["event.created", "clip.failed"]},
            ),
        ),
    )
    out = run_cli("check", "--config", str(bad), env={"TEST_FLEET_KEY": "k"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "targets[1].template: clip.failed: template error: UndefinedError: "
        "'dict object' has no attribute 'vehicle'",
        "targets[1].template: bridge.test: template error: UndefinedError: "
        "'dict object' has no attribute 'vehicle'",
    ]
    assert ROUTING_KEY not in out.stdout + out.stderr


def test_check_cli_masks_vars_and_passes_good_templates(tmp_path: Path) -> None:
    template = tmp_path / "mine.j2"
    template.write_text('{"text": {{ (type ~ " " ~ notification.id) | tojson }}}\n')
    good = write_config(
        tmp_path,
        config(
            hook("pd", format="template", preset="pagerduty", vars={"routing_key": ROUTING_KEY}),
            hook("own", format="template", template_file=str(template), vars={"k": "v4lue-S3CRET"}),
            hook("ce", format="cloudevents", cloudevents_mode="binary"),
        ),
    )
    out = run_cli("check", "--config", str(good), env={"TEST_FLEET_KEY": "k"})
    assert out.returncode == 0, out.stderr
    assert ROUTING_KEY not in out.stdout
    assert "v4lue-S3CRET" not in out.stdout
    shown = yaml.safe_load(out.stdout)["targets"]
    assert shown[0]["vars"] == {"routing_key": "**********"}
    assert shown[0]["preset"] == "pagerduty"
    assert shown[2]["cloudevents_mode"] == "binary"


# --------------------------------------------------------------------------- running


async def test_render_error_is_dead_at_once_and_vars_stay_secret(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    party = ThirdParty("pagerduty")
    url = await party.serve(aiohttp_server)
    targets = [
        {"name": "out", "type": "console"},
        {
            "name": "pd",
            "type": "webhook",
            "url": url,
            "format": "template",
            "preset": "pagerduty",
            "vars": {"routing_key": ROUTING_KEY},
        },
        {
            "name": "broken",
            "type": "webhook",
            "url": url,
            "format": "template",
            "template": '{"t": {{ data.ticket | tojson }}, "k": {{ vars.k | tojson }}}',
            "vars": {"k": "an0ther-S3CRET"},
            "retry": {"max_attempts": 10, "base_delay_s": 0.01},
        },
    ]
    with capture_logs() as logs:
        rig = await make_rig(
            aiohttp_server, aiohttp_client, tmp_path, config={"targets": targets}, webhook=False
        )
        for name in ("pd", "broken"):
            resp = await rig.client.post(f"/api/v1/targets/{name}/test", headers=rig.auth)
            assert resp.status == 202

        async def deliveries(**params: str) -> list[dict[str, Any]]:
            resp = await rig.client.get("/api/v1/deliveries", headers=rig.auth, params=params)
            assert resp.status == 200
            items: list[dict[str, Any]] = (await resp.json())["items"]
            return items

        async def broken_dead() -> bool:
            return bool(await deliveries(state="dead", target="broken"))

        await wait_for(lambda: len(party.bodies) == 1, message="the pagerduty test arrived")
        # Each target has a dispatcher of its own: the pagerduty test arriving says
        # nothing of whether the broken target has claimed its test yet.
        await wait_for(broken_dead, message="the broken target's test dead")
        await rig.settle()
        dead = await deliveries(state="dead", target="broken")
        status = await (await rig.client.get("/api/v1/status", headers=rig.auth)).text()
        listing = json.dumps(await deliveries())

    [row] = dead
    assert row["attempts"] == 1  # no retry
    assert (
        "template error: UndefinedError: 'dict object' has no attribute 'ticket'"
        in (row["last_error"])
    )
    assert party.requests == 1  # the broken target sent nothing
    [pd_body] = party.bodies
    assert pd_body["routing_key"] == ROUTING_KEY  # the secret reaches the template
    failing = [e for e in logs if e.get("target") == "broken" and e["event"] == "delivery dead"]
    assert "no attribute 'ticket'" in failing[0]["error"]  # the error is logged…
    everything = json.dumps(logs, default=str) + status + listing
    for secret in (ROUTING_KEY, "an0ther-S3CRET"):
        assert secret not in everything  # …the secrets are not
