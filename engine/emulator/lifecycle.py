"""An endpoint's readiness over time: stopped, updating, ready. Pure: time is passed in.

``stop`` makes it NOT_READY / NOT_UPDATING at once; ``start`` makes a new config version
that is NOT_READY / IN_PROGRESS for ``start_duration_s``, then READY / NOT_UPDATING.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.emulator.apierror import ApiError

__all__ = ["EndpointState", "Lifecycle"]


@dataclass(frozen=True, slots=True)
class EndpointState:
    """A snapshot of an endpoint's state.

    Attributes:
        ready: ``READY`` or ``NOT_READY``.
        config_update: ``NOT_UPDATING`` or ``IN_PROGRESS``.
        deployment: the served entity's ``state.deployment``.
        config_version: the current config version.
    """

    ready: str
    config_update: str
    deployment: str
    config_version: int

    @property
    def is_ready(self) -> bool:
        """True when requests are served."""
        return self.ready == "READY"

    def describe(self) -> str:
        """``state: NOT_READY, config_update: IN_PROGRESS``."""
        return f"state: {self.ready}, config_update: {self.config_update}"


class Lifecycle:
    """The stop/start state machine of one endpoint."""

    def __init__(self, *, stopped: bool, start_duration_s: float) -> None:
        self.start_duration_s = start_duration_s
        self.config_version = 1
        self._stopped = stopped
        self._ready_at: float | None = None

    def state(self, now: float) -> EndpointState:
        """The state at ``now``."""
        if self._stopped:
            return EndpointState(
                "NOT_READY", "NOT_UPDATING", "DEPLOYMENT_ABORTED", self.config_version
            )
        if self._ready_at is not None and now < self._ready_at:
            return EndpointState(
                "NOT_READY", "IN_PROGRESS", "DEPLOYMENT_CREATING", self.config_version
            )
        return EndpointState("READY", "NOT_UPDATING", "DEPLOYMENT_READY", self.config_version)

    def stop(self, now: float, name: str) -> EndpointState:
        """Stop the endpoint (also while it is starting).

        Raises:
            ApiError: 400 ``INVALID_STATE`` when it is already stopped.
        """
        if self._stopped:
            raise ApiError(400, "INVALID_STATE", f"Endpoint {name} is already stopped.")
        self._stopped = True
        self._ready_at = None
        return self.state(now)

    def start(self, now: float, name: str) -> EndpointState:
        """Start a stopped endpoint: a new config version, ready after ``start_duration_s``.

        Raises:
            ApiError: 400 ``INVALID_STATE`` when it is not stopped.
        """
        if not self._stopped:
            current = self.state(now)
            raise ApiError(
                400,
                "INVALID_STATE",
                f"Endpoint {name} is not stopped ({current.describe()}); only a stopped "
                "endpoint can be started.",
            )
        self._stopped = False
        self.config_version += 1
        self._ready_at = now + self.start_duration_s
        return self.state(now)
