"""The ``forewarn`` command.

    forewarn demo                      the whole pipeline on the embedded stack, with a report
    forewarn airflow                   Airflow 3 (UI, scheduler) on the embedded stack, live, until Ctrl-C
    forewarn stack up|down|status      the embedded AWS stand-in on 127.0.0.1
    forewarn produce ...               synthetic or replayed events to Kinesis or the landing zone
    forewarn eval-m4 ...               the forecaster on M4-layout series, scored against seasonal naive
    forewarn eval-nab ...              the forecaster and detector replayed on NAB-layout series, scored
    forewarn label TARGET --as KIND    say what an episode or a stretch of a series was (labels/ in S3)
    forewarn maintenance PATTERN ...   a one-off or recurring maintenance window (maintenance/ in S3)
    forewarn snooze SERIES --minutes N no notifications for a series for a while (a window from now)
    forewarn ack EPISODE               someone is on it: its sinks told once, no updates after (acks/ in S3)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from forewarn.config import ConfigError, Settings


def _port(args: argparse.Namespace) -> int:
    from forewarn.local.stack import DEFAULT_PORT

    return args.port or int(os.environ.get("FOREWARN_STACK_PORT", DEFAULT_PORT))


def _home(args: argparse.Namespace) -> Path:
    from forewarn.local.stack import home_dir

    return Path(args.home).resolve() if args.home else home_dir()


def cmd_stack(args: argparse.Namespace) -> int:
    from forewarn.local import stack

    home = _home(args)
    if args.action == "up":
        state = stack.up(port=_port(args), home=home)
        from forewarn.local.stack import local_connection, webhook_connections, webhooks_endpoint

        print(f"stack running: pid {state['pid']}, endpoint {state['endpoint']}")
        for name, value in state["resources"].items():
            print(f"  {name:<15} {value}")
        hooks = webhooks_endpoint(state["port"])
        print(f"  {'pagerduty':<15} {hooks}/pagerduty/alerts (stand-in: what it accepted)")
        print(f"  {'slack':<15} {hooks}/slack/messages (stand-in)")
        print("Point Airflow and the CLI at it with:")
        print(f"  export AIRFLOW_CONN_AWS_DEFAULT='{local_connection(state['port'])}'")
        for name, value in webhook_connections(state["port"]).items():
            print(f"  export {name}='{value}'")
        print("  export FOREWARN_ENGINE=duckdb")
        print("  export FOREWARN_INCIDENT_SINKS=sns,pagerduty,slack   # to page the stand-ins too")
        return 0
    if args.action == "attach":
        if not args.endpoint:
            raise ValueError("`forewarn stack attach` needs --endpoint, the URL of a running moto server")
        logging.getLogger().setLevel(logging.INFO)
        stack.attach(args.endpoint, Settings.load())
        return 0
    if args.action == "down":
        print("stack stopped" if stack.down(home) else "no stack was running")
        return 0
    state = stack.read_state(home)
    if not state:
        print("no stack running (start one with `forewarn stack up`)")
        return 1
    print(json.dumps({**state, "forwarded_records": stack.forwarded_count(home)}, indent=2))
    return 0


def _clients(args: argparse.Namespace):
    """The AWS connection from the environment; else the running local stack; else AWS itself."""
    from forewarn.aws import AwsClients
    from forewarn.local import stack

    if os.environ.get("AIRFLOW_CONN_AWS_DEFAULT"):
        return AwsClients.from_environment()
    state = stack.read_state(_home(args))
    if state:
        return stack.local_clients(state["port"])
    return AwsClients.from_environment()


def cmd_produce(args: argparse.Namespace) -> int:
    from forewarn import producer, synth

    settings = Settings.load()
    clients = _clients(args)
    where = clients.endpoint_url or f"AWS ({clients.region})"
    now = time.time()
    if args.replay:
        events = synth.replay_csv(args.replay, args.series, shift_to=None if args.keep_times else now)
        send_at = now if args.via == "kinesis" else None
        plan = synth.plan_from_events(events, settings.lookback_hours, send_at=send_at)
        label = f"replay of {args.replay} as {args.series}"
    else:
        from forewarn.local.live import add_injection, live_running

        if args.inject and not args.scenario and live_running(_home(args)):
            # `forewarn airflow` is producing live: shape what it sends from now on, since sending
            # extra events could never make a drop or a silence.
            series = args.series or synth.load_scenario().series[0].name
            add_injection(_home(args), synth.Anomaly(kind=args.inject, series=series, start=now, duration=args.minutes * 60,
                                                     magnitude=args.magnitude))
            print(f"the live producer applies {args.inject} (magnitude {args.magnitude}) to {series} "
                  f"from {time.strftime('%H:%M:%S', time.gmtime(now))} UTC for {args.minutes} min")
            return 0
        start = now - args.minutes * 60
        scenario = synth.load_scenario(args.scenario, live_start=start if args.inject_now else now)
        if args.inject:
            scenario.anomalies.append(
                synth.Anomaly(kind=args.inject, series=args.series or scenario.series[0].name, start=start,
                              duration=args.minutes * 60, magnitude=args.magnitude)
            )
        send_at = now if args.via == "kinesis" else None
        plan = synth.plan_landing(scenario, start, now, settings.lookback_hours, seed_offset=int(now), send_at=send_at)
        label = f"{args.minutes} min of {len(scenario.series)} series"
    if plan.empty:
        print("nothing to send")
        return 0
    if args.via == "kinesis":
        sent = producer.send_plan(
            clients.client("kinesis"), settings.stream_name, plan,
            progress=lambda n: print(f"\r  sent {n:,}/{len(plan):,}", end="", flush=True),
        )
        print(f"\n{label}: {sent:,} records -> Kinesis stream {settings.stream_name} on {where}")
    else:
        keys = producer.write_landing(
            clients.s3, settings.bucket, settings.raw_prefix, plan,
            progress=lambda i, n: print(f"\r  hour {i}/{n}", end="", flush=True),
        )
        print(f"\n{label}: {len(plan):,} lines -> {len(keys)} objects under s3://{settings.bucket}/{settings.raw_prefix} on {where}")
    bad = plan["expected_reason"].dropna().value_counts()
    if not bad.empty:
        print("  lines the aggregation will set aside: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    dups = int((plan["copy"] == 1).sum()) if "copy" in plan else 0
    if dups:
        print(f"  duplicate copies (counted once): {dups}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from forewarn.local.demo import run_demo

    return run_demo(
        _home(args), _port(args), history_days=args.history_days, live_minutes=args.live_minutes,
        scenario_path=args.scenario, keep_stack=args.keep_stack,
    )


def _history_length(text: str) -> int:
    """``eval-m4 --history``: more than one day of hours, so seasonal naive's errors exist."""
    value = int(text)
    if value < 25:
        raise argparse.ArgumentTypeError(f"{value}: keep at least 25 values (more than one season of 24 hours)")
    return value


def cmd_eval_m4(args: argparse.Namespace) -> int:
    from forewarn.eval_m4 import evaluate, print_summary

    def progress(done: int, total: int) -> None:
        if done == total or done % 20 == 0:
            print(f"\r  {done}/{total} series", end="\n" if done == total else "", file=sys.stderr, flush=True)

    from dataclasses import replace

    from forewarn.eval_m4 import M4_HOURLY
    from forewarn.forecast import model_bands

    model_bands(args.model)  # an unknown name says which exist, before any work
    summary = evaluate(args.train, args.out, holdout=args.holdout, jobs=args.jobs, progress=progress,
                       cfg=replace(M4_HOURLY, model=args.model), first=args.first, history=args.history)
    print_summary(summary)
    print(f"forecasts written to {args.out}")
    return 0


def cmd_eval_nab(args: argparse.Namespace) -> int:
    from forewarn.eval_nab import print_scores, run, score_results

    if args.cv:
        from forewarn.nab_cv import run_cv

        run_cv(args.data, jobs=args.jobs)
        return 0
    if not args.out:
        print("eval-nab: --out FOLDER is required (or use --cv)", file=sys.stderr)
        return 2

    def progress(done: int, total: int, name: str) -> None:
        print(f"\r  {done}/{total} files ({name})".ljust(90), end="\n" if done == total else "", file=sys.stderr, flush=True)

    summary = run(args.data, args.out, jobs=args.jobs, progress=progress)
    print(f"{summary['files']} files replayed in {summary['seconds']:.1f} s on {summary['jobs']} process(es) -> {args.out}")
    if args.score:
        from forewarn.nab_cv import BUDGET_THRESHOLD

        print_scores(score_results(args.data, args.out), title="NAB's own rule (each profile's best threshold):")
        print_scores(score_results(args.data, args.out, BUDGET_THRESHOLD),
                     title=f"within the false-alarm budget (the best threshold of at least {BUDGET_THRESHOLD}):")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    import getpass

    from forewarn.labels import parse_label, write_label

    settings = Settings.load()
    doc = {"target": args.target, "as": args.kind, "from": args.start, "to": args.end, "note": args.note,
           "by": args.by or os.environ.get("USER") or getpass.getuser(), "recurs": args.recurs}
    label = parse_label(doc, "forewarn label")
    key = write_label(settings, _clients(args).s3, label)
    span = f" from {label.start.isoformat()}" if label.start else ""
    span += f" to {label.end.isoformat()}" if label.end else ""
    print(f"labelled {label.target}{span} as {label.kind} -> s3://{settings.bucket}/{key}")
    print("  the next training run " + {"real": "keeps it out of the history it fits",
                                        "not_anomaly": "learns it (it is not kept out)",
                                        "expected": f"keeps it and its {label.recurs} recurrences out, and expects them"
                                                    if label.recurs else "learns it (it is not kept out)",
                                        "new_normal": "moves the history before it to the new level"}[label.kind])
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    from forewarn.maintenance import parse_window, write_window

    settings = Settings.load()
    doc = {"series": args.pattern, "from": args.start, "to": args.end, "rrule": args.rrule, "cron": args.cron,
           "duration_minutes": args.minutes, "tz": args.tz, "note": args.note}
    window = parse_window(doc, "forewarn maintenance")
    key = write_window(settings, _clients(args).s3, window)
    when = (f"{window.rrule or window.cron} for {args.minutes:g} min ({window.tz})" if window.recurring
            else f"{window.start.isoformat()} to {window.end.isoformat()}")
    print(f"maintenance window for {window.series}: {when} -> s3://{settings.bucket}/{key}")
    print("  alerts that begin inside are recorded, not sent; its buckets are kept out of training")
    return 0


def cmd_snooze(args: argparse.Namespace) -> int:
    import getpass

    from forewarn.maintenance import snooze_window, write_window

    settings = Settings.load()
    by = args.by or os.environ.get("USER") or getpass.getuser()
    window = snooze_window(args.target, args.minutes, by, args.note, where="forewarn snooze")
    key = write_window(settings, _clients(args).s3, window)
    print(f"snoozed {window.series} until {window.end.isoformat()} -> s3://{settings.bucket}/{key}")
    print("  its open incident sends no updates meanwhile (its resolution still goes out); new alerts are recorded, not sent")
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    import getpass

    from forewarn.acks import parse_ack, write_ack

    settings = Settings.load()
    ack = parse_ack({"episode": args.episode, "by": args.by or os.environ.get("USER") or getpass.getuser(), "note": args.note},
                    "forewarn ack")
    key = write_ack(settings, _clients(args).s3, ack)
    print(f"{ack.text} ({ack.episode}) -> s3://{settings.bucket}/{key}")
    print("  the next comparison tells its sinks once (PagerDuty stops escalating); no updates after, its resolution still goes out")
    return 0


def cmd_airflow(args: argparse.Namespace) -> int:
    from forewarn.local.live import run_live

    return run_live(_home(args), _port(args), days=args.history_days)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forewarn", description="Forecast-based anomaly detection for streaming metrics.")
    parser.add_argument("--home", help="state folder for the local stack and demo (default $FOREWARN_HOME or ./.forewarn)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens underneath")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="the embedded AWS stand-in (moto on 127.0.0.1)")
    p.add_argument("action", choices=["up", "down", "status", "attach"],
                   help="attach: set up the resources on a moto server run elsewhere and forward Kinesis to Firehose")
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default $FOREWARN_STACK_PORT or 5055)")
    p.add_argument("--endpoint", help="with attach: the moto server's URL, e.g. http://moto:5000")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("produce", help="send synthetic or replayed events")
    p.add_argument("--scenario", help="scenario YAML (default: the shipped demo scenario)")
    p.add_argument("--minutes", type=int, default=10, help="minutes of events ending now (default 10)")
    p.add_argument("--via", choices=["kinesis", "landing"], default="kinesis",
                   help="PutRecords to the stream (default), or write straight into the landing layout")
    p.add_argument("--inject", choices=["spike", "drop", "level_shift", "drift", "missing"],
                   help="add this anomaly on --series over the whole stretch")
    p.add_argument("--series", help="series for --inject, or the name of a replayed series")
    p.add_argument("--magnitude", type=float, default=0.1, help="anomaly magnitude (default 0.1: a drop to 10%%)")
    p.add_argument("--inject-now", action="store_true", help="place the scenario's own anomalies in this stretch")
    p.add_argument("--replay", help="a timestamp,value CSV (the NAB layout) to send as --series")
    p.add_argument("--keep-times", action="store_true", help="with --replay: keep the file's timestamps (else shift to end now)")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded stack and report")
    p.add_argument("--port", type=int, help="stack port (default $FOREWARN_STACK_PORT or 5055)")
    p.add_argument("--history-days", type=int, default=28, help="days of history to load (default 28, the training window)")
    p.add_argument("--live-minutes", type=int, default=70, help="minutes of live events through Kinesis (default 70)")
    p.add_argument("--scenario", help="scenario YAML (default: the shipped demo scenario)")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("airflow", help="Airflow 3 (UI, scheduler, on loopback) on the embedded stack with a live producer")
    p.add_argument("--port", type=int, help="stack port (default $FOREWARN_STACK_PORT or 5055)")
    p.add_argument("--history-days", type=int, default=28, help="days of history to prepare (default 28)")
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("label", help="say what an episode or a stretch of a series was: real, not_anomaly, expected, new_normal")
    p.add_argument("target", help="an episode as incidents name it (series|YYYY-MM-DDTHH:MM) or a series name")
    p.add_argument("--as", dest="kind", required=True, choices=["real", "not_anomaly", "expected", "new_normal"])
    p.add_argument("--from", dest="start", help="ISO 8601 time: where a series label begins (new_normal: when the new level began)")
    p.add_argument("--to", dest="end", help="ISO 8601 time: where a series label ends")
    p.add_argument("--note", default="", help="why, for whoever reads it next")
    p.add_argument("--by", help="who says so (default: $USER)")
    p.add_argument("--recurs", choices=["daily", "weekly"],
                   help="with --as expected: the planned deviation comes back every day or week (the next one is expected)")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("maintenance", help="a maintenance window: alerts inside recorded, not sent; kept out of training")
    p.add_argument("pattern", help="series pattern (shell-style: 'payments.*', '*')")
    p.add_argument("--from", dest="start", help="ISO 8601: a one-off window's start (or where a recurring one begins)")
    p.add_argument("--to", dest="end", help="ISO 8601: a one-off window's end (or where a recurring one stops)")
    p.add_argument("--cron", help="recurring: five-field cron, e.g. '0 4 * * *'")
    p.add_argument("--rrule", help="recurring: RFC 5545 rule, e.g. 'FREQ=WEEKLY;BYDAY=SU;BYHOUR=3'")
    p.add_argument("--minutes", type=float, help="recurring: how long each occurrence lasts")
    p.add_argument("--tz", default="UTC", help="time zone of the recurrence (IANA name, default UTC)")
    p.add_argument("--note", default="", help="why")
    p.set_defaults(func=cmd_maintenance)

    p = sub.add_parser("snooze", help="no notifications for a series for a while (recorded, not sent)")
    p.add_argument("target", help="a series, or an episode as incidents name it (series|YYYY-MM-DDTHH:MM)")
    p.add_argument("--minutes", type=float, required=True, help="how long (at most a week)")
    p.add_argument("--note", default="", help="why")
    p.add_argument("--by", help="who (default: $USER)")
    p.set_defaults(func=cmd_snooze)

    p = sub.add_parser("ack", help="acknowledge an open incident: its sinks are told once, and it sends no updates")
    p.add_argument("episode", help="the episode as incidents name it (series|YYYY-MM-DDTHH:MM)")
    p.add_argument("--note", default="", help="what you are doing about it")
    p.add_argument("--by", help="who (default: $USER)")
    p.set_defaults(func=cmd_ack)

    p = sub.add_parser("eval-m4", help="forecast every series of an M4-layout file (the training DAG's forecaster)")
    p.add_argument("--train", required=True, help="M4 file: id then values per row (e.g. Hourly-train.csv)")
    p.add_argument("--out", required=True, help="CSV to write: id,F1..Fh,lo95_1..,hi95_1..")
    p.add_argument("--holdout", type=int, default=0, help="cut this many values per series, forecast and score them (48 for M4 Hourly)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--model", default="ar", help="forecasting model family (forewarn.forecast.MODELS: ar, ets); default ar")
    p.add_argument("--first", type=int, default=None, help="only the file's first N series (a quicker comparison of models)")
    p.add_argument("--history", type=_history_length, default=None,
                   help="keep only each series' last N values before the holdout (336: two weeks of hours, a young series; "
                        "at least 25). MASE and MSIS are then scaled by the shortened history")
    p.set_defaults(func=cmd_eval_m4)

    p = sub.add_parser("eval-nab", help="replay NAB-layout series through the forecaster and detector; write NAB result files")
    p.add_argument("--data", required=True, help="NAB-layout folder: data/<category>/<file>.csv and labels/combined_windows.json")
    p.add_argument("--out", help="(required unless --cv) folder for <category>/<file>.csv with timestamp,value,anomaly_score")
    p.add_argument("--score", action="store_true", help="score the results with NAB's rules (standard, reward-low-FP, reward-low-FN)")
    p.add_argument("--cv", action="store_true",
                   help="leave-one-category-out validation instead: settings and threshold chosen on the other categories, "
                        "each category scored with the no-window files (writes no result files)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.set_defaults(func=cmd_eval_nab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, LookupError, RuntimeError, FileNotFoundError) as err:
        print(f"forewarn: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
