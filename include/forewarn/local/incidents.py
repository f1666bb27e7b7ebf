"""A stand-in for Systems Manager Incident Manager (``ssm-incidents``) on loopback.

moto has no Incident Manager, and the service is closed to new AWS accounts, so the embedded
stack serves this instead. It speaks the service's REST-JSON protocol, checks every request
against botocore's model of the service (the same check the SDK makes before sending, made
again on the server so a hand-written request is judged too), and keeps response plans,
incident records and their timelines in memory. Any AWS SDK or the AWS CLI reads them:

    aws ssm-incidents list-incident-records --endpoint-url http://127.0.0.1:5056
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import botocore.session
from botocore.validate import ParamValidator
from werkzeug.wrappers import Request, Response

from forewarn.local.serve import LoopbackServer

ACCOUNT = "123456789012"
REGION = "us-east-1"
IMPLEMENTED = (
    "CreateResponsePlan", "GetResponsePlan", "ListResponsePlans", "StartIncident", "GetIncidentRecord",
    "ListIncidentRecords", "UpdateIncidentRecord", "ListRelatedItems", "CreateTimelineEvent", "ListTimelineEvents",
    "GetTimelineEvent",
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class IncidentManager:
    """The WSGI application and its in-memory records."""

    def __init__(self) -> None:
        self.model = botocore.session.get_session().get_service_model("ssm-incidents")
        self.routes = {}
        for name in self.model.operation_names:
            op = self.model.operation_model(name)
            self.routes[(op.http["method"], op.http["requestUri"].split("?")[0])] = op
        self.lock = threading.Lock()
        self.plans: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self.related: dict[str, list[dict[str, Any]]] = {}
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.event_tokens: dict[tuple[str, str], str] = {}

    # -- protocol --------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        try:
            op = self.routes.get((request.method, request.path))
            if op is None:
                raise ApiError(404, "ResourceNotFoundException", f"no operation at {request.method} {request.path}")
            params = self.parse(op, request)
            report = ParamValidator().validate(params, op.input_shape)
            problems = [report.generate_report()] if report.has_errors() else []
            problems += constraint_errors(params, op.input_shape, op.name)
            if problems:
                raise ApiError(400, "ValidationException", "; ".join(problems))
            if op.name not in IMPLEMENTED:
                raise ApiError(501, "NotImplementedException", f"{op.name} is not served by the local stand-in")
            with self.lock:
                body = getattr(self, "op_" + op.name)(params)
            status = op.http.get("responseCode", 200)
            return Response(json.dumps(body, default=_json_default), status=status, content_type="application/json")(environ, start_response)
        except ApiError as err:
            response = Response(json.dumps({"message": err.message}), status=err.status, content_type="application/json")
            response.headers["x-amzn-ErrorType"] = err.code
            return response(environ, start_response)

    def parse(self, op: Any, request: Request) -> dict[str, Any]:
        shape = op.input_shape
        params: dict[str, Any] = {}
        if shape is None:
            return params
        query = parse_qs(request.query_string.decode())
        body = json.loads(request.get_data() or b"{}")
        unknown = sorted(set(body) - set(shape.members))
        if unknown:
            raise ApiError(400, "ValidationException", f"Unknown parameter in input: {', '.join(unknown)}")
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "querystring":
                if wire in query:
                    value = query[wire][0]
                    params[name] = int(value) if member.type_name == "integer" else value
            elif name in body:
                params[name] = _from_wire(body[name], member)
        return params

    # -- operations ------------------------------------------------------------------------

    def op_CreateResponsePlan(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - the API's names
        arn = f"arn:aws:ssm-incidents::{ACCOUNT}:response-plan/{p['name']}"
        if arn in self.plans:
            raise ApiError(409, "ConflictException", f"response plan {p['name']} exists")
        self.plans[arn] = {**p, "arn": arn}
        return {"arn": arn}

    def op_GetResponsePlan(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        plan = self.plans.get(p["arn"])
        if plan is None:
            raise ApiError(404, "ResourceNotFoundException", f"no response plan {p['arn']}")
        return {k: v for k, v in plan.items() if k != "clientToken"}

    def op_ListResponsePlans(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"responsePlanSummaries": [{"arn": a, "name": v["name"], "displayName": v.get("displayName")} for a, v in self.plans.items()]}

    def op_StartIncident(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        token = p.get("clientToken")
        if token and token in self.tokens:
            return {"incidentRecordArn": self.tokens[token]}
        plan = self.plans.get(p["responsePlanArn"])
        if plan is None:
            raise ApiError(404, "ResourceNotFoundException", f"no response plan {p['responsePlanArn']}")
        template = plan["incidentTemplate"]
        arn = f"arn:aws:ssm-incidents::{ACCOUNT}:incident-record/{plan['name']}/{uuid.uuid4()}"
        now = datetime.now(tz=UTC)
        trigger = p.get("triggerDetails") or {"source": "aws.ssm-incidents.custom"}
        self.records[arn] = {
            "arn": arn,
            "title": p.get("title", template["title"]),
            "summary": template.get("summary"),
            "status": "OPEN",
            "impact": p.get("impact", template["impact"]),
            "creationTime": now,
            "lastModifiedTime": now,
            "lastModifiedBy": f"arn:aws:iam::{ACCOUNT}:user/forewarn",
            "dedupeString": template.get("dedupeString", ""),
            "incidentRecordSource": {
                "createdBy": f"arn:aws:iam::{ACCOUNT}:user/forewarn",
                "source": trigger["source"],
                "invokedBy": trigger.get("triggerArn"),
            },
            "automationExecutions": [],
            "chatChannel": template.get("chatChannel", {"empty": {}}),
            "notificationTargets": template.get("notificationTargets", []),
            "rawData": trigger.get("rawData"),
        }
        self.related[arn] = list(p.get("relatedItems", []))
        if token:
            self.tokens[token] = arn
        return {"incidentRecordArn": arn}

    def _record(self, arn: str) -> dict[str, Any]:
        record = self.records.get(arn)
        if record is None:
            raise ApiError(404, "ResourceNotFoundException", f"no incident record {arn}")
        return record

    def op_GetIncidentRecord(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        record = self._record(p["arn"])
        return {"incidentRecord": {k: v for k, v in record.items() if k != "rawData"}}

    def op_ListIncidentRecords(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        summaries = [
            {k: r[k] for k in ("arn", "title", "status", "impact", "creationTime", "incidentRecordSource")}
            | ({"resolvedTime": r["resolvedTime"]} if "resolvedTime" in r else {})
            for r in sorted(self.records.values(), key=lambda r: r["creationTime"])
        ]
        return {"incidentRecordSummaries": summaries}

    def op_UpdateIncidentRecord(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        record = self._record(p["arn"])
        for key in ("title", "summary", "impact", "status"):
            if key in p:
                record[key] = p[key]
        if p.get("status") == "RESOLVED" and "resolvedTime" not in record:
            record["resolvedTime"] = datetime.now(tz=UTC)
        record["lastModifiedTime"] = datetime.now(tz=UTC)
        return {}

    def op_CreateTimelineEvent(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        arn = p["incidentRecordArn"]
        self._record(arn)
        token = p.get("clientToken")
        if token and (arn, token) in self.event_tokens:
            return {"incidentRecordArn": arn, "eventId": self.event_tokens[(arn, token)]}
        event_id = str(uuid.uuid4())
        self.timeline.setdefault(arn, []).append({
            "incidentRecordArn": arn, "eventId": event_id, "eventTime": p["eventTime"], "eventUpdatedTime": datetime.now(tz=UTC),
            "eventType": p["eventType"], "eventData": p["eventData"], "eventReferences": p.get("eventReferences", []),
        })
        if token:
            self.event_tokens[(arn, token)] = event_id
        return {"incidentRecordArn": arn, "eventId": event_id}

    def op_ListTimelineEvents(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        self._record(p["incidentRecordArn"])
        events = sorted(self.timeline.get(p["incidentRecordArn"], []), key=lambda e: e["eventTime"],
                        reverse=p.get("sortOrder") == "DESCENDING")
        return {"eventSummaries": [{k: v for k, v in e.items() if k != "eventData"} for e in events]}

    def op_GetTimelineEvent(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        for event in self.timeline.get(p["incidentRecordArn"], []):
            if event["eventId"] == p["eventId"]:
                return {"event": event}
        raise ApiError(404, "ResourceNotFoundException", f"no timeline event {p['eventId']} on {p['incidentRecordArn']}")

    def op_ListRelatedItems(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        self._record(p["incidentRecordArn"])
        return {"relatedItems": self.related.get(p["incidentRecordArn"], [])}


def constraint_errors(value: Any, shape: Any, path: str) -> list[str]:
    """The model's limits the service enforces and the SDK does not check: maxima of numbers,
    lengths and list sizes, and enum values."""
    if shape is None or value is None:
        return []
    errors = []
    meta = shape.metadata
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            errors += constraint_errors(value.get(name), member, f"{path}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: at most {meta['max']} items, got {len(value)}")
        for i, item in enumerate(value):
            errors += constraint_errors(item, shape.member, f"{path}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            errors += constraint_errors(item, shape.value, f"{path}.{key}")
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        if "max" in meta and value > meta["max"]:
            errors.append(f"{path}: {value} is above the maximum {meta['max']}")
    elif shape.type_name == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: longer than {meta['max']} characters")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} is not one of {', '.join(shape.enum)}")
    return errors


def _from_wire(value: Any, shape: Any) -> Any:
    """JSON values -> the Python types botocore's validator expects (timestamps, blobs)."""
    if shape.type_name == "timestamp" and isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if shape.type_name == "structure" and isinstance(value, dict):
        return {k: _from_wire(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_from_wire(v, shape.member) for v in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: _from_wire(v, shape.value) for k, v in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(type(value).__name__)


class IncidentManagerServer(LoopbackServer):
    """The stand-in on a loopback port, in a background thread."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        super().__init__(IncidentManager(), "ssm-incidents", port, host)
