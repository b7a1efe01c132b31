"""The upstream simulator: the VisionMax "Fleet - Safety" V2 API, served by aiohttp.

For tests, the demo, benchmarks, and anyone developing a receiver::

    sim = Simulator(SimulatorConfig(seed=1, backlog=1000), clock=FakeClock())
    server = await aiohttp_server(sim.app())
"""

from bridge.simulator.config import FAULT_KINDS, FaultSpec, SimulatorConfig
from bridge.simulator.core import RecordedRequest, Simulator
from bridge.simulator.data import Event
from bridge.simulator.server import serve_forever

__all__ = [
    "FAULT_KINDS",
    "Event",
    "FaultSpec",
    "RecordedRequest",
    "Simulator",
    "SimulatorConfig",
    "serve_forever",
]
