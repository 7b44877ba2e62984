"""Benchmarks: the plugin against hand-written mark-as-read and against the floor (issue 6).

``make bench`` (or ``.venv/bin/python benchmarks/run.py``) starts the fake LINE
platform in a separate process, then measures scenarios S1-S6 with every
variant interleaved within each repetition (see ``docs/benchmarks.md``).  It
prints a table and writes ``benchmarks/results.json`` and its chart,
``benchmarks/results.svg`` (``bench_chart``).  ``--smoke`` runs tiny
counts in a few seconds and is what CI runs; it asserts no timings.

All traffic goes to 127.0.0.1.  Every loop is bounded in count, every request
has a timeout and the whole run has a deadline (``--max-seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import bench_variants as bv
from bench_chart import chart_svg
from bench_platform import PlatformProcess
from bench_report import SCHEMA_VERSION, machine, percentile, ratio, summary, table_lines, target
from linebot.v3.messaging import Configuration

from line_markread.testing import follow_event, signed_body, text_event

T = TypeVar("T")
Body = tuple[str, str]
HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("S1", "S2", "S3", "S3c", "S4", "S5", "S6", "S7", "S8")
FIVE = ("naive-sync", "naive-async", "plugin-sync", "plugin-async", "floor")


@dataclasses.dataclass(frozen=True)
class Config:
    smoke: bool = False
    repetitions: int = 5
    latency_ms: float = 20.0
    s12_bodies: int = 10
    s3_bodies: int = 2000
    s3c_in_flight: int = 50
    s4_events: int = 2000
    s5_parallel: int = 100
    s6_messages: int = 100_000
    s6_chats: int = 20_000
    s6_max_tracked_chats: int | None = None
    s6_contrast: bool = True
    s7_bodies: int = 50
    s8_runs: int = 10
    warmup: int = 20
    scenarios: tuple[str, ...] = SCENARIOS
    max_seconds: float = 900.0
    measurement_timeout: float = 180.0

    @classmethod
    def smoke_config(cls) -> Config:
        return cls(
            smoke=True,
            repetitions=2,
            s12_bodies=1,
            s3_bodies=20,
            s3c_in_flight=5,
            s4_events=20,
            s5_parallel=10,
            s6_messages=1000,
            s6_chats=200,
            s6_max_tracked_chats=100,
            s7_bodies=3,
            s8_runs=1,
            warmup=1,
            max_seconds=120.0,
            measurement_timeout=60.0,
        )


# -- webhook bodies ------------------------------------------------------


def _signed(*events: dict[str, Any]) -> Body:
    return signed_body(*events, channel_secret=bv.CHANNEL_SECRET)


def bodies_many_users(count: int, per_body: int) -> list[Body]:
    """*count* bodies of *per_body* text messages, each message from a new user."""
    return [_signed(*(text_event() for _ in range(per_body))) for _ in range(count)]


def bodies_one_user(count: int, per_body: int) -> list[Body]:
    """*count* bodies of *per_body* text messages, all of a body from one new user."""
    bodies = []
    for _ in range(count):
        user = text_event()["source"]["userId"]
        bodies.append(_signed(*(text_event(user_id=user) for _ in range(per_body))))
    return bodies


def bodies_follow(count: int) -> list[Body]:
    return [_signed(follow_event()) for _ in range(count)]


# -- the harness ---------------------------------------------------------


class Bench:
    def __init__(self, config: Config, platform: PlatformProcess) -> None:
        self.config = config
        self.platform = platform
        self.configuration = Configuration(host=platform.url, access_token=platform.access_token)
        self.loop = asyncio.new_event_loop()
        self.started = time.monotonic()

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def check_deadline(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.config.max_seconds:
            raise TimeoutError(
                f"benchmark run exceeded --max-seconds={self.config.max_seconds:.0f} "
                f"({elapsed:.0f} s); use smaller sizes or fewer repetitions"
            )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the harness loop, bounded by the measurement timeout."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, self.config.measurement_timeout))

    def build(self, name: str, probe: bv.Probe, **options: Any) -> bv.Variant:
        cfg = self.configuration

        async def on_loop() -> bv.Variant:
            # Async clients must be created on the loop that will use them.
            builders: dict[str, Callable[[], bv.Variant]] = {
                "naive-sync": lambda: bv.naive_sync(cfg, probe),
                "naive-async": lambda: bv.naive_async(cfg, probe),
                "plugin-sync": lambda: bv.plugin_sync(cfg, probe, **options),
                "plugin-async": lambda: bv.plugin_async(cfg, probe, **options),
                "floor": lambda: bv.floor(cfg, probe),
                "sdk-sync": lambda: bv.sdk_sync(probe),
                "sdk-async": lambda: bv.sdk_async(probe),
            }
            return builders[name]()

        return self.run(on_loop())

    # Ways of feeding bodies to a variant.

    def sequential(self, variant: bv.Variant, bodies: Sequence[Body]) -> tuple[float, list[float]]:
        """One body after another: (total seconds, seconds per body)."""
        self.check_deadline()
        clock = time.perf_counter
        per_body: list[float] = []
        if variant.sync is not None:
            handle = variant.sync
            began = clock()
            for body, signature in bodies:
                start = clock()
                handle(body, signature)
                per_body.append(clock() - start)
            return clock() - began, per_body
        assert variant.aio is not None
        ahandle = variant.aio

        async def go() -> float:
            began = clock()
            for body, signature in bodies:
                start = clock()
                await ahandle(body, signature)
                per_body.append(clock() - start)
            return clock() - began

        return self.run(go()), per_body

    def concurrent(self, variant: bv.Variant, bodies: Sequence[Body], width: int) -> float:
        """*width* bodies in flight at once (coroutines, or threads for sync): total seconds."""
        self.check_deadline()
        clock = time.perf_counter
        if variant.sync is not None:
            handle = variant.sync
            lock = threading.Lock()
            feed = iter(bodies)

            def next_body() -> Body | None:
                with lock:
                    return next(feed, None)

            def worker() -> None:
                item = next_body()
                while item is not None:
                    handle(*item)
                    item = next_body()

            began = clock()
            with ThreadPoolExecutor(max_workers=width) as pool:
                futures = [pool.submit(worker) for _ in range(width)]
                for future in futures:
                    future.result(timeout=self.config.measurement_timeout)
            return clock() - began
        assert variant.aio is not None
        ahandle = variant.aio
        afeed: Iterator[Body] = iter(bodies)

        async def aworker() -> None:
            for body, signature in afeed:
                await ahandle(body, signature)

        async def go() -> float:
            began = clock()
            await asyncio.gather(*(aworker() for _ in range(width)))
            return clock() - began

        return self.run(go())

    def start_delays(self, variant: bv.Variant, count: int) -> list[float]:
        """*count* single-message bodies one after another: seconds from each call to its start."""
        self.check_deadline()
        clock = time.perf_counter
        probe = variant_probe[variant.name]
        delays: list[float] = []
        for body in bodies_many_users(count, 1):
            probe.start_recording()
            called = clock()
            if variant.sync is not None:
                variant.sync(*body)
            else:
                self.run(_call_async(variant, body))
            starts = probe.stop_recording()
            if len(starts) != 1:
                raise RuntimeError(f"{variant.name}: {len(starts)} handlers ran for one body")
            delays.append(next(iter(starts.values())) - called)
        return delays

    def parallel_start_delays(self, variant: bv.Variant, bodies: Sequence[Body]) -> list[float]:
        """All *bodies* arrive at once; seconds from arrival to each handler's start."""
        self.check_deadline()
        clock = time.perf_counter
        probe = variant_probe[variant.name]
        probe.start_recording()
        arrived = [0.0]
        if variant.sync is not None:
            handle = variant.sync
            errors: list[BaseException] = []
            barrier = threading.Barrier(len(bodies), action=lambda: arrived.__setitem__(0, clock()))

            def one(body: str, signature: str) -> None:
                try:
                    barrier.wait(timeout=self.config.measurement_timeout)
                    handle(body, signature)
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=one, args=item, daemon=True) for item in bodies]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=self.config.measurement_timeout)
            if errors or any(t.is_alive() for t in threads):
                raise RuntimeError(f"{variant.name}: parallel run failed: {errors[:1]!r}")
        else:
            assert variant.aio is not None
            ahandle = variant.aio

            async def go() -> None:
                arrived[0] = clock()
                await asyncio.gather(*(ahandle(body, sig) for body, sig in bodies))

            self.run(go())
        starts = probe.stop_recording()
        if len(starts) != len(bodies):
            raise RuntimeError(f"{variant.name}: {len(starts)} handlers ran for {len(bodies)}")
        return [start - arrived[0] for start in starts.values()]


variant_probe: dict[str, bv.Probe] = {}


async def _call_async(variant: bv.Variant, body: Body) -> None:
    assert variant.aio is not None
    await variant.aio(*body)


class Scenario:
    """Build the variants, warm them up, run the repetitions interleaved, close them."""

    def __init__(
        self,
        bench: Bench,
        names: Sequence[str],
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.bench = bench
        self.names = list(names)
        self.variants: dict[str, bv.Variant] = {}
        for name in self.names:
            probe = variant_probe[name] = bv.Probe()
            base = name.split("[")[0]
            self.variants[name] = bench.build(base, probe, **(options or {}).get(name, {}))
            self.variants[name].name = name

    def order(self, repetition: int) -> list[str]:
        """Rotate the variants each repetition, so none is always first (or last)."""
        shift = repetition % len(self.names)
        return self.names[shift:] + self.names[:shift]

    def close(self) -> None:
        for variant in self.variants.values():
            self.bench.run(variant.aclose())


# -- scenarios -----------------------------------------------------------


def _scenario(sid: str, title: str, params: dict[str, Any], **layout: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "title": title,
        "params": params,
        "columns": layout.get("columns", []),
        "extra_columns": layout.get("extra_columns", []),
        "variants": {},
        "ratios": {},
        "targets": [],
        "notes": [],
    }


def _median(result: dict[str, Any], variant: str, metric: str) -> float | None:
    entry = result["variants"].get(variant, {}).get("metrics", {}).get(metric)
    return None if entry is None else entry["median"]


def _stats_info(variant: bv.Variant) -> dict[str, Any]:
    if variant.stats is None:
        return {}
    stats = variant.stats()
    return {
        "plugin_requests": stats.requests,
        "plugin_failed": stats.failed,
        "plugin_timed_out": stats.timed_out,
    }


def scenario_per_body(bench: Bench, sid: str) -> dict[str, Any]:
    """S1 (10 users in one body) and S2 (one user, 10 messages): wall time per body."""
    config = bench.config
    per_body = 10
    build = bodies_many_users if sid == "S1" else bodies_one_user

    def make(count: int) -> list[Body]:
        return build(count, per_body)

    title = (
        "one body, 10 messages from 10 users" if sid == "S1" else "one body, 10 messages, one user"
    ) + f", API latency {config.latency_ms:g} ms"
    result = _scenario(
        sid,
        title,
        {"messages_per_body": per_body, "bodies_per_repetition": config.s12_bodies,
         "latency_ms": config.latency_ms},
        columns=[("per_body_s", "wall time per body", "s")],
        extra_columns=["requests_per_body"],
    )  # fmt: skip
    bench.platform.set_latency(config.latency_ms / 1000)
    scenario = Scenario(bench, FIVE)
    samples: dict[str, list[float]] = {name: [] for name in FIVE}
    requests: dict[str, list[int]] = {name: [] for name in FIVE}
    try:
        for variant in scenario.variants.values():
            bench.sequential(variant, make(min(config.warmup, 3)))
        for repetition in range(config.repetitions):
            for name in scenario.order(repetition):
                bodies = make(config.s12_bodies)
                before = bench.platform.mark_count()
                _, per = bench.sequential(scenario.variants[name], bodies)
                requests[name].append(bench.platform.mark_count() - before)
                samples[name].append(statistics.median(per))
        for name in FIVE:
            result["variants"][name] = {
                "metrics": {"per_body_s": summary(samples[name])},
                "info": {
                    "requests_per_body": sum(requests[name])
                    / (config.repetitions * config.s12_bodies),
                    **_stats_info(scenario.variants[name]),
                },
            }
    finally:
        scenario.close()

    def med(variant: str) -> float | None:
        return _median(result, variant, "per_body_s")

    for naive, plugin in (("naive-sync", "plugin-sync"), ("naive-async", "plugin-async")):
        result["ratios"][f"{naive} / {plugin}"] = ratio(med(naive), med(plugin))
        result["targets"].append(
            target(f"{sid} {naive} / {plugin}", ratio(med(naive), med(plugin)), ">=", 9.5)
        )
    for plugin in ("plugin-sync", "plugin-async"):
        result["ratios"][f"{plugin} / floor"] = ratio(med(plugin), med("floor"))
    if sid == "S2":
        for plugin in ("plugin-sync", "plugin-async"):
            value = result["variants"][plugin]["info"]["requests_per_body"]
            result["targets"].append(target(f"S2 {plugin} requests per body", value, "==", 1.0))
    return result


FEATURES_OFF = ("plugin-sync[features off]", "plugin-async[features off]")


def scenario_throughput(bench: Bench, sid: str) -> dict[str, Any]:
    """S3 (one body after another) and S3c (many in flight): events per second at latency 0.

    Also the process CPU time per event (``time.process_time``: every thread of
    this process, the plugin's loop thread included; the fake runs elsewhere),
    and, in S3, the same plugin with the newer per-handler features explicitly off.
    """
    config = bench.config
    width = 1 if sid == "S3" else config.s3c_in_flight
    count = config.s3_bodies
    how = "one after another" if width == 1 else f"{width} in flight at once (threads for sync)"
    result = _scenario(
        sid,
        f"{count:,} single-message bodies, {how}, API latency 0",
        {"bodies": count, "in_flight": width, "latency_ms": 0},
        columns=[
            ("events_per_s", "events/s", "events/s"),
            ("cpu_us_per_event", "CPU per event", "us"),
        ],
        extra_columns=["requests_per_event"],
    )
    names = list(FIVE)
    options: dict[str, dict[str, Any]] = {}
    if sid == "S3":
        if bv.features_available():
            names += FEATURES_OFF
            options = {name: {"add_options": bv.FEATURE_OFF_OPTIONS} for name in FEATURES_OFF}
        else:
            result["notes"].append(
                "features-off rows skipped: this line_markread's WebhookHandler.add takes no "
                f"{'/'.join(bv.FEATURE_OFF_OPTIONS)} keywords yet"
            )
    bench.platform.set_latency(0.0)
    scenario = Scenario(bench, names, options)
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    requests: dict[str, int] = dict.fromkeys(names, 0)
    try:
        for variant in scenario.variants.values():
            bench.concurrent(variant, bodies_many_users(config.warmup, 1), min(width, 4))
        for repetition in range(config.repetitions):
            for name in scenario.order(repetition):
                bodies = bodies_many_users(count, 1)
                before = bench.platform.mark_count()
                cpu_before = time.process_time()
                if width == 1:
                    elapsed, _ = bench.sequential(scenario.variants[name], bodies)
                else:
                    elapsed = bench.concurrent(scenario.variants[name], bodies, width)
                cpu[name].append((time.process_time() - cpu_before) / count * 1e6)
                requests[name] += bench.platform.mark_count() - before
                samples[name].append(count / elapsed)
            bench.platform.reset()
        for name in names:
            result["variants"][name] = {
                "metrics": {
                    "events_per_s": summary(samples[name]),
                    "cpu_us_per_event": summary(cpu[name]),
                },
                "info": {
                    "requests_per_event": requests[name] / (count * config.repetitions),
                    **_stats_info(scenario.variants[name]),
                },
            }
    finally:
        scenario.close()

    _throughput_verdicts(result, sid)
    return result


def _throughput_verdicts(result: dict[str, Any], sid: str) -> None:
    """Ratios and issue 13's targets of S3/S3c."""

    def med(variant: str) -> float | None:
        return _median(result, variant, "events_per_s")

    def cpu_med(variant: str) -> float | None:
        return _median(result, variant, "cpu_us_per_event")

    for plugin in ("plugin-async", "plugin-sync"):
        result["ratios"][f"{plugin} / floor"] = ratio(med(plugin), med("floor"))
        result["ratios"][f"{plugin} CPU per event / floor's"] = ratio(
            cpu_med(plugin), cpu_med("floor")
        )
        kind = plugin.split("-")[1]
        result["ratios"][f"{plugin} / naive-{kind}"] = ratio(med(plugin), med(f"naive-{kind}"))
    if sid != "S3":
        r = ratio(med("plugin-async"), med("floor"))
        result["targets"].append(target("S3c plugin-async / floor", r, ">=", 1.0))
        return
    for plugin, bound in (("plugin-async", 1.0), ("plugin-sync", 0.9)):
        r = ratio(med(plugin), med("floor"))
        result["targets"].append(target(f"S3 {plugin} / floor", r, ">=", bound))
    for off in FEATURES_OFF:
        if off in result["variants"]:
            plain = off.split("[")[0]
            result["ratios"][f"{off} / {plain}"] = ratio(med(off), med(plain))
            off_cpu, plain_cpu = cpu_med(off), cpu_med(plain)
            if off_cpu is not None and plain_cpu is not None:
                result["ratios"][f"{off} CPU per event - {plain}'s (us)"] = off_cpu - plain_cpu


def scenario_follow(bench: Bench) -> dict[str, Any]:
    """S4: events with nothing to mark cost (almost) nothing more than the plain SDK."""
    config = bench.config
    names = ("sdk-sync", "plugin-sync", "sdk-async", "plugin-async")
    result = _scenario(
        "S4",
        f"{config.s4_events:,} follow events (nothing to mark), one body after another",
        {"bodies": config.s4_events},
        columns=[("events_per_s", "events/s", "events/s")],
        extra_columns=["requests"],
    )
    scenario = Scenario(bench, names)
    samples: dict[str, list[float]] = {name: [] for name in names}
    requests: dict[str, int] = dict.fromkeys(names, 0)
    try:
        for variant in scenario.variants.values():
            bench.sequential(variant, bodies_follow(config.warmup))
        for repetition in range(config.repetitions):
            for name in scenario.order(repetition):
                bodies = bodies_follow(config.s4_events)
                before = bench.platform.mark_count()
                elapsed, _ = bench.sequential(scenario.variants[name], bodies)
                requests[name] += bench.platform.mark_count() - before
                samples[name].append(config.s4_events / elapsed)
        for name in names:
            result["variants"][name] = {
                "metrics": {"events_per_s": summary(samples[name])},
                "info": {"requests": requests[name]},
            }
    finally:
        scenario.close()

    def med(variant: str) -> float | None:
        return _median(result, variant, "events_per_s")

    for kind in ("sync", "async"):
        # Time overhead: how much longer the plugin takes per event than the plain SDK.
        speed = ratio(med(f"sdk-{kind}"), med(f"plugin-{kind}"))
        overhead = None if speed is None else speed - 1.0
        result["ratios"][f"plugin-{kind} overhead vs sdk-{kind}"] = overhead
        result["targets"].append(target(f"S4 plugin-{kind} overhead", overhead, "<=", 0.05))
    return result


def scenario_parallel(bench: Bench) -> dict[str, Any]:
    """S5: many bodies at once; how long until each handler starts."""
    config = bench.config
    n = config.s5_parallel
    latency = config.latency_ms
    names = [*FIVE, "plugin-async[max_concurrency=128]"]
    result = _scenario(
        "S5",
        f"{n} single-message bodies from {n} users at once (threads for sync), "
        f"API latency {latency:g} ms",
        {"bodies": n, "latency_ms": latency},
        columns=[("p50_ms", "start delay p50", "ms"), ("p99_ms", "start delay p99", "ms")],
        extra_columns=["requests_per_body"],
    )
    result["notes"].append(
        "plugin-async[max_concurrency=128] is a diagnostic run: default options "
        "except max_concurrency (100 by default)"
    )
    bench.platform.set_latency(latency / 1000)
    options = {"plugin-async[max_concurrency=128]": {"max_concurrency": 128}}
    scenario = Scenario(bench, names, options)
    p50: dict[str, list[float]] = {name: [] for name in names}
    p99: dict[str, list[float]] = {name: [] for name in names}
    requests: dict[str, int] = dict.fromkeys(names, 0)
    try:
        for variant in scenario.variants.values():
            bench.parallel_start_delays(variant, bodies_many_users(min(n, 10), 1))
        for repetition in range(config.repetitions):
            for name in scenario.order(repetition):
                bodies = bodies_many_users(n, 1)
                before = bench.platform.mark_count()
                delays = bench.parallel_start_delays(scenario.variants[name], bodies)
                requests[name] += bench.platform.mark_count() - before
                p50[name].append(percentile(delays, 0.50) * 1000)
                p99[name].append(percentile(delays, 0.99) * 1000)
        for name in names:
            result["variants"][name] = {
                "metrics": {"p50_ms": summary(p50[name]), "p99_ms": summary(p99[name])},
                "info": {
                    "requests_per_body": requests[name] / (n * config.repetitions),
                    **_stats_info(scenario.variants[name]),
                },
            }
    finally:
        scenario.close()
    # Issue 13: 1.5 x the latency + 5 ms, or the floor's own p99 if that is higher.
    floor_p99 = _median(result, "floor", "p99_ms")
    bound = max(1.5 * latency + 5.0, floor_p99 if floor_p99 is not None else 0.0)
    result["notes"].append(
        f"S5 bound: max(1.5 x {latency:g} ms + 5 ms, floor p99) = {bound:.1f} ms"
    )
    for plugin in ("plugin-sync", "plugin-async", "plugin-async[max_concurrency=128]"):
        value = _median(result, plugin, "p99_ms")
        result["targets"].append(target(f"S5 {plugin} p99 start delay (ms)", value, "<=", bound))
        result["ratios"][f"{plugin} p99 / floor p99"] = ratio(
            value, _median(result, "floor", "p99_ms")
        )
    return result


def scenario_handler_start(bench: Bench) -> dict[str, Any]:
    """S7: single-message bodies one after another at 20 ms: from handle() to the handler's start.

    The user-visible cost of a mark that must land before the handler: about
    one round trip for everyone; what differs is the work around it (the
    plugin builds the SDK models while its request is in flight).
    """
    config = bench.config
    latency = config.latency_ms
    result = _scenario(
        "S7",
        f"{config.s7_bodies} single-message bodies one after another, API latency {latency:g} ms: "
        "delay from the call to the handler's start",
        {"bodies": config.s7_bodies, "latency_ms": latency},
        columns=[("start_ms", "handler start p50", "ms")],
    )
    bench.platform.set_latency(latency / 1000)
    scenario = Scenario(bench, FIVE)
    starts: dict[str, list[float]] = {name: [] for name in FIVE}
    try:
        for variant in scenario.variants.values():
            bench.sequential(variant, bodies_many_users(min(config.warmup, 3), 1))
        for repetition in range(config.repetitions):
            for name in scenario.order(repetition):
                delays = bench.start_delays(scenario.variants[name], config.s7_bodies)
                starts[name].append(statistics.median(delays) * 1000)
        for name in FIVE:
            result["variants"][name] = {"metrics": {"start_ms": summary(starts[name])}}
    finally:
        scenario.close()
    floor_start = _median(result, "floor", "start_ms")
    for plugin in ("plugin-sync", "plugin-async"):
        value = _median(result, plugin, "start_ms")
        result["ratios"][f"{plugin} / floor"] = ratio(value, floor_start)
        result["targets"].append(
            target(f"S7 {plugin} median handler start / floor's", ratio(value, floor_start),
                   "<=", 1.0)
        )  # fmt: skip
    return result


STARTUP_COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import line_markread": ["-c", "import line_markread"],
    "line-markread --help": ["-m", "line_markread", "--help"],
    "pytest, plugin disabled": ["-m", "pytest", "-q", "-p", "no:line_markread", "-p",
                                "no:cacheprovider", "--collect-only", "{test}"],
    "pytest, plugin enabled": ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--collect-only", "{test}"],
}  # fmt: skip


def scenario_startup(bench: Bench) -> dict[str, Any]:
    """S8: start-up wall time of fresh processes: the CLI, and what the pytest plugin adds."""
    config = bench.config
    result = _scenario(
        "S8",
        f"start-up of fresh processes, {config.s8_runs} runs each "
        "(pytest collects one trivial test)",
        {"runs": config.s8_runs},
        columns=[("wall_ms", "wall time", "ms")],
    )
    with tempfile.TemporaryDirectory() as scratch:
        test = os.path.join(scratch, "test_trivial.py")
        with open(test, "w") as f:
            f.write("def test_trivial():\n    pass\n")
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        times: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
        for run_index in range(config.s8_runs):
            names = list(STARTUP_COMMANDS)
            shift = run_index % len(names)
            for name in names[shift:] + names[:shift]:
                bench.check_deadline()
                argv = [sys.executable] + [
                    a.replace("{test}", test) for a in STARTUP_COMMANDS[name]
                ]
                began = time.perf_counter()
                subprocess.run(argv, cwd=scratch, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=True, timeout=120)  # fmt: skip
                times[name].append((time.perf_counter() - began) * 1000)
    for name in STARTUP_COMMANDS:
        result["variants"][name] = {"metrics": {"wall_ms": summary(times[name])}}

    def med(name: str) -> float | None:
        return _median(result, name, "wall_ms")

    def difference(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    result["ratios"]["pytest start-up added by the plugin (ms)"] = difference(
        med("pytest, plugin enabled"), med("pytest, plugin disabled")
    )
    result["ratios"]["line-markread --help beyond the interpreter (ms)"] = difference(
        med("line-markread --help"), med("python -c pass")
    )
    result["notes"].append(
        "no target in issue 13: measured for the import-time work (lazy imports)"
    )
    return result


def _memory_child(bench: Bench, max_tracked_chats: int | None) -> dict[str, Any]:
    config = bench.config
    options = {
        "url": bench.platform.url,
        "access_token": bench.platform.access_token,
        "messages": config.s6_messages,
        "chats": config.s6_chats,
        "max_tracked_chats": max_tracked_chats,
    }
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    remaining = config.max_seconds - (time.monotonic() - bench.started)
    timeout = max(30.0, min(remaining, 600.0))
    with subprocess.Popen(
        [sys.executable, os.path.join(HERE, "bench_memory.py"), json.dumps(options)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        deadline = time.monotonic() + timeout
        # The fake records every request; forget them as we go so its memory stays flat.
        while child.poll() is None:
            if time.monotonic() > deadline:
                child.kill()
                raise TimeoutError(f"S6 child did not finish within {timeout:.0f} s")
            time.sleep(0.5)
            bench.platform.reset()
        out = child.stdout.read() if child.stdout is not None else ""
    if child.returncode != 0:
        raise RuntimeError(f"S6 child failed with exit code {child.returncode}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def scenario_memory(bench: Bench) -> dict[str, Any]:
    """S6: peak RSS growth over many messages and chats, in a clean child process."""
    config = bench.config
    bench.platform.set_latency(0.0)
    bound = config.s6_max_tracked_chats
    result = _scenario(
        "S6",
        f"{config.s6_messages:,} messages over {config.s6_chats:,} chats "
        "(plugin-async, 10 per body, 8 bodies in flight), in a child process",
        {"messages": config.s6_messages, "chats": config.s6_chats},
        columns=[("peak_rss_growth_mb", "peak RSS growth", "MB")],
        extra_columns=["max_tracked_chats", "tracked_chats", "final_rss_mb", "messages_per_s"],
    )
    runs: list[tuple[str, int | None]] = [("plugin-async", bound)]
    if config.s6_contrast:
        # The same run with the per-chat bound out of reach: what the bound saves.
        runs.append(("plugin-async[max_tracked_chats=1000000]", 1_000_000))
    for name, limit in runs:
        report = _memory_child(bench, limit)
        info = {key: value for key, value in report.items() if key != "trace"}
        info["trace"] = report["trace"]
        result["variants"][name] = {
            "metrics": {"peak_rss_growth_mb": summary([report["peak_rss_growth_mb"]])},
            "info": info,
        }
    bounded = result["variants"]["plugin-async"]["info"]
    result["targets"].append(
        target("S6 tracked chats <= max_tracked_chats", float(bounded["tracked_chats"]), "<=",
               float(bounded["max_tracked_chats"]))
    )  # fmt: skip
    if config.s6_contrast:
        free = result["variants"]["plugin-async[max_tracked_chats=1000000]"]["info"]
        extra_chats = free["tracked_chats"] - bounded["tracked_chats"]
        extra_mb = free["peak_rss_growth_mb"] - bounded["peak_rss_growth_mb"]
        if extra_chats > 0:
            per_chat = extra_mb * 2**20 / extra_chats
            result["ratios"]["estimated bytes per tracked chat"] = per_chat
            result["ratios"]["estimated MB at the bound"] = (
                per_chat * bounded["max_tracked_chats"] / 2**20
            )
    return result


# -- main ----------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, str, bool, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds")
    parser.add_argument("--repetitions", type=int, help="repetitions per scenario (5)")
    parser.add_argument("--latency-ms", type=float, help="API latency in S1, S2, S5 (20)")
    parser.add_argument("--s12-bodies", type=int, help="bodies per repetition in S1/S2 (10)")
    parser.add_argument("--s3-bodies", type=int, help="bodies per repetition in S3/S3c (2000)")
    parser.add_argument("--s3c-in-flight", type=int, help="bodies in flight in S3c (50)")
    parser.add_argument("--s4-events", type=int, help="follow events per repetition (2000)")
    parser.add_argument("--s5-parallel", type=int, help="bodies at once in S5 (100)")
    parser.add_argument("--s6-messages", type=int, help="messages in S6 (100000)")
    parser.add_argument("--s6-chats", type=int, help="chats in S6 (20000)")
    parser.add_argument("--s6-max-tracked-chats", type=int, help="plugin bound in S6 (default)")
    parser.add_argument(
        "--no-s6-contrast", action="store_true", help="skip S6's run without the bound"
    )
    parser.add_argument("--s7-bodies", type=int, help="bodies per repetition in S7 (50)")
    parser.add_argument("--s8-runs", type=int, help="start-ups per command in S8 (10)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--max-seconds", type=float, help="deadline of the whole run (900)")
    parser.add_argument("--output", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--table-from", metavar="RESULTS_JSON", help="only print the table of an earlier run"
    )
    args = parser.parse_args(argv)
    config = Config.smoke_config() if args.smoke else Config()
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        value = getattr(args, field.name, None)
        if value is not None and field.name not in ("smoke",):
            changes[field.name] = value
    if args.no_s6_contrast:
        changes["s6_contrast"] = False
    if args.only:
        wanted = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = [s for s in wanted if s not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
        changes["scenarios"] = wanted
    config = dataclasses.replace(config, **changes)
    for name in ("repetitions", "s12_bodies", "s3_bodies", "s3c_in_flight", "s4_events",
                 "s5_parallel", "s6_messages", "s6_chats", "s7_bodies", "s8_runs"):  # fmt: skip
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return config, args.output, args.markdown, args.table_from


def run(config: Config) -> dict[str, Any]:
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mode": "smoke" if config.smoke else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "config": dataclasses.asdict(config),
        "scenarios": {},
    }
    began = time.monotonic()
    with PlatformProcess() as platform:
        results["platform_pid_differs"] = platform.pid != os.getpid()
        bench = Bench(config, platform)
        try:
            steps: dict[str, Callable[[], dict[str, Any]]] = {
                "S1": lambda: scenario_per_body(bench, "S1"),
                "S2": lambda: scenario_per_body(bench, "S2"),
                "S3": lambda: scenario_throughput(bench, "S3"),
                "S3c": lambda: scenario_throughput(bench, "S3c"),
                "S4": lambda: scenario_follow(bench),
                "S5": lambda: scenario_parallel(bench),
                "S6": lambda: scenario_memory(bench),
                "S7": lambda: scenario_handler_start(bench),
                "S8": lambda: scenario_startup(bench),
            }
            for sid in config.scenarios:
                step_began = time.monotonic()
                print(f"running {sid} ...", file=sys.stderr, flush=True)
                results["scenarios"][sid] = steps[sid]()
                results["scenarios"][sid]["duration_s"] = time.monotonic() - step_began
                results["scenarios"][sid]["load_average_after"] = _load_average()
                platform.reset()
        finally:
            bench.close()
    results["duration_s"] = time.monotonic() - began
    results["machine"]["load_average_at_end"] = _load_average()
    return results


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on a shared machine shows here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    config, output, markdown, table_from = parse_args(argv)
    if table_from is not None:
        with open(table_from) as f:
            print("\n".join(table_lines(json.load(f), markdown=markdown)))
        return 0
    results = run(config)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    chart = os.path.splitext(output)[0] + ".svg"
    with open(chart, "w", encoding="utf-8") as f:
        f.write(chart_svg(results))
    print("\n".join(table_lines(results, markdown=markdown)))
    print(f"\nresults written to {output}, the chart to {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
