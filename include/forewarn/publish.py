"""Publishing: CloudWatch metrics (batched to the service limits) and incident sinks
(Incident Manager, SNS, OpsCenter) behind one interface."""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: PutMetricData calls in flight at once (boto3 clients are thread-safe).
METRIC_SENDERS = 2

#: PutMetricData limits: 1,000 metric data items and 1 MB of request a call.
MAX_DATUMS_PER_CALL = 1000
MAX_BYTES_PER_CALL = 1_000_000
#: CloudWatch rejects values beyond 2^360 in magnitude, non-zero ones below 2^-360, NaN and
#: infinities.
MAX_METRIC_VALUE = 2.0**360
MIN_METRIC_VALUE = 2.0**-360
#: CloudWatch takes points up to two weeks old and two hours ahead.
MAX_AGE = timedelta(days=14)
MAX_AHEAD = timedelta(hours=2)


def datum_size(datum: dict[str, Any]) -> int:
    """A generous estimate of a datum's share of the request (twice its JSON length, so the
    query encoding's longer keys fit as well), without encoding it."""
    n = 128 + len(datum["MetricName"]) + 12 * (len(datum.get("Values", ())) + len(datum.get("Counts", ())))
    for dim in datum.get("Dimensions", ()):
        n += 32 + len(dim["Name"]) + len(dim["Value"])
    return 2 * n


#: The request body a PutMetricData call in this thread sends instead of botocore's encoding.
_PREPARED = threading.local()


def _send_prepared_body(params: dict[str, Any], **_: Any) -> None:
    body = getattr(_PREPARED, "body", None)
    if body is not None:
        params["body"] = body


def _epoch(stamp: datetime) -> int:
    return calendar.timegm(stamp.utctimetuple())  # whole seconds, as botocore sends them


def json_body(namespace: str, part: list[dict[str, Any]]) -> bytes:
    """The AWS JSON 1.0 body of a PutMetricData call, as botocore's serializer writes it
    (timestamps as epoch seconds), encoded by the standard library's C encoder in one pass:
    botocore's serializer walks every field of every datum in Python, which made most of the
    client's time for 60,000 points."""
    data = []
    for datum in part:
        item = dict(datum)
        item["Timestamp"] = _epoch(datum["Timestamp"])
        data.append(item)
    return json.dumps({"Namespace": namespace, "MetricData": data}).encode()


def _json_protocol(cloudwatch: Any) -> bool:
    """Whether this client speaks CloudWatch's AWS JSON 1.0 protocol (botocore's choice among
    the protocols the service offers); other clients send through botocore's serializer."""
    meta = getattr(cloudwatch, "meta", None)
    if meta is None or getattr(meta, "service_model", None) is None:
        return False
    model = meta.service_model
    return getattr(model, "resolved_protocol", model.protocol) == "json" and model.metadata.get("jsonVersion") == "1.0"


def put_metrics(cloudwatch: Any, namespace: str, data: Iterable[dict[str, Any]], now: datetime,
                senders: int = METRIC_SENDERS) -> dict[str, int]:
    """Send metric data in as few calls as the limits allow, ``senders`` calls at a time (a
    client encodes one call while the service takes the other). Each body is encoded in one
    pass (``json_body``) and handed to botocore just before it compresses, signs and sends the
    call (its retries and endpoint rules unchanged). Points that are not finite, older than 14
    days or more than 2 hours ahead are skipped and counted; values beyond CloudWatch's range
    are clamped to it and counted (one bad value never fails the call for every series)."""
    counts = {"sent": 0, "calls": 0, "skipped_not_finite": 0, "skipped_too_old": 0, "skipped_future": 0, "clamped": 0}
    batches: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for datum in data:
        value = datum.get("Value")
        if value is None or not math.isfinite(value):
            counts["skipped_not_finite"] += 1
            continue
        if abs(value) > MAX_METRIC_VALUE or 0 < abs(value) < MIN_METRIC_VALUE:
            datum = {**datum, "Value": math.copysign(MAX_METRIC_VALUE, value) if abs(value) > 1 else 0.0}
            counts["clamped"] += 1
        stamp = datum["Timestamp"]
        if stamp < now - MAX_AGE:
            counts["skipped_too_old"] += 1
            continue
        if stamp > now + MAX_AHEAD:
            counts["skipped_future"] += 1
            continue
        n = datum_size(datum)
        if batch and (len(batch) == MAX_DATUMS_PER_CALL or size + n > MAX_BYTES_PER_CALL - 1000):
            batches.append(batch)
            batch, size = [], 0
        batch.append(datum)
        size += n
    if batch:
        batches.append(batch)

    prepared = _json_protocol(cloudwatch)
    if prepared:
        cloudwatch.meta.events.register("before-call.cloudwatch.PutMetricData", _send_prepared_body,
                                        unique_id="forewarn-prepared-metric-body")

    def send(part: list[dict[str, Any]]) -> None:
        if not prepared:
            cloudwatch.put_metric_data(Namespace=namespace, MetricData=part)
            return
        _PREPARED.body = json_body(namespace, part)
        try:
            cloudwatch.put_metric_data(Namespace=namespace, MetricData=[])
        finally:
            _PREPARED.body = None

    if senders > 1 and len(batches) > 1:
        with ThreadPoolExecutor(min(senders, len(batches))) as pool:
            list(pool.map(send, batches))  # the first failure is raised, after the others ended
    else:
        for part in batches:
            send(part)
    counts["sent"] = sum(len(b) for b in batches)
    counts["calls"] = len(batches)
    return counts


# --------------------------------------------------------------------------------------------
# Incidents
# --------------------------------------------------------------------------------------------


@dataclass
class Incident:
    """One episode of one series' metric: what a person on call needs to act."""

    episode: str  # series|first anomalous bucket (UTC)
    series: str
    metric: str
    started: datetime
    direction: str  # "above" or "below" the forecast
    actual: float
    expected: float
    lower: float
    upper: float
    likelihood: float
    impact: int
    evidence_uri: str
    dashboard_url: str | None = None
    ended: datetime | None = None
    #: Every deviation flagged in the episode, one per metric and direction, in the order they
    #: joined: ``{"metric", "direction", "since", "actual", "expected", "lower_95", "upper_95",
    #: "likelihood"}`` (the lead one, the strongest, is also the incident's own fields).
    deviations: list[dict[str, Any]] = field(default_factory=list)
    #: Updates reported so far (a deviation joined, or the impact rose), what the latest said,
    #: and the bucket it came with.
    revision: int = 0
    changes: list[str] = field(default_factory=list)
    updated: datetime | None = None
    #: A title of its own (forewarn's own episodes: "forewarn is blind for ...").
    headline: str | None = None
    #: Why it was resolved, when not by recovering (an operator's label).
    resolution: str | None = None
    #: Who acknowledged it, and their note ("acknowledged by alice: on it").
    acknowledgement: str | None = None
    #: Which dimension moved: the roll-up children that make up most of its deviation
    #: (``forewarn.dimensions.contributors``), ranked.
    contributors: list[dict[str, Any]] = field(default_factory=list)
    #: One incident per cause: the roll-up children whose episodes began while this one was
    #: open and joined it instead of opening incidents of their own.
    related: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        """Deterministic idempotency token: a retry or rerun never opens a second incident."""
        return token_of(self.episode)

    def token_for(self, event: str) -> str:
        """Idempotency token of one event of the episode (an update, the resolution)."""
        return hashlib.sha256(f"{self.episode}|{event}".encode()).hexdigest()[:64]

    @property
    def summary(self) -> str:
        """Every deviation of the episode, a line each: what a responder reads first."""
        lines = [f"{self.series}: {len(self.deviations) or 1} deviation(s) since {self.started:%Y-%m-%d %H:%M} UTC, impact {self.impact}."]
        for d in self.deviations:
            lines.append(f"- {d['metric']} {d['direction']} its forecast since {d['since'][:16].replace('T', ' ')} UTC: {d['actual']:,.4g} vs "
                         f"expected {d['expected']:,.4g} (95% band {d['lower_95']:,.4g}-{d['upper_95']:,.4g}), likelihood {d['likelihood']:.3f}")
        if self.contributors:
            from forewarn.dimensions import words

            lines.append(f"Where: {words(self.contributors)} of the deviation ({len(self.contributors)} of its roll-up series).")
        if self.related:
            lines.append(f"Related (same cause, no incidents of their own): {', '.join(self.related[:20])}"
                         + (f" and {len(self.related) - 20} more" if len(self.related) > 20 else "") + ".")
        if self.ended:
            lines.append(f"Back within the forecast band since {self.ended:%Y-%m-%d %H:%M} UTC.")
        return "\n".join(lines)[:8000]

    @property
    def title(self) -> str:
        if self.headline:
            return self.headline[:200]
        word = "dropped below" if self.direction == "below" else "rose above"
        where = ""
        if self.contributors:
            from forewarn.dimensions import words

            where = f" ({words(self.contributors[:2])})"  # early: an SNS subject keeps 99 characters
        return (f"{self.series} {self.metric} {word} its forecast{where}: {self.actual:,.4g} vs expected "
                f"{self.expected:,.4g} (95% band {self.lower:,.4g}-{self.upper:,.4g}) since {self.started:%Y-%m-%d %H:%M} UTC")[:200]

    def facts(self) -> dict[str, Any]:
        return {
            "source": "forewarn",
            "episode": self.episode,
            "series": self.series,
            "metric": self.metric,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat() if self.ended else None,
            "direction": self.direction,
            "actual": self.actual,
            "expected": self.expected,
            "lower_95": self.lower,
            "upper_95": self.upper,
            "anomaly_likelihood": round(self.likelihood, 6),
            "impact": self.impact,
            "evidence": self.evidence_uri,
            "deviations": self.deviations,
            "revision": self.revision,
            **({"headline": self.headline} if self.headline else {}),
            **({"contributors": self.contributors} if self.contributors else {}),
            **({"related": self.related} if self.related else {}),
        }


def token_of(episode: str) -> str:
    """The idempotency token of an episode (``series|first anomalous bucket``)."""
    return hashlib.sha256(episode.encode()).hexdigest()[:64]


def impact_for(likelihood: float, threshold: float) -> int:
    """Incident Manager impact (1 critical .. 5 no impact) from the episode's peak likelihood,
    by how many times the alert threshold's surprise it carries (likelihood ``s / (s + c)``
    gives ``s / c = L / (1 - L)``): 1.2x or more is impact 3, 1.6x impact 2, 2.6x impact 1."""
    def ratio(p: float) -> float:
        return p / (1 - p) if p < 1 else math.inf

    times = ratio(likelihood) / ratio(threshold)
    if times >= 2.6:
        return 1
    if times >= 1.6:
        return 2
    if times >= 1.2:
        return 3
    return 4


class IncidentSink(Protocol):
    """Where incidents go. ``deduplicates``: a repeated call with the same episode changes
    nothing (so the registry may repeat a call a crashed run may have made)."""

    name: str
    deduplicates: bool

    def open(self, incident: Incident) -> dict[str, Any]: ...

    def update(self, incident: Incident, ref: dict[str, Any]) -> None: ...

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None: ...

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None: ...


@dataclass
class SnsSink:
    sns: Any
    topic_arn: str
    name: str = "sns"
    deduplicates: bool = False  # a standard topic delivers every publish

    def _publish(self, incident: Incident, event: str) -> str:
        message = {"event": event, **incident.facts()}
        if event == "incident.updated":
            message["changes"] = incident.changes
        if event == "incident.resolved" and incident.resolution:
            message["resolution"] = incident.resolution
        if event == "incident.acknowledged":
            message["acknowledgement"] = incident.acknowledgement
        response = self.sns.publish(
            TopicArn=self.topic_arn,
            Subject=("[forewarn] " + incident.title)[:99],
            Message=json.dumps(message, sort_keys=True),
            MessageAttributes={
                "event": {"DataType": "String", "StringValue": event},
                "series": {"DataType": "String", "StringValue": incident.series},
                "impact": {"DataType": "Number", "StringValue": str(incident.impact)},
            },
        )
        return response["MessageId"]

    def open(self, incident: Incident) -> dict[str, Any]:
        return {"message_id": self._publish(incident, "incident.opened")}

    def update(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._publish(incident, "incident.updated")

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._publish(incident, "incident.resolved")

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._publish(incident, "incident.acknowledged")


@dataclass
class IncidentManagerSink:
    """Systems Manager Incident Manager: StartIncident with the episode's token as clientToken."""

    client: Any
    response_plan_arn: str
    name: str = "incident_manager"
    deduplicates: bool = True  # StartIncident/UpdateIncidentRecord take clientTokens

    def open(self, incident: Incident) -> dict[str, Any]:
        related = [{"identifier": {"type": "OTHER", "value": {"url": incident.evidence_uri}}, "title": "forewarn evidence (S3)"}]
        if incident.dashboard_url:
            related.append({"identifier": {"type": "OTHER", "value": {"url": incident.dashboard_url}}, "title": "CloudWatch dashboard"})
        response = self.client.start_incident(
            clientToken=incident.token,
            responsePlanArn=self.response_plan_arn,
            title=incident.title,
            impact=incident.impact,
            triggerDetails={
                "source": "forewarn",
                "timestamp": incident.started,
                "rawData": json.dumps(incident.facts(), sort_keys=True),
            },
            relatedItems=related,
        )
        return {"incident_record_arn": response["incidentRecordArn"]}

    def update(self, incident: Incident, ref: dict[str, Any]) -> None:
        """The record's title (it names the strongest deviation), impact and summary, and a
        timeline event saying what changed; both with tokens of this revision."""
        arn = ref.get("incident_record_arn")
        if not arn:
            return
        event = f"revision {incident.revision}"
        self.client.update_incident_record(arn=arn, clientToken=incident.token_for(event), title=incident.title,
                                           impact=incident.impact, summary=incident.summary)
        self.client.create_timeline_event(
            clientToken=incident.token_for(f"{event} timeline"), incidentRecordArn=arn, eventTime=incident.updated or incident.started,
            eventType="Custom Event", eventData=json.dumps({"source": "forewarn", "changes": incident.changes,
                                                           "impact": incident.impact, "deviations": incident.deviations})[:12000],
        )

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None:
        """A timeline event saying who is on it (Incident Manager has no acknowledged status
        for the record itself; its engagements are acknowledged by their contacts)."""
        arn = ref.get("incident_record_arn")
        if arn:
            self.client.create_timeline_event(
                clientToken=incident.token_for("acknowledged"), incidentRecordArn=arn, eventTime=incident.updated or incident.started,
                eventType="Custom Event", eventData=json.dumps({"source": "forewarn", "acknowledged": incident.acknowledgement}))

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None:
        arn = ref.get("incident_record_arn")
        if arn:
            summary = incident.summary + (f"\nResolved: {incident.resolution}" if incident.resolution else "")
            self.client.update_incident_record(arn=arn, status="RESOLVED", clientToken=incident.token_for("resolved"),
                                               summary=summary[:8000])


@dataclass
class OpsCenterSink:
    """Systems Manager OpsCenter: an OpsItem deduplicated on the episode token."""

    ssm: Any
    name: str = "opscenter"
    deduplicates: bool = True  # the dedup string: a second CreateOpsItem names the first

    @staticmethod
    def _item(incident: Incident) -> dict[str, str]:
        """What the OpsItem says of the episode, within OpsCenter's limits (severity 1-4)."""
        return {"Title": incident.title[:1024], "Description": json.dumps(incident.facts(), sort_keys=True)[:2048],
                "Severity": str(min(incident.impact, 4))}

    def open(self, incident: Incident) -> dict[str, Any]:
        try:
            response = self.ssm.create_ops_item(
                **self._item(incident),
                Source="forewarn",
                OperationalData={"/aws/dedup": {"Value": json.dumps({"dedupString": incident.token}), "Type": "SearchableString"}},
            )
        except self.ssm.exceptions.OpsItemAlreadyExistsException as err:  # opened by a run that crashed before recording it
            if not err.response.get("OpsItemId"):
                raise
            return {"ops_item_id": err.response["OpsItemId"]}
        return {"ops_item_id": response["OpsItemId"]}

    def update(self, incident: Incident, ref: dict[str, Any]) -> None:
        if ref.get("ops_item_id"):
            self.ssm.update_ops_item(OpsItemId=ref["ops_item_id"], **self._item(incident))

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None:
        """Someone is on it: the OpsItem goes to InProgress."""
        if ref.get("ops_item_id"):
            self.ssm.update_ops_item(OpsItemId=ref["ops_item_id"], Status="InProgress")

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None:
        if ref.get("ops_item_id"):
            self.ssm.update_ops_item(OpsItemId=ref["ops_item_id"], Status="Resolved")


@dataclass
class EmailSink:
    """Amazon SES: a plain-text email when an episode opens, changes and ends. The sender must be
    an identity SES has verified (SES refuses the rest: ``MessageRejected``)."""

    ses: Any
    sender: str
    recipients: list[str]
    name: str = "email"
    deduplicates: bool = False  # every call is a message

    def _send(self, incident: Incident, subject: str, text: str) -> str:
        response = self.ses.send_email(
            Source=self.sender, Destination={"ToAddresses": self.recipients},
            Message={"Subject": {"Data": f"[forewarn] {subject}: {incident.title}"[:998], "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": text + f"\n\nEpisode {incident.episode}\nEvidence: {incident.evidence_uri}\n"
                                       + (f"Dashboard: {incident.dashboard_url}\n" if incident.dashboard_url else ""),
                                       "Charset": "UTF-8"}}},
        )
        return response["MessageId"]

    def open(self, incident: Incident) -> dict[str, Any]:
        return {"message_id": self._send(incident, "incident", incident.summary)}

    def update(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._send(incident, "updated", "\n".join(incident.changes) + "\n\n" + incident.summary)

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._send(incident, "acknowledged", f"{incident.acknowledgement}\n\n{incident.summary}")

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None:
        note = f"\nResolved: {incident.resolution}" if incident.resolution else ""
        self._send(incident, "resolved", incident.summary + note)


@dataclass(frozen=True)
class SinkContext:
    """What a sink may need to be built: the AWS clients, the SNS topic and response plan, and
    the Airflow connection ids of the sinks outside AWS."""

    clients: Any
    sns_topic_arn: str | None = None
    response_plan_arn: str | None = None
    pagerduty_conn_id: str = "forewarn_pagerduty"
    slack_conn_id: str = "forewarn_slack"
    email_from: str = ""
    email_to: str = ""


def _sns(ctx: SinkContext) -> IncidentSink:
    if not ctx.sns_topic_arn:
        raise ValueError("the sns incident sink needs the topic: set FOREWARN_SNS_TOPIC")
    return SnsSink(ctx.clients.client("sns"), ctx.sns_topic_arn)


def _incident_manager(ctx: SinkContext) -> IncidentSink:
    if not ctx.response_plan_arn:
        raise ValueError("the incident_manager sink needs a response plan: set FOREWARN_RESPONSE_PLAN_ARN")
    return IncidentManagerSink(ctx.clients.client("ssm-incidents"), ctx.response_plan_arn)


def _pagerduty(ctx: SinkContext) -> IncidentSink:
    from forewarn.webhooks import pagerduty_sink

    return pagerduty_sink(ctx.pagerduty_conn_id)


def _slack(ctx: SinkContext) -> IncidentSink:
    from forewarn.webhooks import slack_sink

    return slack_sink(ctx.slack_conn_id)


def _email(ctx: SinkContext) -> IncidentSink:
    recipients = [a.strip() for a in ctx.email_to.split(",") if a.strip()]
    if not ctx.email_from or not recipients:
        raise ValueError("the email sink needs a sender SES has verified and recipients: set FOREWARN_EMAIL_FROM and FOREWARN_EMAIL_TO")
    if len(recipients) > 50:
        raise ValueError(f"FOREWARN_EMAIL_TO lists {len(recipients)} recipients; SES takes at most 50 a message: use a mailing list")
    return EmailSink(ctx.clients.client("ses"), ctx.email_from, recipients)


#: Incident sinks by the name ``FOREWARN_INCIDENT_SINKS`` lists: adding one is its class and a
#: line here.
SINKS: dict[str, Callable[[SinkContext], IncidentSink]] = {
    "sns": _sns,
    "incident_manager": _incident_manager,
    "opscenter": lambda ctx: OpsCenterSink(ctx.clients.client("ssm")),
    "pagerduty": _pagerduty,
    "slack": _slack,
    "email": _email,
}


def make_sinks(names: str, clients: Any, sns_topic_arn: str | None, response_plan_arn: str | None,
               **conn_ids: str) -> list[IncidentSink]:
    """The sinks ``names`` lists (comma-separated, from ``SINKS``)."""
    ctx = SinkContext(clients, sns_topic_arn, response_plan_arn, **conn_ids)
    sinks: list[IncidentSink] = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name not in SINKS:
            raise ValueError(f"unknown incident sink {name!r}: use {', '.join(SINKS)} (FOREWARN_INCIDENT_SINKS)")
        sinks.append(SINKS[name](ctx))
    return sinks


#: The dashboard's "most anomalous" graphs: series per graph (Metrics Insights ranks them).
TOP_SERIES = 10


def dashboard_body(namespace: str, forecast_metrics: list[str], published: list[str], region: str, threshold: float,
                   default_series: str = "") -> dict[str, Any]:
    """A dashboard whose size does not depend on the number of series: per forecast metric, the
    ``TOP_SERIES`` series with the highest anomaly likelihood (a Metrics Insights query, ranked
    by CloudWatch, so 10,000 series need no widget each); one series chosen in the dashboard's
    ``Series`` field against its forecast (SEARCH expressions); the pipeline's own health."""
    likelihood = "AnomalyLikelihood" in published
    widgets: list[dict[str, Any]] = [{
        "type": "text", "x": 0, "y": 0, "width": 24, "height": 2,
        "properties": {"markdown": f"## forewarn\nThe most anomalous series first (likelihood ≥ {threshold} is anomalous); type a "
                                   "series in the **Series** field above to see it against its forecast. Every judged "
                                   "bucket, with its band: the evidence in S3 and the forewarn page in Airflow."}}]
    y, rows = 2, -(-len(forecast_metrics) // 2)  # two graphs a row
    for i, metric in enumerate(forecast_metrics if likelihood else []):
        # FROM the namespace, not SCHEMA(ns, Metric, Series): a roll-up's metrics carry its
        # dimension keys too (region=eu), and SCHEMA matches one exact set of dimension names
        query = (f'SELECT MAX(AnomalyLikelihood) FROM "{namespace}" WHERE Metric = \'{metric}\' '  # noqa: S608 - a CloudWatch Metrics Insights query over validated metric names
                 f"GROUP BY Series ORDER BY MAX() DESC LIMIT {TOP_SERIES}")
        widgets.append({"type": "metric", "x": (i % 2) * 12, "y": y + (i // 2) * 7, "width": 12, "height": 7, "properties": {
            "title": f"Most anomalous series · {metric}", "region": region, "view": "timeSeries", "stat": "Maximum", "period": 300,
            "metrics": [[{"expression": query, "id": f"top{i}", "label": ""}]], "yAxis": {"left": {"min": 0, "max": 1}},
            "annotations": {"horizontal": [{"value": threshold, "label": "alert threshold"}]}}})
    y += 7 * rows if likelihood else 0
    shown = [n for n in ("ForecastUpper", "ForecastLower", "Forecast", "Actual") if n in published]
    for i, metric in enumerate(forecast_metrics if shown else []):
        # no schema braces, for the same reason: exact (quoted) values of the namespace and dimensions
        lines = [[{"expression": f"SEARCH('Namespace=\"{namespace}\" MetricName=\"{name}\" Metric=\"{metric}\" "
                                 f"Series=\"SERIES\"', 'Average', 300)", "id": f"s{i}{j}", "label": name}]
                 for j, name in enumerate(shown)]
        widgets.append({"type": "metric", "x": (i % 2) * 12, "y": y + (i // 2) * 6, "width": 12, "height": 6, "properties": {
            "title": f"SERIES · {metric}: actual against forecast", "region": region, "view": "timeSeries", "period": 300,
            "metrics": lines}})
    y += 6 * rows if shown else 0
    health = [[namespace, name, "Pipeline", "forewarn"] for name in ("BucketsJudgedRatio", "BlindSeries", "DataFreshnessMinutes",
                                                                      "ForecastAgeHours", "UnforecastSeries")]
    widgets.append({"type": "metric", "x": 0, "y": y, "width": 24, "height": 6, "properties": {
        "title": "forewarn's own health", "region": region, "view": "timeSeries", "stat": "Maximum", "period": 300,
        "metrics": health}})
    variables = [{"type": "pattern", "pattern": "SERIES", "inputType": "input", "id": "series", "label": "Series",
                  "defaultValue": default_series or "SERIES", "visible": True}] if shown else []
    return {"widgets": widgets, **({"variables": variables} if variables else {})}


def sync_dashboard(cloudwatch: Any, name: str, body: dict[str, Any]) -> bool:
    """Make the dashboard hold ``body``; False when it already did."""
    text = json.dumps(body, sort_keys=True)
    try:
        current = cloudwatch.get_dashboard(DashboardName=name)["DashboardBody"]
        if json.loads(current) == json.loads(text):
            return False
    except cloudwatch.exceptions.ResourceNotFound:
        pass
    cloudwatch.put_dashboard(DashboardName=name, DashboardBody=text)
    return True


def dashboard_url(region: str, name: str) -> str:
    return f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards:name={name}"


def alarm_name(namespace: str, series: str, metric: str) -> str:
    return f"{namespace}-{series}-{metric}"[:255]


def sync_alarms(cloudwatch: Any, namespace: str, keys: list[tuple[str, str]], action_arn: str, threshold: float,
                period: int = 300, owns: Callable[[str], bool] | None = None) -> dict[str, int]:
    """One alarm per series and metric on ``AnomalyLikelihood >= threshold`` (the buckets the
    comparison calls anomalous), acting on ``action_arn`` (an Incident Manager response plan or
    an SNS topic); alarms of series no longer published are deleted, so the set stays in step
    with the series. One metric each: one alarm metric at list price. ``owns`` (a comparison
    shard's test of a series name) limits the deletions to alarms of the caller's series."""
    from forewarn.dimensions import cloudwatch_dimensions

    wanted = {alarm_name(namespace, s, m): (s, m) for s, m in keys}
    existing: set[str] = set()
    series_of: dict[str, str] = {}
    dimensions_of: dict[str, list[tuple[str, str]]] = {}
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=f"{namespace}-"):
        for a in page.get("MetricAlarms", []):
            existing.add(a["AlarmName"])
            series_of[a["AlarmName"]] = next((d["Value"] for d in a.get("Dimensions", []) if d["Name"] == "Series"), "")
            dimensions_of[a["AlarmName"]] = sorted((d["Name"], d["Value"]) for d in a.get("Dimensions", []))
    redone = 0
    for name, (series, metric) in sorted(wanted.items()):
        dims = cloudwatch_dimensions(series, metric)
        if name in existing:
            if dimensions_of[name] == sorted((d["Name"], d["Value"]) for d in dims):
                continue
            redone += 1  # made before its series carried its dimension keys: the alarm watches the metric it has now
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            AlarmDescription=f"forewarn: {series} {metric} left what its forecast expected (anomaly likelihood >= {threshold}).",
            ActionsEnabled=True,
            AlarmActions=[action_arn],
            Namespace=namespace,
            MetricName="AnomalyLikelihood",
            Dimensions=dims,
            Statistic="Maximum",
            Period=period,
            EvaluationPeriods=1,
            Threshold=threshold,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
    stale = sorted(name for name in existing - set(wanted) if owns is None or owns(series_of[name]))
    for i in range(0, len(stale), 100):  # DeleteAlarms takes 100 names a call
        cloudwatch.delete_alarms(AlarmNames=stale[i : i + 100])
    return {"created": len(set(wanted) - existing), "deleted": len(stale), "kept": len(set(wanted) & existing) - redone,
            "updated": redone}
