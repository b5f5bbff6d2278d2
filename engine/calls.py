"""One call loop for every request the engine makes: token, control plane and data plane.

Each caller says how to send once and how to judge an answer; this loop does the rest the same
way for all of them: transport failures and error answers become one
:class:`~engine.retry.Outcome`, the :class:`~engine.retry.RetryPolicy` value decides whether
and when to send again (every bound the user set holds, throttles included), and a call that
cannot go on raises the caller's error. Databricks' REST errors
(``{"error_code", "message"}``) and OAuth's (``{"error", "error_description"}``) are parsed
here, once.

What only the data plane does (bisection, the stopped-endpoint pause, capacity feedback) sits
on top, in :mod:`engine.dispatch`, as its ``send`` and ``judge``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import orjson

from engine.clock import Clock, Sleep
from engine.errors import TransportError, UsageError
from engine.retry import FailureKind, Outcome, RetryPolicy, Tally, parse_retry_after
from engine.transport import Response

__all__ = [
    "Caller",
    "HostCheck",
    "call",
    "config_error",
    "error_outcome",
    "malformed",
    "transport_outcome",
]

T = TypeVar("T")

#: What a caller hears before each retry: the outcome, the wait, the tally so far.
OnRetry = Callable[[Outcome, float, Tally], Awaitable[None]]
#: How much of a body that could not be used is quoted in messages.
QUOTE_CHARS = 120


async def call(
    send: Callable[[], Awaitable[Response]],
    judge: Callable[[Response], Awaitable[T | Outcome]],
    *,
    policy: RetryPolicy,
    give_up: Callable[[Outcome, Tally], BaseException],
    rng: random.Random,
    clock: Clock,
    sleep: Sleep,
    on_retry: OnRetry | None = None,
    noise: Callable[[], float | None] | None = None,
) -> T:
    """Send until ``judge`` accepts an answer, the policy gives up, or ``judge`` raises.

    Args:
        send: one attempt; raises :class:`~engine.errors.TransportError` when no answer came.
        judge: the answer's verdict: a result to return, or an :class:`Outcome` to retry (it
            may raise for an answer that must end the call, such as a refusal).
        give_up: the error to raise when the policy says no more.
        on_retry: told before each wait (for logs, stats and shared pauses).
        noise: for a throttle that is noise, the short wait before resending it, else None
            (``noise_wait_s`` of :meth:`RetryPolicy.decide`);
            asked after the answer was recorded, so it judges with that answer counted.
    """
    tally = Tally()
    started = clock()
    while True:
        try:
            response = await send()
        except TransportError as exc:
            outcome = transport_outcome(exc)
        else:
            verdict = await judge(response)
            if not isinstance(verdict, Outcome):
                return verdict
            outcome = verdict
        delay, tally = policy.decide(
            tally,
            outcome,
            rng,
            elapsed_s=clock() - started,
            noise_wait_s=None if noise is None else noise(),
        )
        if delay is None:
            raise give_up(outcome, tally)
        if on_retry is not None:
            await on_retry(outcome, delay, tally)
        if delay > 0:
            await sleep(delay)


@dataclass(frozen=True, slots=True)
class Caller:
    """What every call of one client shares: its policy, randomness, clock and sleep."""

    policy: RetryPolicy
    rng: random.Random
    clock: Clock
    sleep: Sleep

    async def call(
        self,
        send: Callable[[], Awaitable[Response]],
        judge: Callable[[Response], Awaitable[T | Outcome]],
        *,
        give_up: Callable[[Outcome, Tally], BaseException],
        on_retry: OnRetry | None = None,
        noise: Callable[[], float | None] | None = None,
    ) -> T:
        """:func:`call` with this client's settings."""
        return await call(
            send,
            judge,
            policy=self.policy,
            give_up=give_up,
            rng=self.rng,
            clock=self.clock,
            sleep=self.sleep,
            on_retry=on_retry,
            noise=noise,
        )


#: Connection failures that say the host is misconfigured (DNS, refused, TLS) before they are
#: taken for a configuration error (exit 2), when the host never answered.
MISCONFIGURED_TRIES = 2


@dataclass(slots=True)
class HostCheck:
    """Tells a misconfigured workspace host (a typo, a wrong port, https against http) from a
    passing failure: a host that never answered and fails that way is a configuration error
    after a second try, not after a minute of retries."""

    host: str
    answered: bool = False
    _misconfigured: int = field(default=0, repr=False)

    def failed(self, exc: TransportError) -> None:
        """Raises UsageError when ``exc`` says the host is misconfigured (a second time)."""
        error = None if self.answered else config_error(exc, self.host)
        if error is None:
            return
        self._misconfigured += 1
        if self._misconfigured >= MISCONFIGURED_TRIES:
            raise error from exc


def transport_outcome(exc: TransportError) -> Outcome:
    """A request that got no answer, as the retry policy sees it."""
    return Outcome(kind=FailureKind[exc.kind.upper()], message=str(exc))


def error_outcome(response: Response) -> Outcome:
    """An error answer, parsed once: Databricks' REST shape, OAuth's, or the start of a body
    that is not JSON; ``Retry-After`` in seconds."""
    try:
        doc = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        code = doc.get("error_code") or doc.get("error")
        message = str(doc.get("message") or doc.get("error_description") or "")
    else:
        code, message = None, quote(response.body)
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now=datetime.now(UTC))
    return Outcome(
        kind=FailureKind.STATUS,
        status=response.status,
        retry_after_s=retry_after,
        error_code=None if code is None else str(code),
        message=message[:300],
    )


def malformed(response: Response, why: str) -> Outcome:
    """A 200 whose body could not be used: retried like a 5xx, quoted when given up on."""
    return Outcome(
        kind=FailureKind.MALFORMED,
        status=response.status,
        message=f"{why}; the body starts {quote(response.body)!r}",
    )


def quote(body: bytes) -> str:
    """The start of a body, as text, for messages."""
    text = body[:QUOTE_CHARS].decode("utf-8", "replace")
    return text + ("…" if len(body) > QUOTE_CHARS else "")


def config_error(exc: TransportError, host: str) -> UsageError | None:
    """A connection failure that says the workspace host is misconfigured, as a usage error
    naming the fix (exit 2); None for failures that may pass (timeouts, resets)."""
    where = f"the workspace host {host}"
    fix = "check `host` (DATABRICKS_HOST)"
    if exc.cause == "dns":
        return UsageError(f"cannot resolve {where}: {fix} for a typo ({exc})")
    if exc.cause == "refused":
        return UsageError(
            f"nothing accepts connections at {where} (connection refused): {fix}, "
            "its port in particular"
        )
    if exc.cause == "tls" and "WRONG_VERSION_NUMBER" in str(exc).upper():
        return UsageError(
            f"{where} does not speak https on that port (it answered in plain http): {fix}; "
            "write http:// for a local emulator, or use the workspace's https URL"
        )
    if exc.cause == "tls":
        return UsageError(
            f"the TLS handshake with {where} failed ({exc}): {fix}, and the certificate "
            "authorities this machine trusts (REQUESTS_CA_BUNDLE / SSL_CERT_FILE)"
        )
    return None
