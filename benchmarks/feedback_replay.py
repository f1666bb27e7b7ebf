"""What operators' inputs change: three weeks of a few dozen series replayed through training
(daily, ``train_all``) and comparison (hourly, ``compare_interval``) on the embedded stack, once
without any operator input and once with them, the incidents read off SNS (through an SQS queue)
as an on-call tool would receive them.

The series (15-minute buckets, counts of events; 21 days of history before the replay):

- ``pay.*``: an outage (the rate to 5%) at 10:00 UTC on Mon 16, Tue 17 and Mon 23 November; the
  operator labels the first one ``real`` once its incident arrives. Counted: the repeats
  detected (an incident opened inside the outage).
- ``batch.*``: a planned batch (the rate times 4) on Wednesdays 02:00-03:00 UTC from 18 November;
  the operator labels the first one ``expected``, recurring weekly. Counted: the batches alerted
  from the second.
- ``etl.*``: silent for a planned two hours (20 November 02:00-04:00 UTC); the operator declares
  a maintenance window beforehand. Counted: incidents sent that begin inside it.
- ``shop.*``: quiet weekends, and Thanksgiving (26 November) as quiet as a Sunday; the operator's
  settings give them the US holiday calendar. Counted: incidents that begin on the holiday.
- ``api.*``: 1.5 times their level for good from 19 November 12:00 UTC; the operator labels it
  ``new_normal`` (from its start) an hour after its incident arrives. Counted: incident messages
  (opened or updated) more than a day after the label.
- ``web.*``: nothing happens (their incidents are false alarms).

    .venv/bin/python benchmarks/feedback_replay.py [--series-per-group 4] [--days 21]

Prints both runs' counts and the line ``feedback: repeat outage detected D/N, planned spikes
alerted P (was P0), maintenance alerts sent M, holiday false alarms H (was H0), new-normal alerts
after the label L`` (``was``: without the inputs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPLAY_START = datetime(2026, 11, 12, tzinfo=UTC)  # a Thursday; Thanksgiving is 14 days later
HISTORY_DAYS = 21
GROUPS = ("pay", "batch", "etl", "shop", "api", "web")
OUTAGES = [datetime(2026, 11, d, 10, tzinfo=UTC) for d in (16, 17, 23)]
OUTAGE = timedelta(hours=2)
BATCHES = [datetime(2026, 11, 18, 2, tzinfo=UTC) + timedelta(days=7 * k) for k in range(3)]
BATCH = timedelta(hours=1)
MAINTENANCE = (datetime(2026, 11, 20, 2, tzinfo=UTC), datetime(2026, 11, 20, 4, tzinfo=UTC))
HOLIDAY = datetime(2026, 11, 26, tzinfo=UTC)
NEW_NORMAL = datetime(2026, 11, 19, 12, tzinfo=UTC)
WEEKLY = 0.5  # the shops' weekend rate 1 - WEEKLY, weekdays 1 + 0.4 WEEKLY (synth.SeriesSpec.season)


def scenario(per_group: int, end: datetime):
    from forewarn.synth import Anomaly, Scenario, SeriesSpec

    names = {g: [f"{g}.s{i:02d}" for i in range(per_group)] for g in GROUPS}
    specs = [SeriesSpec(n, rate=3.0, daily_amplitude=0.4, weekly_amplitude=WEEKLY if g == "shop" else 0.0,
                        peak_hour=13 + (i % 4)) for g in GROUPS for i, n in enumerate(names[g])]
    anomalies = []
    for n in names["pay"]:
        anomalies += [Anomaly("drop", n, t.timestamp(), OUTAGE.total_seconds(), 0.05) for t in OUTAGES]
    for n in names["batch"]:
        anomalies += [Anomaly("spike", n, t.timestamp(), BATCH.total_seconds(), 4.0) for t in BATCHES]
    for n in names["etl"]:
        anomalies.append(Anomaly("missing", n, MAINTENANCE[0].timestamp(), (MAINTENANCE[1] - MAINTENANCE[0]).total_seconds()))
    sunday = (1 - WEEKLY) / (1 + 0.4 * WEEKLY)
    for n in names["shop"]:
        anomalies.append(Anomaly("level_shift", n, HOLIDAY.timestamp(), 86400, sunday))
    for n in names["api"]:
        anomalies.append(Anomaly("level_shift", n, NEW_NORMAL.timestamp(), (end - NEW_NORMAL).total_seconds() + 86400, 1.5))
    return Scenario(specs, anomalies=anomalies, seed=11), names


@dataclass
class Run:
    inputs: bool
    messages: list[dict] = field(default_factory=list)  # every SNS message, with the hour it was sent
    labels: list[dict] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)  # the series of each group
    end: datetime = REPLAY_START
    seconds: float = 0.0


def replay(clients, inputs: bool, per_group: int, days: int, tag: str) -> Run:
    from forewarn import producer
    from forewarn.aggregate import make_engine, range_windows, run_window
    from forewarn.compare import compare_interval
    from forewarn.config import Settings
    from forewarn.labels import parse_label, write_label
    from forewarn.local.stack import bootstrap
    from forewarn.maintenance import parse_window, write_window
    from forewarn.publish import SnsSink
    from forewarn.synth import plan_landing
    from forewarn.train import train_all

    started = time.perf_counter()
    end = REPLAY_START + timedelta(days=days)
    settings = Settings.load({"engine": "duckdb", "bucket": f"feedback-{tag}", "stream_name": f"feedback-{tag}",
                              "delivery_stream": f"feedback-{tag}", "glue_database": f"feedback_{tag}", "sns_topic": f"feedback-{tag}",
                              "grain_seconds": 900, "training_days": HISTORY_DAYS, "horizon_hours": 26, "compare_minutes": 60,
                              "metrics": "event_count"})
    bootstrap(clients, settings, shards=1)
    world, names = scenario(per_group, end)
    first = REPLAY_START - timedelta(days=HISTORY_DAYS)
    plan = plan_landing(world, first.timestamp(), end.timestamp(), settings.lookback_hours)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    engine = make_engine(settings, clients)
    for w in range_windows(first, end, settings.lookback_hours, 24 * 7):
        run_window(settings, engine, clients.s3, w)
    print(f"  [{tag}] {len(plan):,} events landed and aggregated in {time.perf_counter() - started:.0f} s", flush=True)

    sqs, sns = clients.client("sqs"), clients.client("sns")
    queue = sqs.create_queue(QueueName=f"feedback-{tag}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = sns.create_topic(Name=settings.sns_topic)["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    sinks = [SnsSink(sns, topic)]
    run = Run(inputs, names=names, end=end)
    if inputs:
        clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                              Body=b"series:\n  - match: 'shop.*'\n    holidays: US\n")
        write_window(settings, clients.s3, parse_window({"series": "etl.*", "from": MAINTENANCE[0].isoformat(),
                                                         "to": MAINTENANCE[1].isoformat(), "note": "planned migration"}))
    labelled: set[str] = set()
    pending: list[tuple[datetime, dict]] = []  # labels the operator writes at a later hour
    cloudwatch = clients.client("cloudwatch")
    t = REPLAY_START
    while t < end:
        if t.hour == 0:
            train_all(settings, clients.s3, t)
        compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(hours=1), t + timedelta(hours=1, minutes=5))
        t += timedelta(hours=1)
        while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
            for m in got:
                body = json.loads(m["Body"])
                body["sent"] = t.isoformat()
                run.messages.append(body)
            sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                              for i, m in enumerate(got)])
        if inputs:
            for m in run.messages:
                group = m["series"].split(".")[0]
                if m["event"] != "incident.opened" or m["series"] in labelled:
                    continue
                if group == "pay" and _inside(m["started"], [(o, o + OUTAGE) for o in OUTAGES[:1]]):
                    pending.append((t, {"target": m["episode"], "as": "real", "note": "outage, first time"}))
                elif group == "batch" and _inside(m["started"], [(b, b + BATCH) for b in BATCHES[:1]]):
                    pending.append((t, {"target": m["episode"], "as": "expected", "recurs": "weekly", "note": "the weekly batch"}))
                elif group == "api" and datetime.fromisoformat(m["started"]) >= NEW_NORMAL:
                    pending.append((t + timedelta(hours=1), {"target": m["series"], "as": "new_normal", "from": NEW_NORMAL.isoformat(),
                                                             "note": "the new release doubles calls"}))
                else:
                    continue
                labelled.add(m["series"])
            for at, doc in [p for p in pending if p[0] <= t]:
                write_label(settings, clients.s3, parse_label({**doc, "by": "operator", "created": at.isoformat()}))
                run.labels.append({**doc, "at": at.isoformat()})
            pending = [p for p in pending if p[0] > t]
        if t.hour == 0:
            opened = sum(m["event"] == "incident.opened" for m in run.messages)
            print(f"  [{tag}] {t:%Y-%m-%d}: {opened} incidents so far ({time.perf_counter() - started:.0f} s)", flush=True)
    run.seconds = time.perf_counter() - started
    return run


def _inside(when: str, spans: list[tuple[datetime, datetime]]) -> bool:
    t = datetime.fromisoformat(when)
    return any(a <= t < b for a, b in spans)


def counts(run: Run) -> dict[str, int]:
    anomalies = [m for m in run.messages if ":forecast_quality" not in m["metric"]]
    opened = [m for m in anomalies if m["event"] == "incident.opened"]

    def of(group: str) -> list[dict]:
        return [m for m in opened if m["series"].startswith(group + ".")]

    repeats = [(s, o) for s in run.names["pay"] for o in OUTAGES[1:] if o + OUTAGE <= run.end]
    detected = sum(any(m["series"] == s and _inside(m["started"], [(o, o + OUTAGE)]) for m in of("pay")) for s, o in repeats)
    batches = sum(_inside(m["started"], [(b, b + BATCH) for b in BATCHES[1:]]) for m in of("batch"))
    maintenance = sum(_inside(m["started"], [MAINTENANCE]) for m in of("etl"))
    holiday = sum(_inside(m["started"], [(HOLIDAY, HOLIDAY + timedelta(days=1))]) for m in of("shop"))
    labels = {lab["target"]: datetime.fromisoformat(lab["at"]) for lab in run.labels if lab["as"] == "new_normal"}
    since = min(labels.values()) if labels else NEW_NORMAL + timedelta(hours=12)  # without: when the label would have come
    late = sum(m["event"] in ("incident.opened", "incident.updated") and m["series"].startswith("api.")
               and datetime.fromisoformat(m["sent"]) >= since + timedelta(days=1) for m in anomalies)
    still_open = {m["episode"] for m in anomalies if m["event"] == "incident.opened"} - \
        {m["episode"] for m in anomalies if m["event"] == "incident.resolved"}
    model = [m for m in run.messages if ":forecast_quality" in m["metric"] and m["event"] == "incident.opened"]
    false = len(of("web"))
    return {"repeats": len(repeats), "detected": detected, "batches": batches, "maintenance": maintenance,
            "holiday": holiday, "new_normal": late, "web": false, "incidents": len(opened), "open_at_end": len(still_open),
            "model_quality": len(model), "model_quality_series": ", ".join(sorted({m["series"] for m in model}))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series-per-group", type=int, default=4, help="series in each of the six groups")
    parser.add_argument("--days", type=int, default=21, help="days replayed (from 2026-11-12)")
    parser.add_argument("--port", type=int, default=0, help="the embedded stack's port (default: a free one)")
    parser.add_argument("--messages", help="write both runs' incident messages and labels to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from forewarn.local import stack

    home = Path(tempfile.mkdtemp(prefix="feedback-replay-"))
    port = args.port or _free_port()
    state = stack.up(port=port, home=home)
    print(f"embedded stack on {state['endpoint']} (pid {state['pid']}); {args.series_per_group * len(GROUPS)} series, "
          f"{args.days} days replayed after {HISTORY_DAYS} of history", flush=True)
    try:
        clients = stack.local_clients(port)
        without = replay(clients, False, args.series_per_group, args.days, "without")
        with_ = replay(clients, True, args.series_per_group, args.days, "with")
    finally:
        stack.down(home)
    if args.messages:
        Path(args.messages).write_text(json.dumps({run: {"messages": r.messages, "labels": r.labels}
                                                   for run, r in (("without", without), ("with", with_))}, indent=1))
    a, b = counts(without), counts(with_)
    print(f"\n{'':<40}{'without inputs':>16}{'with inputs':>14}")
    rows = [("repeat outages detected", f"{a['detected']}/{a['repeats']}", f"{b['detected']}/{b['repeats']}"),
            ("planned batches alerted (weeks 2-3)", a["batches"], b["batches"]),
            ("maintenance incidents sent", a["maintenance"], b["maintenance"]),
            ("holiday false alarms", a["holiday"], b["holiday"]),
            ("new-normal alerts a day after the label", a["new_normal"], b["new_normal"]),
            ("false alarms on untouched series", a["web"], b["web"]),
            ("incidents opened, all series", a["incidents"], b["incidents"]),
            ("incidents still open at the end", a["open_at_end"], b["open_at_end"]),
            ("model-quality alerts", a["model_quality"], b["model_quality"]),
            ("seconds", f"{without.seconds:.0f}", f"{with_.seconds:.0f}")]
    for name, x, y in rows:
        print(f"{name:<40}{x!s:>16}{y!s:>14}")
    print(f"labels written: {len(with_.labels)} ({', '.join(sorted({lab['as'] for lab in with_.labels}))})")
    print(f"\nfeedback: repeat outage detected {b['detected']}/{b['repeats']}, planned spikes alerted {b['batches']} "
          f"(was {a['batches']}), maintenance alerts sent {b['maintenance']}, holiday false alarms {b['holiday']} "
          f"(was {a['holiday']}), new-normal alerts after the label {b['new_normal']}")
    sys.stdout.flush()


def _free_port() -> int:
    import socket

    from forewarn.local.stack import port_free

    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65534 and all(port_free(port + k) for k in range(3)):
            return port
    raise RuntimeError("no three adjacent free ports on 127.0.0.1")


if __name__ == "__main__":
    main()
