"""The `fleet-bridge` command line: argument parsing and exit codes, nothing else.

Exit codes: 0 clean stop, 2 invalid config or arguments (every problem on its own
line with its dotted path), 1 any other start-up failure (one clear sentence).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import yaml

from bridge import __version__
from bridge.settings import ConfigError, Settings, load_settings, masked_dump

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class StartupError(Exception):
    """A start-up failure that is not a config error (e.g. the store is unreachable)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fleet-bridge", description="VisionMax fleet safety events → webhooks.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            default=os.environ.get("BRIDGE_CONFIG"),
            help="config file (default: $BRIDGE_CONFIG)",
        )

    with_config(sub.add_parser("run", help="run the service until SIGTERM/SIGINT"))
    with_config(sub.add_parser("check", help="validate the config and print it, secrets masked"))

    sim = sub.add_parser("simulate", help="serve the upstream simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8099)
    sim.add_argument("--devices", type=int, default=20)
    sim.add_argument("--rate", type=float, default=0.2, help="new events per second")
    sim.add_argument("--backlog", type=int, default=0, help="events preloaded over 24 h")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--faults", default="", help="e.g. 500=0.05,429=0.02,slow=0.1")
    sim.add_argument("--api-key", default="sim-key")
    sim.add_argument("--token", default="sim-token")
    sim.add_argument("--base-time", type=float, default=None, help="pin the clock (Unix s)")
    sim.add_argument("--push-url", default=None, help="also POST vendor-style webhooks here")

    demo = sub.add_parser("demo", help="simulator + bridge + console target, no credentials")
    demo.add_argument("--duration", type=float, default=None, help="seconds, default forever")

    rep = sub.add_parser("replay", help="re-deliver stored notifications to one target")
    with_config(rep)
    rep.add_argument("--target", required=True)
    rep.add_argument("--since", required=True, help="ISO-8601 instant or duration (24h)")
    rep.add_argument("--until", default=None)

    sub.add_parser("version", help="print the version")
    return p


def _load(path: str | None) -> Settings:
    if not path:
        raise ConfigError(["--config: required (or set BRIDGE_CONFIG)"])
    return load_settings(path, warn=lambda line: print(f"warning: {line}", file=sys.stderr))


def _check(path: str | None) -> int:
    settings = _load(path)
    from bridge.formats.check import template_problems

    problems = template_problems(settings)
    if problems:
        raise ConfigError(problems)
    sys.stdout.write(yaml.safe_dump(masked_dump(settings), sort_keys=False))
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from bridge.simulator import FaultSpec, SimulatorConfig, serve_forever

    try:
        faults = FaultSpec.parse(args.faults)
    except ValueError as err:
        raise ConfigError([f"--faults: {err}"]) from None
    config = SimulatorConfig(
        devices=args.devices,
        rate=args.rate,
        backlog=args.backlog,
        seed=args.seed,
        faults=faults,
        api_key=args.api_key,
        token=args.token,
        base_time=args.base_time,
        push_url=args.push_url,
    )
    asyncio.run(serve_forever(config, host=args.host, port=args.port))
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "version":
            print(f"fleet-bridge {__version__}")
            return EXIT_OK
        case "check":
            return _check(args.config)
        case "simulate":
            return _simulate(args)
        case "run":
            settings = _load(args.config)
            from bridge.service import run_service

            return run_service(settings)
        case "demo":
            from bridge.demo import run_demo

            return run_demo(duration=args.duration)
        case "replay":
            settings = _load(args.config)
            from bridge.service import run_replay

            return run_replay(settings, args.target, args.since, args.until)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except StartupError as err:
        print(f"fleet-bridge: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
