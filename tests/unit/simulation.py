"""A discrete-event endpoint and client, for the capacity finder's rules (no sockets, no clock).

The endpoint is as strict as real limiters: a token bucket with a burst as small as one
request, provisioned concurrency that refuses (429) or queues, limits that change on a
schedule, random 429s and 503s unrelated to load. The client applies a
:class:`~engine.adaptive.RateController` the way ``engine.dispatch.Pacer`` does: an in-flight
cap, then one FIFO released every ``1 / pace`` seconds at the pace current when each request
goes (:attr:`~engine.adaptive.RateController.pace`: the rate, or startup's spread over the
round trip; :func:`~engine.adaptive.turns_due`), with a timer that fires up to 1 ms late.
(The pacer's start-up also looks at the pace every 50 ms after a slow first round trip; the
simulation's latencies do not change that much, so it does not.)
Refused requests wait as the engine's default :class:`~engine.retry.RetryPolicy` says (a
429's ``Retry-After``; a refusal the controller judges noise a short jittered wait; else a
429 at least its default second, a 503 a jittered backoff) and go round again, first in line
for a slot; a refusal the controller takes for noise and told to wait long (a
``Retry-After``) leaves its worker free for the next request meanwhile (as
``engine.pipeline``). Everything is
seeded: a run is reproducible.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from engine.adaptive import RateController, turns_due
from engine.dispatch import FREE_PLACE_MIN_WAIT_S
from engine.retry import FailureKind, Outcome, RetryPolicy, Tally

#: (at_s, value): a limit that changes at ``at_s`` seconds into the run
Schedule = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Endpoint:
    """What the simulated endpoint does.

    Attributes:
        rate: token-bucket requests/s as a schedule ((0, R),) or None for no bucket.
        burst: the bucket's size in requests.
        concurrency: provisioned concurrency as a schedule, or None.
        concurrency_mode: past it, "429" (refuse) or "queue" (wait for a slot).
        latency_s: service time; plus up to ``jitter_s``.
        retry_after_s: the Retry-After sent with 429s, or None.
        throttle_noise: probability of a 429 unrelated to load.
        error_503_noise: probability of a 503 unrelated to load.
        answer_transit_s: an answer reaches the client up to this long after the endpoint
            freed the request's slot (the response on the wire, the client's loop busy):
            for that moment the client counts one more request in flight than the endpoint
            does. Against the emulator with 8 slots at 50 ms, 95 of the 166 requests sent
            with 9 in flight by the client's count were accepted. None by default (the
            grid and the scenarios were measured so); up to 2 ms on every answer, the grid
            meets issue 11's target on 49 endpoints of 135 instead of 56.
    """

    rate: Schedule | None = None
    burst: float = 1.0
    concurrency: Schedule | None = None
    concurrency_mode: str = "429"
    latency_s: float = 0.03
    jitter_s: float = 0.005
    retry_after_s: float | None = None
    throttle_noise: float = 0.0
    error_503_noise: float = 0.0
    answer_transit_s: float = 0.0

    def capacity(self, at: float) -> float:
        """Requests/s the endpoint can accept at ``at`` (infinite when unlimited)."""
        limits = [math.inf]
        if self.rate is not None:
            limits.append(_at(self.rate, at))
        if self.concurrency is not None:
            limits.append(_at(self.concurrency, at) / (self.latency_s + self.jitter_s / 2))
        return min(limits) * (1.0 - self.throttle_noise - self.error_503_noise)


def _at(schedule: Schedule, at: float) -> float:
    value = schedule[0][1]
    for start, step in schedule:
        if at >= start:
            value = step
    return value


@dataclass
class Result:
    """What a simulated run saw."""

    accepted: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    throttled: list[float] = field(default_factory=list)
    controller: RateController | None = None

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.accepted if start <= t < end)

    def throttle_share(self, start: float = 0.0, end: float = math.inf) -> float:
        sent = sum(1 for t in self.sent if start <= t < end)
        throttled = sum(1 for t in self.throttled if start <= t < end)
        return throttled / sent if sent else 0.0


class FixedPace(RateController):
    """A client told the limit: paced at ``max_rate`` from the first request, every request
    in flight it likes, and nothing it sees changes that (the yardstick for the finder:
    what the pacer and its timer allow at a pace chosen in advance). Its timer is the
    simulation's, up to ``timer_slack_s`` late, as the finder's: the engine's own pacer at a
    user's ``--qps`` cap wakes on time instead (``engine.aio.PreciseSleep``), so a told
    engine does better than this yardstick at turns 4 ms apart or more."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.in_flight_limit = float(self.max_in_flight)

    def on_success(
        self, now: float, latency_s: float | None = None, in_flight: int | None = None
    ) -> None:
        pass

    def on_throttle(
        self, now: float, latency_s: float | None = None, in_flight: int | None = None
    ) -> None:
        pass

    def noise_wait(self) -> float | None:
        return None  # each refusal waits as the retry policy says


def simulate(
    endpoint: Endpoint,
    *,
    seconds: float,
    workers: int = 64,
    seed: int = 1,
    timer_slack_s: float = 0.001,
    controller_type: type[RateController] = RateController,
    **settings: float,
) -> Result:
    """Drive ``controller_type(**settings)`` against ``endpoint`` for ``seconds``."""
    client = Client(workers=workers, controller_type=controller_type, settings=settings)
    (result,) = simulate_shared(
        endpoint, [client], seconds=seconds, seed=seed, timer_slack_s=timer_slack_s
    )
    return result


@dataclass(frozen=True)
class Client:
    """One job sending to the shared endpoint: its own controller, pacer and workers, from
    ``start_s`` until ``stop_s`` (then its workers send nothing new: the job is done)."""

    workers: int = 64
    start_s: float = 0.0
    stop_s: float = math.inf
    controller_type: type[RateController] = RateController
    settings: dict[str, float] = field(default_factory=dict)


def simulate_shared(
    endpoint: Endpoint,
    clients: list[Client],
    *,
    seconds: float,
    seed: int = 1,
    timer_slack_s: float = 0.001,
) -> list[Result]:
    """Drive several clients, each with a controller of its own, against one endpoint (one
    bucket, one set of slots): neighbours' jobs that each find the capacity left to them."""
    sim = _Sim(endpoint, random.Random(seed), timer_slack_s)
    results = []
    for client in clients:
        controller = client.controller_type(  # type: ignore[arg-type]
            max_in_flight=client.workers, **client.settings
        )
        results.append(sim.add_client(controller, client))
    sim.run(seconds)
    return results


class _Client:
    """A client's side: its controller applied the way ``engine.dispatch.Pacer`` does."""

    def __init__(self, sim: _Sim, index: int, controller: RateController, spec: Client) -> None:
        self.sim = sim
        self.tick_id = -(index + 1)  # its pacer's timer events
        self.controller = controller
        self.spec = spec
        self.result = Result(controller=controller)
        self.in_flight = 0
        self.blocked: list[int] = []
        self.paced: list[int] = []
        self.tick_pending = False
        self.next_at = 0.0
        self.policy = RetryPolicy()
        self.tallies: dict[int, Tally] = {}
        self.sending = 0  # sent and not answered yet
        self.level: dict[int, int] = {}  # worker -> requests in flight when it sent
        #: requests waiting to be sent again: their workers went on to the next request
        self.retrying: set[int] = set()

    def on_ready(self, now: float, worker: int) -> None:
        if now >= self.spec.stop_s:
            return  # the job is done: the worker sends nothing more
        controller = self.controller
        if self.in_flight >= int(controller.in_flight_limit):
            if worker in self.retrying:  # the oldest batch first, as engine.dispatch.Pacer
                self.blocked.insert(0, worker)
            else:
                self.blocked.append(worker)
            return
        self.in_flight += 1
        if not math.isfinite(controller.pace):
            self.send(now, worker)
            return
        self.paced.append(worker)
        if not self.tick_pending:
            self.tick_pending = True
            self.schedule_tick(max(now, self.next_at))

    def schedule_tick(self, at: float) -> None:
        self.sim.push(at + self.sim.rng.uniform(0, self.sim.timer_slack_s), self.tick_id, "tick")

    def on_tick(self, now: float) -> None:
        self.tick_pending = False
        if now >= self.spec.stop_s:  # the job is done: what waited for a turn is not sent
            self.paced.clear()
            return
        room = int(self.controller.in_flight_limit) - self.sending
        if room <= 0:  # as the pacer: wait for an answer to free a slot
            return
        due, self.next_at = turns_due(now, self.next_at, self.controller.turn_interval)
        due = min(due, room)
        while self.paced and due > 0:  # as the pacer
            self.send(now, self.paced.pop(0))
            due -= 1
        if self.paced:
            self.tick_pending = True
            self.schedule_tick(max(now, self.next_at))

    def answered(self, now: float, worker: int, status: int, latency_s: float) -> None:
        sim = self.sim
        self.in_flight -= 1
        self.sending -= 1
        level = self.level.pop(worker)
        for waiting in self.blocked:
            sim.push(now, waiting, "ready")
        self.blocked.clear()
        if self.paced and not self.tick_pending:  # a turn held for a free slot
            self.tick_pending = True
            sim.push(max(now, self.next_at), self.tick_id, "tick")
        if status == 200:
            self.result.accepted.append(now)
            self.controller.on_success(now, latency_s, level)
            self.tallies.pop(worker, None)
            if worker in self.retrying:
                self.retrying.discard(worker)  # that request is done; its worker went on
            else:
                sim.push(now, worker, "ready")
            return
        if status == 429:
            self.result.throttled.append(now)
            self.controller.on_throttle(now, latency_s, level)
        retry_after = sim.endpoint.retry_after_s if status == 429 else None
        outcome = Outcome(FailureKind.STATUS, status=status, retry_after_s=retry_after)
        noise_wait = self.controller.noise_wait()  # as engine.dispatch asks it
        delay, tally = self.policy.decide(
            self.tallies.pop(worker, Tally()), outcome, sim.rng, noise_wait_s=noise_wait
        )
        assert delay is not None, "the default policy gave up on a throttled request"
        if worker not in self.retrying and noise_wait is not None and (
            delay >= FREE_PLACE_MIN_WAIT_S
        ):
            # As engine.pipeline: a refusal that is noise, told to wait long, waits to be sent
            # again while its worker goes on to the next request (one read as the limit, or
            # resent after a round trip, holds its worker).
            sim.push(now, worker, "ready")
            worker = sim.add_worker(self)
            self.retrying.add(worker)
        self.tallies[worker] = tally
        sim.push(now + delay, worker, "ready")

    def send(self, now: float, worker: int) -> None:
        self.result.sent.append(now)
        self.sending += 1
        self.level[worker] = self.sending
        self.controller.on_send(now)
        arrive = now + self.sim.rng.uniform(0.0, 0.0002)
        self.sim.push(arrive, worker, "arrive", now)


class _Sim:
    """The endpoint (one bucket, one set of slots) and the clock every client shares."""

    def __init__(self, endpoint: Endpoint, rng: random.Random, timer_slack_s: float) -> None:
        self.endpoint = endpoint
        self.rng = rng
        self.timer_slack_s = timer_slack_s
        self.events: list[tuple[float, int, str, int, float]] = []
        self.seq = 0
        self.tokens = endpoint.burst
        self.bucket_at = 0.0
        self.slot_free_at: list[float] = []
        self.clients: list[_Client] = []
        self.owner: list[_Client] = []  # worker -> its client

    def add_client(self, controller: RateController, spec: Client) -> Result:
        client = _Client(self, len(self.clients), controller, spec)
        self.clients.append(client)
        for _ in range(spec.workers):
            self.push(spec.start_s, len(self.owner), "ready")
            self.owner.append(client)
        return client.result

    def add_worker(self, client: _Client) -> int:
        self.owner.append(client)
        return len(self.owner) - 1

    def push(self, at: float, worker: int, kind: str, sent_at: float = 0.0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, worker, sent_at))

    def run(self, seconds: float) -> None:
        while self.events:
            now, _, kind, worker, sent_at = heapq.heappop(self.events)
            if now > seconds:
                break
            if kind == "tick":
                self.clients[-worker - 1].on_tick(now)
                continue
            client = self.owner[worker]
            if kind == "ready":
                client.on_ready(now, worker)
            elif kind == "arrive":
                self.on_arrive(now, worker, sent_at)
            else:  # an answer: "200", "429", "503"
                client.answered(now, worker, int(kind), now - sent_at)

    # -- endpoint ------------------------------------------------------------------------

    def on_arrive(self, now: float, worker: int, sent_at: float) -> None:
        endpoint = self.endpoint
        if endpoint.rate is not None:
            rate = _at(endpoint.rate, now)
            self.tokens = min(endpoint.burst, self.tokens + (now - self.bucket_at) * rate)
            self.bucket_at = now
            if self.tokens < 1.0:
                return self.refuse(now, worker, 429, sent_at)
            self.tokens -= 1.0
        draw = self.rng.random()
        if draw < endpoint.throttle_noise:
            return self.refuse(now, worker, 429, sent_at)
        if draw < endpoint.throttle_noise + endpoint.error_503_noise:
            return self.refuse(now, worker, 503, sent_at)
        service = endpoint.latency_s + self.rng.uniform(0.0, endpoint.jitter_s)
        start = now
        if endpoint.concurrency is not None:
            slots = int(_at(endpoint.concurrency, now))
            self.slot_free_at = sorted(t for t in self.slot_free_at if t > now)
            if len(self.slot_free_at) >= slots:
                if endpoint.concurrency_mode == "429":
                    return self.refuse(now, worker, 429, sent_at)
                start = self.slot_free_at[len(self.slot_free_at) - slots]
            self.slot_free_at.append(start + service)
        transit = (
            self.rng.uniform(0.0, endpoint.answer_transit_s) if endpoint.answer_transit_s else 0.0
        )
        self.push(start + service + transit, worker, "200", sent_at)
        return None

    def refuse(self, now: float, worker: int, status: int, sent_at: float) -> None:
        self.push(now + 0.002, worker, str(status), sent_at)
