"""Simulator settings: `SimulatorConfig` and the fault-injection spec `FaultSpec`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FAULT_KINDS: tuple[str, ...] = (
    "500",
    "503",
    "429",
    "slow",
    "timeout",
    "result_false",
    "malformed",
    "drop",
)
"""Every fault the simulator can inject, in the order rates are drawn."""

_FAULT_PARAMS = ("retry_after", "slow_s", "timeout_s")


@dataclass
class FaultSpec:
    """Per-request fault probabilities (0..1, summing to at most 1) and their knobs."""

    rates: dict[str, float] = field(default_factory=dict)
    retry_after: float = 1.0
    slow_s: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rates) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kind {unknown[0]!r} (known: {', '.join(FAULT_KINDS)})")
        for kind, rate in self.rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind}: rate must be between 0 and 1, got {rate}")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        for name in _FAULT_PARAMS:
            value = getattr(self, name)
            if not value >= 0 or math.isinf(value):
                raise ValueError(f"{name}: must be a finite number of seconds >= 0")

    @classmethod
    def parse(cls, spec: str) -> FaultSpec:
        """Parse `"500=0.05,429=0.02,slow=0.1,retry_after=2,slow_s=0.5"`; `""` means none."""
        rates: dict[str, float] = {}
        params: dict[str, float] = {}
        for raw in spec.split(","):
            part = raw.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"{part!r}: expected KIND=RATE or PARAM=SECONDS")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{key}: {value.strip()!r} is not a number") from None
            if math.isnan(number):
                raise ValueError(f"{key}: {value.strip()!r} is not a number")
            if key in _FAULT_PARAMS:
                params[key] = number
            elif key in FAULT_KINDS:
                rates[key] = number
            else:
                known = ", ".join((*FAULT_KINDS, *_FAULT_PARAMS))
                raise ValueError(f"unknown fault kind {key!r} (known: {known})")
        return cls(rates=rates, **params)


@dataclass
class SimulatorConfig:
    """What the simulator serves; every default matches `fleet-bridge simulate`."""

    devices: int = 20
    rate: float = 0.2
    """New live events per second of simulator clock time."""
    backlog: int = 0
    """Events preloaded, spread over the 24 h before the start time."""
    seed: int | None = None
    faults: FaultSpec = field(default_factory=FaultSpec)
    api_key: str = "sim-key"
    token: str = "sim-token"  # noqa: S105  (a well-known test credential)
    password: str = "sim-password"  # noqa: S105
    base_time: float | None = None
    """Pin the start clock (Unix s); default `clock.now()`."""
    push_url: str | None = None
    late_share: float = 0.1
    """Share of live events whose timestamp is 1-10 minutes before they arrive."""
    video_share: float = 0.6
    media_delay_s: tuple[float, float] = (30.0, 300.0)
    api_key_header: str = "X-Api-Key"
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    # Extensions beyond the original contract (defaults keep it unchanged):
    clip_step_s: float = 5.0
    """Simulator-clock seconds between two states of a videoClip task."""
    max_limit: int = 1000
    """Largest page `limit` accepted; larger is refused with 400, like a strict vendor."""
    push_interval_s: float = 1.0
    """How often (simulator clock) the push loop looks for news to post."""

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("devices: must be at least 1")
        if self.rate < 0 or self.backlog < 0:
            raise ValueError("rate and backlog: must not be negative")
        for name in ("late_share", "video_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1")
        low, high = self.media_delay_s
        if not 0 <= low <= high:
            raise ValueError("media_delay_s: expected (low, high) with 0 <= low <= high")
        if self.clip_step_s < 0 or self.max_limit < 1 or self.push_interval_s <= 0:
            raise ValueError("clip_step_s, max_limit, push_interval_s: out of range")
