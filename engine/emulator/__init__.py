"""A local stand-in for Databricks model serving: OAuth, control plane, route-optimized data plane.

Two ports: the workspace host (discovery, ``/oidc/v1/token``, ``/api/2.0/serving-endpoints``,
debug routes) and the data plane (``/<workspace-id>/serving-endpoints/<name>/invocations``).
Faults (rate limits, latency, errors, dropped connections, poison rows) are decided by a
seeded plan so runs repeat; every time-based rule reads an injectable clock.

Example:
    >>> async with Emulator(EmulatorConfig()) as emu:  # doctest: +SKIP
    ...     emu.set_faults("demo-regressor", Faults(qps_limit=100.0))
"""

from engine.emulator.clock import Clock, FakeClock, Sleep
from engine.emulator.config import (
    KEEP,
    EmulatorConfig,
    EndpointConfig,
    Faults,
    LimitStep,
    ServicePrincipal,
    TokenFaults,
)
from engine.emulator.models import POISON_TEXT, POISON_VALUE, Model
from engine.emulator.server import Emulator, EmulatorThread
from engine.emulator.signature import ColumnSpec, ParamSpec, Signature

__all__ = [
    "KEEP",
    "POISON_TEXT",
    "POISON_VALUE",
    "Clock",
    "ColumnSpec",
    "Emulator",
    "EmulatorConfig",
    "EmulatorThread",
    "EndpointConfig",
    "FakeClock",
    "Faults",
    "LimitStep",
    "Model",
    "ParamSpec",
    "ServicePrincipal",
    "Signature",
    "Sleep",
    "TokenFaults",
]
