"""A day of forewarn_compare under faults: are the incidents the ones a clean day opens?

On the embedded stack (moto on loopback, DuckDB reading the landing zone) it lands a day of
events for ``--series`` series with outages injected (drops and silences), trains on two weeks
of history with the training DAG's code, and replays the day's 5-minute intervals with
``compare_interval`` — what the DAG's task calls — twice, each on its own bucket:

* **clean**: every interval once, in order;
* **chaos**: 10% of the runs fail at a random step (an S3 read or write, PutMetricData throttled,
  a sink call, or the worker killed between a sink's answer and the registry write), and are
  then retried (as Airflow's retries do) or not (the task failed past its retries) — and, once
  each, the worker killed right after a sink answered and a sink call failing; 5% are
  skipped (the scheduler was down); the scheduler is down for the hour around one outage's
  start and that hour is backfilled (``open_incidents=False``) before the live runs resume;
  and CloudWatch rejects one run's metrics.

Incidents go to SNS on the stack; every successful call is counted per episode. The last line
compares the two days: the episodes opened and resolved, notifications sent twice (an episode
opened or resolved more than once in one sink) and episodes of the clean day the chaos day
never reported.

    .venv/bin/python benchmarks/chaos_compare.py [--series 200] [--hours 24] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from botocore.exceptions import ClientError
from compare_throughput import training_aggregates

from forewarn import producer
from forewarn.aggregate import Window, make_engine, write_aggregates
from forewarn.compare import compare_interval
from forewarn.config import Settings
from forewarn.local import stack
from forewarn.publish import SnsSink
from forewarn.registry import SinkFailed
from forewarn.synth import Anomaly, Scenario, SeriesSpec, plan_landing
from forewarn.train import train_all

STEP = timedelta(minutes=5)


class Killed(BaseException):
    """The worker died (SIGKILL, OOM): nothing after it runs, not even ``except Exception``."""


class CountingSns(SnsSink):
    """The SNS sink, counting every notification that went out, by episode and kind."""

    def __init__(self, sns, topic, calls: Counter, faults: Faults):
        super().__init__(sns, topic)
        self.calls, self.faults = calls, faults

    def open(self, incident):
        self.faults.maybe("sink")
        ref = super().open(incident)
        self.calls["open", incident.episode] += 1
        self.faults.after_sink = True
        return ref

    def update(self, incident, ref):
        self.faults.maybe("sink")
        super().update(incident, ref)

    def resolve(self, incident, ref):
        self.faults.maybe("sink")
        super().resolve(incident, ref)
        self.calls["resolve", incident.episode] += 1
        self.faults.after_sink = True


class Faults:
    """One fault armed for a run: ``kind`` fails the ``at``-th call of its kind. Every call is
    counted by kind (``steps``), so a fault can be placed at a random step a run really takes."""

    def __init__(self):
        self.kind: str | None = None
        self.at = 0
        self.seen = 0
        self.after_sink = False
        self.fired = Counter()
        self.steps = Counter()

    def arm(self, kind: str | None, at: int = 1) -> None:
        self.kind, self.at, self.seen, self.after_sink = kind, at, 0, False
        self.steps = Counter()

    def maybe(self, kind: str) -> None:
        self.steps[kind] += 1
        if self.kind != kind:
            return
        self.seen += 1
        if self.seen == self.at:
            self.kind = None
            self.fired[kind] += 1
            if kind == "crash":
                raise Killed("worker killed between a sink's answer and the registry write")
            raise ClientError({"Error": {"Code": "Throttling" if kind == "cloudwatch" else "InternalError",
                                         "Message": f"injected {kind} failure"}}, kind)


class FaultyS3:
    def __init__(self, s3, faults: Faults):
        self._s3, self.faults = s3, faults

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def get_object(self, **kwargs):
        self.faults.maybe("s3_get")
        return self._s3.get_object(**kwargs)

    def put_object(self, **kwargs):
        self.faults.maybe("s3_put")
        if self.faults.after_sink and kwargs["Key"].startswith("incidents/") and not kwargs["Key"].startswith("incidents/open/"):
            self.faults.after_sink = False
            self.faults.maybe("crash")
        return self._s3.put_object(**kwargs)


class FaultyCloudWatch:
    def __init__(self, cloudwatch, faults: Faults):
        self._cw, self.faults = cloudwatch, faults
        self.reject_next = False

    def put_metric_data(self, **kwargs):
        if self.reject_next:
            self.reject_next = False
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": "injected rejection"}}, "PutMetricData")
        self.faults.maybe("cloudwatch")
        return self._cw.put_metric_data(**kwargs)


def prepare(clients, settings: Settings, scenario: Scenario, trained_until: datetime, end: datetime, days: int) -> None:
    stack.bootstrap(clients, settings, shards=1)
    start = trained_until - timedelta(days=days)
    rows = training_aggregates(scenario, start, trained_until, settings.grain_seconds)
    write_aggregates(settings, clients.s3, rows, Window(start, trained_until, start, trained_until))
    train_all(settings, clients.s3, trained_until)
    plan = plan_landing(scenario, (trained_until - timedelta(hours=1)).timestamp(), end.timestamp(), settings.lookback_hours, seed_offset=1)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)


def day(settings: Settings, clients, intervals: list[datetime], chaos: random.Random | None, outage_start: datetime,
        now: datetime, steps: dict[datetime, Counter], trace=None) -> tuple[Counter, dict]:
    """One day of intervals. The clean day records in ``steps`` the calls each interval made; the
    chaos day places each fault at one of them, drawn uniformly."""
    faults = Faults()
    calls: Counter = Counter()
    sns = clients.client("sns")
    topic = sns.create_topic(Name=settings.sns_topic)["TopicArn"]
    sinks = [CountingSns(sns, topic, calls, faults)]
    s3 = FaultyS3(clients.s3, faults)
    cloudwatch = FaultyCloudWatch(clients.client("cloudwatch"), faults)
    engine = make_engine(settings, clients)
    tally = Counter()
    down = {t for t in intervals if outage_start - timedelta(minutes=30) <= t < outage_start + timedelta(minutes=30)}
    reject_at = intervals[len(intervals) // 3]
    backfilled = False
    with_sinks = [t for t in intervals if steps.get(t, {}).get("crash") and t not in down and t != intervals[0]]
    forced = dict(zip(with_sinks[-2:], ["crash", "sink"], strict=False)) if chaos is not None else {}
    for k, t in enumerate(intervals):
        if chaos is not None and t in down:
            tally["down"] += 1
            continue
        if chaos is not None and down and not backfilled and t >= max(down):
            for b in sorted(down):  # the operator backfills the hour the scheduler missed
                compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, b, b + STEP, now, open_incidents=False)
            tally["backfilled"] += len(down)
            backfilled = True
        if chaos is not None and k > 0 and chaos.random() < 0.05 and t not in forced:
            tally["skipped"] += 1
            continue
        fail = chaos is not None and k > 0 and chaos.random() < 0.10
        if fail and steps.get(t):
            taken = steps[t]
            step = chaos.randrange(sum(taken.values()))
            for kind in sorted(taken):
                if step < taken[kind]:
                    faults.arm(kind, at=step + 1)
                    break
                step -= taken[kind]
        if chaos is not None and t in forced:  # besides the random ones: a crash and a sink failure, once each
            faults.arm(forced[t])
            fail = True
        if chaos is not None and t == reject_at:
            cloudwatch.reject_next = True
        retry = chaos is None or chaos.random() < 0.5
        armed = faults.kind
        for attempt in range(4 if retry else 1):
            try:
                summary = compare_interval(settings, engine, s3, cloudwatch, sinks, t, t + STEP, now)
                if chaos is None:
                    steps[t] = faults.steps
                if trace:
                    trace(f"{t:%H:%M} attempt {attempt} ok (fault {armed}): state from {summary['state_from']}, replayed "
                          f"{summary['replayed_buckets']}, opened {summary['episodes_opened']}, resolved "
                          f"{summary['episodes_resolved']}, reconciled {summary['reconciled']}")
                break
            except (ClientError, SinkFailed, Killed) as exc:
                tally["failed_attempts"] += 1
                if attempt == 0:
                    tally[f"fault_{type(exc).__name__}"] += 1
                if trace:
                    trace(f"{t:%H:%M} attempt {attempt} failed (fault {armed}): {type(exc).__name__}")
        else:
            tally["failed_for_good"] += 1
        faults.arm(None)
    tally.update({f"fired_{k}": v for k, v in faults.fired.items()})
    return calls, dict(tally)


def _opened_during(incident: str, outage: Anomaly) -> bool:
    """Whether an incident key (``series|first anomalous bucket``) is on the outage's series and
    opened from its start to its end."""
    name, _, start = incident.partition("|")
    if name != outage.series or not start:
        return False
    at = datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()
    return outage.start <= at <= outage.start + outage.duration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--hours", type=int, default=24, help="hours of 5-minute intervals replayed")
    parser.add_argument("--days", type=int, default=14, help="days of training history")
    parser.add_argument("--outages", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=5085)
    parser.add_argument("--trace", action="store_true", help="print each chaos interval's faults and outcome (stderr)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    trained_until = datetime(2026, 11, 16, tzinfo=UTC)
    end = trained_until + timedelta(hours=args.hours)
    series = [SeriesSpec(f"svc{i:04d}.requests", rate=float(rng.uniform(2, 8)), value_mean=float(50 * rng.uniform(0.5, 2)),
                         peak_hour=float(rng.uniform(0, 24))) for i in range(args.series)]
    starts = sorted(trained_until + timedelta(minutes=5 * int(m)) for m in rng.integers(12, args.hours * 12 - 36, args.outages))
    anomalies = [Anomaly("drop" if k % 2 == 0 else "missing", series[int(rng.integers(args.series))].name, s.timestamp(),
                         float(rng.integers(30, 121) * 60), 0.1) for k, s in enumerate(starts)]
    scenario = Scenario(series, anomalies=anomalies, seed=args.seed)
    intervals = [trained_until + STEP * k for k in range(args.hours * 12)]
    now = end + timedelta(minutes=10)

    with tempfile.TemporaryDirectory() as home:
        state = stack.up(port=args.port, home=Path(home))
        try:
            clients = stack.local_clients(state["port"])
            results = {}
            steps: dict[datetime, Counter] = {}
            for name in ("clean", "chaos"):
                settings = Settings.load({"engine": "duckdb", "training_days": args.days, "compare_delay_minutes": 0,
                                          "bucket": f"forewarn-chaos-{name}", "glue_database": f"forewarn_chaos_{name}",
                                          "stream_name": f"chaos-{name}", "delivery_stream": f"chaos-{name}",
                                          "sns_topic": f"chaos-{name}", "cloudwatch_namespace": f"forewarn-chaos-{name}"})
                t = time.perf_counter()
                prepare(clients, settings, scenario, trained_until, end, args.days)
                prep = time.perf_counter() - t
                t = time.perf_counter()
                chaos = random.Random(args.seed) if name == "chaos" else None  # noqa: S311 - fault schedule, not secrets
                trace = (lambda line: print(line, file=sys.stderr, flush=True)) if args.trace and chaos else None
                calls, tally = day(settings, clients, intervals, chaos, starts[0], now, steps, trace)
                results[name] = calls
                opened = {e for (kind, e) in calls if kind == "open"}
                resolved = {e for (kind, e) in calls if kind == "resolve"}
                print(f"{name:>5}: {len(intervals)} intervals in {time.perf_counter() - t:.0f} s (prepared in {prep:.0f} s); "
                      f"incidents opened {len(opened)}, resolved {len(resolved)}; {tally}", flush=True)
        finally:
            stack.down(Path(home))

    clean, noisy = results["clean"], results["chaos"]
    opened = {e for (kind, e) in clean if kind == "open"}
    resolved = {e for (kind, e) in clean if kind == "resolve"}
    opened_c = {e for (kind, e) in noisy if kind == "open"}
    resolved_c = {e for (kind, e) in noisy if kind == "resolve"}
    duplicates = sum(n - 1 for n in noisy.values() if n > 1)
    lost = len(opened - opened_c)
    same = opened == opened_c and resolved == resolved_c and duplicates == 0
    if not same:
        print(f"only clean: opened {sorted(opened - opened_c)} resolved {sorted(resolved - resolved_c)}")
        print(f"only chaos: opened {sorted(opened_c - opened)} resolved {sorted(resolved_c - resolved)}")
        print(f"sent twice: {sorted(k for k, n in noisy.items() if n > 1)}")
    print(f"injected outages: {len(anomalies)} ({', '.join(f'{a.kind} {a.series} {datetime.fromtimestamp(a.start, UTC):%H:%M}' for a in anomalies)})")
    found = [a for a in anomalies if any(_opened_during(e, a) for e in opened)]
    print(f"clean run: outages with an incident on their series while they lasted {len(found)}/{len(anomalies)}; "
          f"other incidents {sum(not any(_opened_during(e, a) for a in anomalies) for e in opened)} "
          f"(on {len({e.split('|')[0] for e in opened})} of {len(series)} series)")
    print(f"chaos: incidents identical to the clean run: {'yes' if same else 'no'} (opened {len(opened_c)}, resolved "
          f"{len(resolved_c)}, duplicate notifications {duplicates}, lost episodes {lost})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
