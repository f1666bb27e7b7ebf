"""Alert episodes: the pure state machine between the detector's verdicts and the incidents.
Rows of judged buckets go in; what to open, update or resolve comes out. One episode per series:
its first anomalous bucket (on any metric) opens it, a deviation of another metric or direction
joins it (an update), and ``resolve_after`` calm buckets end it. Beside them, per series and
metric, the runs a per-series rule kept from alerting (``RuledOut``), which alert nobody but are
kept out of training the same way. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from forewarn.config import Settings
from forewarn.publish import Incident, impact_for

#: A deviation within the 99% band is calm (two-sided).
Z99 = 2.5758293035489


@dataclass
class Episode:
    """An open alert on one series: opened by its first anomalous bucket (on any metric), ended
    once every metric is back inside the 99% band for ``resolve_after`` buckets. A deviation of
    another metric or direction that joins it, or a peak that raises its impact, updates the
    one incident; the incident names the strongest deviation (``metric`` .. ``upper``)."""

    id: str
    started: str
    last_anomalous: str
    metric: str
    calm: int = 0
    peak: float = 0.0
    direction: str = "above"
    actual: float = 0.0
    expected: float = 0.0
    lower: float = 0.0
    upper: float = 0.0
    impact: int = 0  # as last reported (0 in states written before it was kept)
    deviations: list = field(default_factory=list)  # see Incident.deviations
    revision: int = 0
    #: True once every sink holds the incident (a live run opens the episodes not yet reported:
    #: one a failed sink, a crash or a backfill left unreported).
    reported: bool = False
    #: An operator's label on the episode (not_anomaly, expected, new_normal): its incident was
    #: resolved with the label's note, and the episode goes on silently until it ends.
    label: str = ""
    #: Who acknowledged its incident ("acknowledged by alice: on it"): told once, no updates after.
    acked: str = ""
    #: The last anomalous bucket its span record (``episodes/``) says; rewritten hourly as it grows.
    span_written: str = ""
    #: One incident per cause: the id of the roll-up parent's open episode this one joined (its
    #: incident lists it as related; this one is not sent on its own while that one is open) ...
    member_of: str = ""
    #: ... and, on a parent, the roll-up children that joined it.
    members: list = field(default_factory=list)
    #: Which dimension moved, over the whole episode: the metric explained and each series' summed
    #: deviation from forecast (itself and its roll-up children), added to by every run.
    explained: dict = field(default_factory=dict)


@dataclass
class RuledOut:
    """A run of buckets of one series' metric that the detector found anomalous and a per-series
    rule kept from alerting: opened by its first such bucket, carried on (in the state, like an
    episode) while the metric is outside the 99% band or flagged again, ended by ``resolve_after``
    calm buckets, or when an episode of the series takes the metric up (from then on the
    episode's span keeps it out). After its first flag the detector damps a deviation that
    persists, yet its later buckets are not normal either."""

    id: str
    series: str
    metric: str
    started: str
    #: The last bucket flagged or outside the 99% band: the run is kept out of training to it.
    last_deviating: str
    calm: int = 0
    #: The ``last_deviating`` its span record (``episodes/``) says; rewritten hourly as it grows.
    span_written: str = ""


@dataclass
class RuledOutRuns:
    """What tracking the ruled-out runs needs: the open runs by ``series|metric`` (carried in the
    state, updated in place), the detector's threshold, and the (series, metric) keys the rules
    do not judge (their flags are nobody's alert: no run). ``ended`` receives (run, the bucket
    that ended it) for each run that ended."""

    runs: dict[str, RuledOut]
    threshold: float
    unjudged: set = field(default_factory=set)
    ended: list = field(default_factory=list)
    #: The longest a run is kept out: a day's training. Nobody is told of a ruled-out run, so
    #: nobody labels a lasting shift the new normal; kept out for good, the old level would be
    #: forecast on and the shift would hold the run open for as long as training reaches back
    #: (a series watched for drops whose traffic doubled would hide its next halving for weeks).
    longest: pd.Timedelta = pd.Timedelta(days=1)

    def track(self, series: str, bucket: pd.Timestamp, group: list[dict], ep: Episode | None, resolve_after: int) -> None:
        """One bucket of one series (its rows, a metric each), after its episode's step (``ep``:
        the series' episode as that left it, or None)."""
        stamp = bucket.isoformat()
        taken = ({d["metric"] for d in ep.deviations} or {ep.metric}) if ep is not None else set()
        for row in group:
            key = f"{series}|{row['metric']}"
            run = self.runs.get(key)
            if row["metric"] in taken:  # the episode's span keeps the metric out from its start
                if run is not None:
                    self.ended.append((self.runs.pop(key), stamp))
                continue
            flagged = row["likelihood"] >= self.threshold
            if run is None:
                if flagged and not row["anomalous"] and (series, row["metric"]) not in self.unjudged:  # a rule kept it quiet
                    self.runs[key] = RuledOut(id=f"ruled-out|{key}|{stamp}", series=series, metric=row["metric"],
                                              started=stamp, last_deviating=stamp)
                continue
            if bucket - pd.Timestamp(run.started) >= self.longest:  # what lasts a day is learnt from then on
                self.ended.append((self.runs.pop(key), stamp))
                continue
            if flagged or (np.isfinite(row["deviation"]) and abs(row["deviation"]) > Z99):
                run.last_deviating, run.calm = stamp, 0
                continue
            run.calm += 1
            if run.calm >= resolve_after:
                self.ended.append((self.runs.pop(key), stamp))


def track_episodes(episodes: dict[str, Episode], rows: list[dict[str, Any]], settings: Settings,
                   closed: list[tuple[str, Episode]] | None = None,
                   ruled_out: RuledOutRuns | None = None) -> list[tuple[str, Incident]]:
    """Episodes per series, bucket by bucket over all its metrics, in time order: what to open,
    update or resolve. ``closed`` receives (series, episode) for each episode that ended;
    ``ruled_out``, when given, has its runs tracked on the same buckets (after the episodes'
    step, so that a metric an episode takes up ends its run)."""
    by_series: dict[tuple[str, pd.Timestamp], list[dict]] = {}
    for row in rows:
        by_series.setdefault((row["series"], row["bucket_start"]), []).append(row)
    actions = []
    for (series, bucket), group in sorted(by_series.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ending = episodes.get(series)
        action = track_episode(episodes, series, bucket, group, settings)
        if action and action[0] == "resolve" and closed is not None and ending is not None:
            closed.append((series, ending))
        if action:
            actions.append(action)
        if ruled_out is not None:
            ruled_out.track(series, bucket, group, episodes.get(series), settings.resolve_after)
    return actions


def track_episode(episodes: dict[str, Episode], series: str, bucket: pd.Timestamp, group: list[dict],
                   settings: Settings) -> tuple[str, Incident] | None:
    stamp = bucket.isoformat()
    flagged = sorted((r for r in group if r["anomalous"]), key=lambda r: -r["likelihood"])
    ep = episodes.get(series)
    if flagged:
        if ep is None:
            ep = episodes[series] = Episode(id=f"{series}|{bucket:%Y-%m-%dT%H:%M}", started=stamp, last_anomalous=stamp,
                                            metric=flagged[0]["metric"])
            for row in flagged:
                _join(ep, row, stamp)
            _lead(ep)
            ep.impact = impact_for(ep.peak, settings.alert_threshold)
            return "open", incident_of(ep, series, settings.alert_threshold)
        ep.last_anomalous, ep.calm = stamp, 0
        if not ep.deviations:  # an episode from a state written before deviations were kept
            ep.deviations = [_deviation(ep.metric, ep.direction, ep.started, ep.actual, ep.expected, ep.lower, ep.upper, ep.peak)]
            ep.impact = ep.impact or impact_for(ep.peak, settings.alert_threshold)
        changes = [_join(ep, row, stamp) for row in flagged]
        changes = [c for c in changes if c]
        lead = ep.metric, ep.direction
        _lead(ep)
        if (ep.metric, ep.direction) != lead:
            changes.append(f"now led by {ep.metric} {ep.direction}")
        impact = impact_for(ep.peak, settings.alert_threshold)
        if impact < ep.impact:
            changes.append(f"impact {ep.impact} -> {impact}")
            ep.impact = impact
        if not changes:
            return None
        ep.revision += 1
        incident = incident_of(ep, series, settings.alert_threshold)
        incident.changes, incident.updated = changes, bucket.to_pydatetime()
        return "update", incident
    if ep is not None:
        calm = all(abs(r["deviation"]) <= Z99 for r in group if np.isfinite(r["deviation"]))
        ep.calm = ep.calm + 1 if calm else 0
        if ep.calm >= settings.resolve_after:
            incident = incident_of(ep, series, settings.alert_threshold)
            incident.ended = bucket.to_pydatetime()
            del episodes[series]
            return "resolve", incident
    return None


def _deviation(metric: str, direction: str, since: str, actual: float, expected: float, lower: float, upper: float,
               likelihood: float) -> dict[str, Any]:
    return {"metric": metric, "direction": direction, "since": since, "actual": float(actual), "expected": float(expected),
            "lower_95": float(lower), "upper_95": float(upper), "likelihood": float(likelihood)}


def _join(ep: Episode, row: dict, stamp: str) -> str | None:
    """Fold one flagged row into the episode's deviations; say so when its metric and direction
    are new to the episode. A known deviation keeps the numbers of its strongest bucket."""
    direction = "above" if row["deviation"] > 0 else "below"
    new = _deviation(row["metric"], direction, stamp, row["actual"], row["mean"], row["lower_95"], row["upper_95"], row["likelihood"])
    ep.peak = max(ep.peak, float(row["likelihood"]))
    for known in ep.deviations:
        if (known["metric"], known["direction"]) == (row["metric"], direction):
            if new["likelihood"] > known["likelihood"]:
                known.update({k: v for k, v in new.items() if k != "since"})
            return None
    ep.deviations.append(new)
    return None if len(ep.deviations) == 1 else f"{row['metric']} {direction} its forecast joined"


def _lead(ep: Episode) -> None:
    """The incident names the episode's strongest deviation (the first to reach its peak)."""
    top = max(ep.deviations, key=lambda d: d["likelihood"])
    ep.metric, ep.direction = top["metric"], top["direction"]
    ep.actual, ep.expected, ep.lower, ep.upper = top["actual"], top["expected"], top["lower_95"], top["upper_95"]


def span_record(series: str, ep: Episode, ended: str | None, chain: str) -> dict[str, Any]:
    """What training needs of an episode: its series, the metrics that deviated, its first and
    last anomalous buckets and, once it ended, when (``train.episode_spans`` keeps it out up to
    the calm buckets that ended it)."""
    return {"version": 1, "episode": ep.id, "series": series, "started": ep.started, "last_anomalous": ep.last_anomalous,
            "ended": ended, "metrics": sorted({d["metric"] for d in ep.deviations} or {ep.metric}), "chain": chain}


def ruled_out_record(run: RuledOut, ended: str | None, chain: str) -> dict[str, Any]:
    """A ruled-out run's span record, as ``span_record`` an episode's (marked ``ruled_out``):
    ``last_anomalous`` is the run's last bucket outside the band, so training keeps it out to
    there, and while the run is open to an hour after."""
    return {"version": 1, "episode": run.id, "series": run.series, "started": run.started, "last_anomalous": run.last_deviating,
            "ended": ended, "metrics": [run.metric], "chain": chain, "ruled_out": True}


def adopt(facts: dict[str, Any]) -> Episode:
    """The episode an incident record describes (its ``facts``), for a run whose state has lost
    it: it goes on from what people were told, and resolves like any other."""
    lead = {"metric": facts["metric"], "direction": facts["direction"], "actual": facts["actual"],
            "expected": facts["expected"], "lower": facts["lower_95"], "upper": facts["upper_95"]}
    started = facts["started"]
    return Episode(id=facts["episode"], started=started, last_anomalous=started, peak=float(facts["anomaly_likelihood"]),
                   impact=int(facts["impact"]), deviations=[dict(d) for d in facts.get("deviations") or []],
                   revision=int(facts.get("revision", 0)), reported=True, members=list(facts.get("related") or []), **lead)


def incident_of(ep: Episode, series: str, threshold: float) -> Incident:
    return Incident(
        episode=ep.id, series=series, metric=ep.metric, started=datetime.fromisoformat(ep.started), direction=ep.direction,
        actual=float(ep.actual), expected=float(ep.expected), lower=float(ep.lower), upper=float(ep.upper),
        likelihood=float(ep.peak), impact=ep.impact or impact_for(ep.peak, threshold), evidence_uri="",
        deviations=[dict(d) for d in ep.deviations], revision=ep.revision, related=list(ep.members),
    )


