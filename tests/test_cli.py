"""The command line as a user meets it: real processes, exit codes, stderr lines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from bridge import __version__


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def write_config(tmp_path: Path, cfg: dict[str, object]) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


GOOD = {
    "upstream": {
        "base_url": "https://fleet.example.com",
        "api_key": "${TEST_FLEET_KEY}",
        "auth": {"token": "tok-SECRET-123"},
    },
    "targets": [
        {
            "name": "hook",
            "type": "webhook",
            "url": "https://hooks.example.com/x",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        },
        {"name": "m", "type": "mqtt", "url": "mqtt://bridge:mqttPASS99@broker:1883"},
    ],
}


def test_version() -> None:
    out = run_cli("version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"fleet-bridge {__version__}"


def test_check_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD)
    out = run_cli("check", "--config", str(cfg), env={"TEST_FLEET_KEY": "key-SECRET-456"})
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["upstream"]["api_key"] == "**********"
    assert shown["upstream"]["auth"]["token"] == "**********"
    assert shown["targets"][0]["secret"] == "**********"
    assert shown["targets"][1]["url"] == "mqtt://bridge:**********@broker:1883"
    for secret in ("key-SECRET-456", "tok-SECRET-123", "mqttPASS99", "MfKQ9r8GKYqrTwjU"):
        assert secret not in out.stdout + out.stderr


def test_config_from_bridge_config_env(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD)
    out = run_cli("check", env={"BRIDGE_CONFIG": str(cfg), "TEST_FLEET_KEY": "k-123456"})
    assert out.returncode == 0, out.stderr


def test_invalid_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    bad = {
        "upstream": {"base_url": "not-a-url", "api_key": "${UNSET_X}", "auth": {"token": "t"}},
        "poll": {"events": {"interval_s": -1}},
        "targets": [{"name": "a", "type": "console"}, {"name": "a", "type": "console"}],
        "bogus": True,
    }
    out = run_cli("check", "--config", str(write_config(tmp_path, bad)))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    paths = {line.split(":")[0] for line in lines}
    assert paths == {
        "upstream.base_url",
        "upstream.api_key",
        "poll.events.interval_s",
        "targets[1].name",
        "bogus",
    }
    assert "Traceback" not in out.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    out = run_cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert "cannot read" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_config_given_exits_2() -> None:
    out = run_cli("run")
    assert out.returncode == 2
    assert "--config: required" in out.stderr


def test_bad_arguments_exit_2() -> None:
    out = run_cli("simulate", "--port", "notanumber")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_unreachable_store_exits_1_with_one_sentence(tmp_path: Path) -> None:
    cfg = {
        "upstream": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "k-1234",
            "auth": {"token": "t-1234"},
        },
        "store": {"url": "sqlite:////proc/no-such-dir/bridge.db"},
        "server": {"port": 0},
        "logging": {"format": "json", "level": "warning"},
    }
    out = run_cli("run", "--config", str(write_config(tmp_path, cfg)))
    assert out.returncode == 1
    assert "fleet-bridge: the store cannot be opened" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_store_path_that_is_a_directory_exits_1_with_one_sentence(tmp_path: Path) -> None:
    cfg = {
        "upstream": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "k-1234",
            "auth": {"token": "t-1234"},
        },
        "store": {"url": f"sqlite:///{tmp_path}"},
        "server": {"port": 0},
        "logging": {"format": "json", "level": "warning"},
    }
    out = run_cli("run", "--config", str(write_config(tmp_path, cfg)))
    assert out.returncode == 1
    assert out.stderr.startswith("fleet-bridge: the store cannot be opened")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_check_masks_credentials_in_urls_and_headers_and_warns_on_open_secret_files(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "api_key"
    key_file.write_text("key-FROM-FILE-77\n")
    key_file.chmod(0o644)
    cfg = {
        "upstream": {
            "base_url": "https://ops:basePW-SECRET@fleet.example.com",
            "auth_header": "X-Auth-Token",
            "api_key_file": str(key_file),
            "auth": {"token": "tok-SECRET-123"},
        },
        "targets": [
            {
                "name": "hook",
                "type": "webhook",
                "url": "https://u:hookPW-SECRET@hooks.example.com/x?token=qTOKEN-SECRET",
                "headers": {"Authorization": "Bearer hdr-SECRET-1"},
            }
        ],
    }
    out = run_cli("check", "--config", str(write_config(tmp_path, cfg)))
    assert out.returncode == 0, out.stderr
    for secret in ("basePW", "hookPW", "qTOKEN", "hdr-SECRET", "key-FROM-FILE"):
        assert secret not in out.stdout + out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["upstream"]["base_url"] == "https://ops:**********@fleet.example.com/"
    assert shown["targets"][0]["headers"] == {"Authorization": "**********"}
    warnings = out.stderr.strip().splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: upstream.api_key_file: secret file ")


def _run_config(store_url: str) -> dict[str, object]:
    return {
        "upstream": {"base_url": "http://127.0.0.1:9", "api_key": "k-1234", "auth": {"token": "t"}},
        "store": {"url": store_url},
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"format": "json", "level": "warning"},
    }


def test_unreachable_postgresql_exits_1_with_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://bridge:pg-SECRET-pw@127.0.0.1:{port}/bridge"
    out = run_cli("run", "--config", str(write_config(tmp_path, _run_config(url))))
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("fleet-bridge:")]
    assert len(lines) == 1, out.stderr
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/bridge" in lines[0]
    assert "Traceback" not in out.stderr
    assert "pg-SECRET-pw" not in out.stderr


def test_a_second_run_on_the_same_sqlite_file_exits_1_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    first_cfg = _run_config(f"sqlite:///{db}")
    first_cfg["server"] = {"host": "127.0.0.1", "port": port}
    (tmp_path / "first").mkdir()
    first = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config",
         str(write_config(tmp_path / "first", first_cfg))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # until the first one serves (it holds the file from before that)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                assert first.poll() is None, "the first run exited"
                assert time.monotonic() < deadline, "the first run never came up"
                time.sleep(0.1)  # polling a subprocess's port: no event to wait on
        second = run_cli(
            "run", "--config", str(write_config(tmp_path, _run_config(f"sqlite:///{db}")))
        )
        assert second.returncode == 1
        assert (
            f"another fleet-bridge is already running on the SQLite database {db}" in second.stderr
        )
        assert "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.wait(30)


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {
        "FLEET_API_KEY": "k-123456",
        "FLEET_TOKEN": "t-123456",
        "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "PD_ROUTING_KEY": "R0123456789abcdef0123456789abcde",
        "TEAMS_WORKFLOW_URL": "https://prod-00.westeurope.logic.azure.com/workflows/x",
        "DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/1/abc",
    }
    for name in ("example.yaml", "demo.yaml"):
        out = run_cli("check", "--config", str(root / "config" / name), env=env)
        assert out.returncode == 0, (name, out.stderr)
