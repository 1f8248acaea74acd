"""``GET /metrics``: the engine's counters and the store's counts in Prometheus text format.

Two sources: the process's instruments (``engine.instruments``: check-ins,
enrollments, update outcomes and durations, controller ticks, store errors),
summed across the worker processes of ``engine serve --workers N`` by
``prometheus_client``'s multiprocess mode; and gauges read from the store at
scrape time (devices by version and online state, rollouts by state, devices
of live rollouts by state), so every worker answers the same. Callers show
the metrics token (``.engine/metrics.token``) or the admin token
(docs/metrics.md says why there are two).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from engine.errors import StoreError
from engine.instruments import instruments
from engine.rollouts.model import LIVE_ROLLOUT_STATES, DeviceState, RolloutState
from engine.server._auth import bearer
from engine.server._http import refuse
from engine.server.state import ServerState
from engine.store.schema import reports, rollout_devices, rollouts

__all__ = ["CONTENT_TYPE", "ENV_MULTIPROC_DIR", "registry_for", "router"]

#: The text exposition format, version 0.0.4 (what Prometheus scrapes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

_LIVE = [s.value for s in LIVE_ROLLOUT_STATES]


class StoreCollector(Collector):
    """Gauges counted in the store at each scrape (one short read transaction)."""

    def __init__(self, state: ServerState) -> None:
        """Count in ``state``'s store; online means seen within its online window."""
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Devices by version and online state, rollouts by state, live rollouts' devices."""
        settings = self._state.settings
        since = settings.clock() - timedelta(seconds=settings.online_seconds)
        devices = GaugeMetricFamily(
            "engine_devices",
            "Devices by reported agent version and online state (seen within the online window)",
            labels=["version", "online"],
        )
        by_state = GaugeMetricFamily("engine_rollouts", "Rollouts by state", labels=["state"])
        rollout_devs = GaugeMetricFamily(
            "engine_rollout_devices",
            "Devices of live rollouts by rollout, release and device state",
            labels=["rollout", "release", "state"],
        )
        rd = rollout_devices
        with self._state.store.read() as conn:
            # Each query reads one index only (ix_reports_version_seen,
            # ix_rollout_devices_rollout_state): a scrape at 100k devices stays short.
            online = func.sum(case((reports.c.last_seen >= since, 1), else_=0))
            for version, n_online, n in conn.execute(
                select(reports.c.agent_version, online, func.count()).group_by(
                    reports.c.agent_version
                )
            ):
                label = version or "none"
                devices.add_metric([label, "true"], int(n_online or 0))
                devices.add_metric([label, "false"], int(n) - int(n_online or 0))
            every = conn.execute(
                select(rollouts.c.id, rollouts.c.name, rollouts.c.release, rollouts.c.state)
            ).all()
            live = {r.id: r for r in every if r.state in _LIVE}
            counts = (
                conn.execute(
                    select(rd.c.rollout_id, rd.c.state, func.count())
                    .where(rd.c.rollout_id.in_(list(live)))
                    .group_by(rd.c.rollout_id, rd.c.state)
                ).all()
                if live
                else []
            )
        seen: dict[str, int] = {}
        for r in every:
            seen[r.state] = seen.get(r.state, 0) + 1
        for s in RolloutState:
            by_state.add_metric([s.value], seen.get(s.value, 0))
        known = {s.value for s in DeviceState}
        per_label: dict[tuple[str, str, str], int] = {}
        for rollout_id, state, n in counts:
            r = live[rollout_id]
            if state in known:  # two live rollouts of one name (a re-apply) add up
                key = (r.name, r.release, state)
                per_label[key] = per_label.get(key, 0) + int(n)
        for labels, n in per_label.items():
            rollout_devs.add_metric(list(labels), n)
        yield devices
        yield by_state
        yield rollout_devs


class _Instruments(Collector):
    """This process's instruments, when there is no multiprocess directory to read."""

    def collect(self) -> Iterable[Metric]:
        """Every instrument's current samples."""
        m = instruments()
        for instrument in (
            m.checkins,
            m.enrollments,
            m.events,
            m.update_outcomes,
            m.update_duration,
            m.performance_failures,
            m.tick_duration,
            m.store_errors,
        ):
            yield from instrument.collect()


def registry_for(state: ServerState) -> CollectorRegistry:
    """The registry ``/metrics`` renders: instruments (every worker's) and store gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(ENV_MULTIPROC_DIR):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Instruments())
    registry.register(StoreCollector(state))
    return registry


def router(state: ServerState) -> APIRouter:
    """The ``/metrics`` route, bound to ``state``."""
    api = APIRouter(tags=["operator"])
    registry = registry_for(state)
    settings = state.settings
    accepted = [t.encode() for t in (settings.metrics_token, settings.admin_token) if t]

    @api.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"},
            401: {"description": "no token"},
            403: {"description": "neither the metrics token nor the admin token"},
            503: {"description": "the store cannot be read"},
        },
    )
    def metrics(request: Request) -> Response:
        """The engine's metrics in Prometheus text format (metrics token or admin token)."""
        token = bearer(request.headers.get("authorization")).encode()
        if not any(hmac.compare_digest(token, t) for t in accepted):
            refuse(403, "this token is neither the metrics token nor the admin token")
        try:
            body = generate_latest(registry)
        except StoreError:
            refuse(503, "the server cannot read its store; try again later", {"Retry-After": "5"})
        return Response(body, media_type=CONTENT_TYPE)

    return api
