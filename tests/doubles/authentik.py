"""A test double of authentik's invitation API (2026.2.2), as the operator and `doctor` use it.

An HTTP server on 127.0.0.1 (a free port, a thread of its own) that copies what authentik does
(`../shared/reference/authentik/FACTS.md`, section numbers below refer to it):
- `/api/v3/stages/invitation/invitations/`: list (exact `name` filter, `search` as a
  case-insensitive substring over name, creator and flow slug, page/page_size, the
  pagination block with 0 for "no such page", `autocomplete: {}`), create (201; `name` is NOT
  unique, a second create makes a second invitation; no `expires` → one day; the flow by UUID),
  retrieve, delete (204, 404 for an unknown one) (section 1, 5);
- `/api/v3/flows/instances/{slug}/` (the flow's UUID, for the slug → UUID step) and
  `/api/v3/stages/invitation/stages/` (which stages are Invitation stages, for `doctor`);
- Bearer API tokens with per-token permissions: a bad token is 403 "Token invalid/expired", a
  missing permission 403 "You do not have permission to perform this action." (never 401,
  section 4);
- the invitee opening the link: a single-use invitation is deleted when the flow reaches its
  Invitation stage (`open`, section 2.2); expired ones stay listed until `clean_expired` runs
  (section 2.3).

Every JSON answer on an invitation path is validated against `invitations-openapi.json` (OpenAPI
3.0.3, read as JSON Schema with `nullable` as authentik means it, every object closed to fields
it does not name); the flow answer against the spec's `Flow` schema; the invitation-stage list,
outside the subset, against the fields of `InvitationStageSerializer` at 2026.2.2. Violations
collect in `spec_violations`, request bodies outside `InvitationRequest` in `request_violations`.

Tests steer it with thread-safe hooks: `down` (refuse with 503), `drop_next` (close the
connection without an answer, optionally after acting), `permissions`, `open`, `clean_expired`.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

from tests.doubles.loopback_server import LoopbackHttpServer

SPEC_ENV = "AUTHENTIK_INVITATIONS_SPEC"
API = "/api/v3"
INVITATIONS = "/stages/invitation/invitations/"
INVITATION = "/stages/invitation/invitations/{invite_uuid}/"
FLOW = "/flows/instances/{slug}/"
INVITATION_STAGES = "/stages/invitation/stages/"

VIEW = "authentik_stages_invitation.view_invitation"
ADD = "authentik_stages_invitation.add_invitation"
CHANGE = "authentik_stages_invitation.change_invitation"
DELETE = "authentik_stages_invitation.delete_invitation"
VIEW_STAGE = "authentik_stages_invitation.view_invitationstage"
VIEW_FLOW = "authentik_flows.view_flow"
#: What the guide's role grants: ensure and delete invitations, read the flow and its stages.
OPERATOR_PERMISSIONS = frozenset({VIEW, ADD, DELETE, VIEW_STAGE, VIEW_FLOW})

NO_CREDENTIALS = "Authentication credentials were not provided."
TOKEN_INVALID = "Token invalid/expired"
NO_PERMISSION = "You do not have permission to perform this action."
SLUG = re.compile(r"^[-a-zA-Z0-9_]+\Z")
DEFAULT_API_TOKEN = "authentik-api-token-for-tests-only"
DEFAULT_TOKEN_DURATION = dt.timedelta(days=1)  # the tenant's `default_token_duration`
INVITATION_STAGE_MODEL = "authentik_stages_invitation.invitationstage"

JsonObject = dict[str, Any]


def default_spec_path() -> Path:
    override = os.environ.get(SPEC_ENV)
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent, repo.parent.parent):
        candidate = base / "shared" / "reference" / "authentik" / "invitations-openapi.json"
        if candidate.is_file():
            return candidate
    return repo.parent / "shared" / "reference" / "authentik" / "invitations-openapi.json"


def authentik_time(moment: dt.datetime) -> str:
    """authentik's output format: UTC, `Z`, microseconds only when non-zero (section 5)."""
    text = moment.astimezone(dt.UTC).isoformat()
    text = text.replace(".000000", "")
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=dt.UTC)


def _as_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: `nullable: true` admits null (authentik's meaning,
    also beside `allOf`, FACTS section 7.2), and every object is closed to unnamed fields."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if "$ref" in converted:
        converted["$ref"] = "urn:authentik-invitations" + converted["$ref"]
    if "properties" in converted and "additionalProperties" not in converted:
        converted["additionalProperties"] = False
    if node.get("nullable") is True:
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


#: InvitationStageSerializer at 2026.2.2 (StageSerializer's fields plus one): not in the subset.
INVITATION_STAGE_SCHEMA: JsonObject = {
    "type": "object",
    "properties": {
        "pk": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "component": {"type": "string"},
        "verbose_name": {"type": "string"},
        "verbose_name_plural": {"type": "string"},
        "meta_model_name": {"type": "string"},
        "flow_set": {"type": "array", "items": {"type": "object"}},
        "continue_flow_without_invitation": {"type": "boolean"},
    },
    "required": ["pk", "name", "component", "meta_model_name"],
    "additionalProperties": False,
}


class InvitationsSpec:
    """Validates bodies against `invitations-openapi.json`."""

    URI = "urn:authentik-invitations"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_spec_path()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"authentik's invitation API subset is missing at {self.path}: the double "
                f"validates every answer against it. Put invitations-openapi.json there or set "
                f"{SPEC_ENV}."
            )
        self.document: JsonObject = json.loads(self.path.read_text(encoding="utf-8"))
        self._schemas = _as_json_schema(self.document["components"]["schemas"])
        self._lock = threading.Lock()
        self._format_checker = jsonschema.FormatChecker()

    def _validator(self, schema: JsonObject) -> jsonschema.Draft7Validator:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7

        root = {"components": {"schemas": self._schemas}}
        registry: Registry[Any] = Registry().with_resource(
            self.URI, Resource.from_contents(root, default_specification=DRAFT7)
        )
        return jsonschema.Draft7Validator(
            schema, registry=registry, format_checker=self._format_checker
        )

    def schema_errors(self, name: str, body: object, where: str) -> list[str]:
        """Violations of components/schemas/`name` by `body`."""
        validator = self._validator({"$ref": f"{self.URI}#/components/schemas/{name}"})
        return [f"{where}: {e.message} at {e.json_path}" for e in validator.iter_errors(body)]

    def response_errors(
        self, method: str, template: str, status: int, body: object | None
    ) -> list[str]:
        """Violations of the spec by a response on an invitation path (empty: it conforms)."""
        where = f"{method} {template} -> {status}"
        operation = self.document["paths"].get(template, {}).get(method.lower())
        if operation is None:
            return [f"{where}: operation not in the spec"]
        documented = operation["responses"].get(str(status))
        if documented is None:
            # 404 is undeclared (FACTS section 7.3): DRF's `{"detail": ...}`, GenericError's shape.
            if status == 404 and body is not None:
                return self.schema_errors("GenericError", body, where)
            return [f"{where}: status not in the spec"]
        if "$ref" in documented:
            documented = self.document["components"]["responses"][documented["$ref"].split("/")[-1]]
        content = documented.get("content")
        if content is None:
            return [] if body is None else [f"{where}: the spec documents no body"]
        ref = content["application/json"]["schema"]["$ref"]
        return self.schema_errors(ref.split("/")[-1], body, where)


@dataclass
class StoredInvitation:
    pk: str
    name: str
    expires: dt.datetime
    fixed_data: JsonObject
    single_use: bool
    flow: str | None
    created_by: int


@dataclass
class StoredFlow:
    pk: str
    slug: str
    name: str
    designation: str = "enrollment"
    stages: list[str] = field(default_factory=list)


@dataclass
class ServiceAccount:
    pk: int
    username: str
    permissions: set[str]


@dataclass
class Answer:
    status: int
    body: object | None
    template: str | None  # the spec path it is validated on; None: validated by `schema`
    schema: str | None = None


class AuthentikDouble(LoopbackHttpServer):
    """authentik's invitation API on 127.0.0.1; `api_token` may do what the guide's role grants."""

    def __init__(
        self,
        *,
        api_token: str = DEFAULT_API_TOKEN,
        flow_slug: str = "matrix-invitation",
        permissions: frozenset[str] = OPERATOR_PERMISSIONS,
        spec: InvitationsSpec | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.spec = spec or InvitationsSpec()
        self.api_token = api_token
        self._lock = threading.RLock()
        self._invitations: dict[str, StoredInvitation] = {}
        self._accounts: dict[str, ServiceAccount] = {
            api_token: ServiceAccount(7, "matrix-invite-operator", set(permissions))
        }
        stage = str(uuid.uuid4())
        self._stages: dict[str, str] = {stage: "matrix-invitation-invitation"}
        self.flows: dict[str, StoredFlow] = {
            flow_slug: StoredFlow(
                str(uuid.uuid4()), flow_slug, "Matrix invitation", stages=[stage, str(uuid.uuid4())]
            )
        }
        self.spec_violations: list[str] = []
        self.request_violations: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path template)
        self.opened: list[str] = []  # pks of invitations the invitee opened
        self._ever: set[str] = set()
        self.down = False
        self._drops: list[tuple[str, str, bool]] = []  # (method, template, act first)
        self.now: dt.datetime | None = None  # None: the wall clock
        # Run once after the next create took effect, before its answer (which is then lost).
        self.after_create: Callable[[], None] | None = None
        super().__init__(_handler_for(self), host="127.0.0.1", name="authentik-double")
        self._tls = tls
        if tls is not None:  # HTTPS, as authentik behind its own certificate
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)

    @property
    def url(self) -> str:
        plain = super().url
        return plain.replace("http://", "https://", 1) if self._tls is not None else plain

    # --- steering -------------------------------------------------------------------------------

    def clock(self) -> dt.datetime:
        return self.now or dt.datetime.now(dt.UTC)

    def permissions(self, permissions: set[str], token: str | None = None) -> None:
        with self._lock:
            self._accounts[token or self.api_token].permissions = set(permissions)

    def drop_next(self, method: str, template: str, *, after_acting: bool = True) -> None:
        """The next such request gets no answer: the connection closes (after the server acted
        on it, like an answer lost on the way back, unless `after_acting` is False)."""
        with self._lock:
            self._drops.append((method, template, after_acting))

    def invitations(self) -> list[StoredInvitation]:
        with self._lock:
            return [copy.deepcopy(i) for i in self._invitations.values()]

    def named(self, name: str) -> list[StoredInvitation]:
        return [i for i in self.invitations() if i.name == name]

    def open(self, pk: str) -> bool:
        """The invitee opens `/if/flow/<slug>/?itoken=<pk>`: the flow reaches its Invitation stage,
        and a single-use invitation is deleted there (section 2.2). False: invalid link."""
        with self._lock:
            invitation = self._invitations.get(pk)
            if invitation is None or invitation.expires <= self.clock():
                self._invitations.pop(pk, None)
                return False
            if invitation.single_use:
                del self._invitations[pk]
            self.opened.append(pk)
            return True

    def clean_expired(self) -> int:
        """authentik's `clean_expired_models` task (every 5 minutes in authentik)."""
        with self._lock:
            gone = [pk for pk, i in self._invitations.items() if i.expires <= self.clock()]
            for pk in gone:
                del self._invitations[pk]
            return len(gone)

    def link_pks(self) -> set[str]:
        """Every invitation pk ever handed out (what the secret-hygiene scan looks for)."""
        with self._lock:
            return set(self._ever)

    # --- serving --------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[Answer, str | None, bool]:
        """The answer, the template and whether to drop the connection (after acting or not)."""
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = self._route(method, parts.path)
        if route is None:
            return Answer(404, {"detail": "Not found."}, None, "GenericError"), None, False
        template, argument = route
        drop = self._take_drop(method, template)
        if drop is not None and not drop:
            return Answer(0, None, template), template, True
        with self._lock:
            self.requests.append((method, template))
            if self.down:
                answer = Answer(503, None, None)
            else:
                answer = self._answer(method, template, argument, query, headers, body)
            hook = self.after_create if answer.status == 201 else None
            if hook is not None:
                self.after_create = None
        if hook is not None:
            hook()  # e.g. kill the operator: it dies after authentik acted, before the answer
            return answer, template, True
        return answer, template, drop is not None

    def _take_drop(self, method: str, template: str) -> bool | None:
        with self._lock:
            for i, (m, t, after) in enumerate(self._drops):
                if (m, t) == (method, template):
                    del self._drops[i]
                    return after
        return None

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, str | None] | None:
        if not path.startswith(API):
            return None
        rest = path[len(API) :]
        if rest == INVITATIONS and method in ("GET", "POST"):
            return INVITATIONS, None
        if rest == INVITATION_STAGES and method == "GET":
            return INVITATION_STAGES, None
        match = re.fullmatch(r"/stages/invitation/invitations/([^/]+)/", rest)
        if match and method in ("GET", "DELETE"):
            return INVITATION, match.group(1)
        match = re.fullmatch(r"/flows/instances/([^/]+)/", rest)
        if match and method == "GET":
            return FLOW, match.group(1)
        return None

    def _answer(
        self,
        method: str,
        template: str,
        argument: str | None,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> Answer:
        account, refused = self._authenticate(headers)
        if account is None:
            return Answer(403, {"detail": refused}, template)
        needs = {
            (INVITATIONS, "GET"): {VIEW},
            (INVITATIONS, "POST"): {ADD},
            (INVITATION, "GET"): {VIEW},
            (INVITATION, "DELETE"): {VIEW, DELETE},
            (FLOW, "GET"): {VIEW_FLOW},
            (INVITATION_STAGES, "GET"): {VIEW_STAGE},
        }[(template, method)]
        if not needs <= account.permissions:
            return Answer(403, {"detail": NO_PERMISSION}, template)
        if template == INVITATIONS and method == "GET":
            return self._list(query)
        if template == INVITATIONS:
            return self._create(account, body)
        if template == FLOW:
            flow = self.flows.get(argument or "")
            if flow is None:
                return Answer(
                    404, {"detail": "No Flow matches the given query."}, None, "GenericError"
                )
            return Answer(200, self._flow_json(flow), None, "Flow")
        if template == INVITATION_STAGES:
            return self._stage_list()
        return self._one(method, argument or "")

    def _authenticate(self, headers: dict[str, str]) -> tuple[ServiceAccount | None, str]:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None, NO_CREDENTIALS
        account = self._accounts.get(key.strip())
        return (account, "") if account is not None else (None, TOKEN_INVALID)

    def _list(self, query: dict[str, str]) -> Answer:
        try:
            page = int(query.get("page", "1"))
            size = min(int(query.get("page_size", "20")), 100)
        except ValueError:
            return Answer(404, {"detail": "Invalid page."}, INVITATIONS)
        found = [i for i in self._invitations.values() if query.get("name", i.name) == i.name]
        if query.get("search"):  # case-insensitive substring, OR over name, creator, flow slug
            needle = query["search"].lower()
            found = [i for i in found if needle in self._searchable(i)]
        found.sort(key=lambda i: i.expires, reverse=True)  # ordering -expires
        pages = max(1, -(-len(found) // size))
        if page < 1 or page > pages:
            return Answer(404, {"detail": "Invalid page."}, INVITATIONS)
        shown = found[(page - 1) * size : page * size]
        pagination = {
            "next": page + 1 if page < pages else 0,
            "previous": page - 1 if page > 1 else 0,
            "count": len(found),
            "current": page,
            "total_pages": pages,
            "start_index": (page - 1) * size + 1 if found else 0,
            "end_index": (page - 1) * size + len(shown),
        }
        results = [self._invitation_json(i) for i in shown]
        body = {"pagination": pagination, "results": results, "autocomplete": {}}
        return Answer(200, body, INVITATIONS)

    def _searchable(self, invitation: StoredInvitation) -> str:
        creator = next(a for a in self._accounts.values() if a.pk == invitation.created_by)
        flow = next((f.slug for f in self.flows.values() if f.pk == invitation.flow), "")
        return " ".join((invitation.name, creator.username, flow)).lower()

    def _create(self, account: ServiceAccount, raw: bytes) -> Answer:
        try:
            request = json.loads(raw or b"null")
        except ValueError:
            return Answer(400, {"detail": "JSON parse error"}, INVITATIONS)
        if not isinstance(request, dict):
            request = {}
        self.request_violations += self.spec.schema_errors(
            "InvitationRequest", request, "POST invitations request"
        )
        errors: dict[str, list[str]] = {}
        name = request.get("name")
        if "name" not in request:
            errors["name"] = ["This field is required."]
        elif name is None:
            errors["name"] = ["This field may not be null."]
        elif name == "":
            errors["name"] = ["This field may not be blank."]
        elif not isinstance(name, str) or not SLUG.match(name):
            errors["name"] = [
                "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens."
            ]
        expires = self.clock() + DEFAULT_TOKEN_DURATION
        if request.get("expires") is not None:
            parsed = parse_time(str(request["expires"]))
            if parsed is None:
                errors["expires"] = [
                    "Datetime has wrong format. Use one of these formats instead: "
                    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                ]
            else:
                expires = parsed
        fixed = request.get("fixed_data", {})
        if not isinstance(fixed, dict):
            errors["fixed_data"] = ["Value must be a dictionary, and not have any duplicate keys."]
        single_use = request.get("single_use", False)
        if not isinstance(single_use, bool):
            errors["single_use"] = ["Must be a valid boolean."]
        flow = request.get("flow")
        if flow is not None:
            try:
                uuid.UUID(str(flow))
            except ValueError:
                errors["flow"] = [f"“{flow}” is not a valid UUID."]
            else:
                if not any(f.pk == flow for f in self.flows.values()):
                    errors["flow"] = [f'Invalid pk "{flow}" - object does not exist.']
        if errors:
            return Answer(400, errors, INVITATIONS)
        stored = StoredInvitation(
            pk=str(uuid.uuid4()),
            name=str(name),
            expires=expires,
            fixed_data=fixed,
            single_use=single_use,
            flow=flow,
            created_by=account.pk,
        )
        self._invitations[stored.pk] = stored
        self._ever.add(stored.pk)
        return Answer(201, self._invitation_json(stored), INVITATIONS)

    def _one(self, method: str, pk: str) -> Answer:
        try:
            uuid.UUID(pk)
        except ValueError:
            return Answer(404, {"detail": "Not found."}, INVITATION)
        invitation = self._invitations.get(str(uuid.UUID(pk)))
        if invitation is None:
            return Answer(404, {"detail": "No Invitation matches the given query."}, INVITATION)
        if method == "DELETE":
            del self._invitations[invitation.pk]
            return Answer(204, None, INVITATION)
        return Answer(200, self._invitation_json(invitation), INVITATION)

    def _stage_list(self) -> Answer:
        results = [
            {
                "pk": pk,
                "name": name,
                "component": "ak-stage-invitation-form",
                "verbose_name": "Invitation Stage",
                "verbose_name_plural": "Invitation Stages",
                "meta_model_name": INVITATION_STAGE_MODEL,
                "flow_set": [],
                "continue_flow_without_invitation": False,
            }
            for pk, name in self._stages.items()
        ]
        pagination = {
            "next": 0,
            "previous": 0,
            "count": len(results),
            "current": 1,
            "total_pages": 1,
            "start_index": 1 if results else 0,
            "end_index": len(results),
        }
        body = {"pagination": pagination, "results": results, "autocomplete": {}}
        return Answer(200, body, None, "InvitationStageList")

    def remove_invitation_stage(self, slug: str) -> None:
        """The flow keeps only stages that are not Invitation stages (a wrong blueprint)."""
        with self._lock:
            flow = self.flows[slug]
            flow.stages = [s for s in flow.stages if s not in self._stages]

    def _flow_json(self, flow: StoredFlow) -> JsonObject:
        return {
            "pk": flow.pk,
            "policybindingmodel_ptr_id": flow.pk,
            "name": flow.name,
            "slug": flow.slug,
            "title": flow.name,
            "designation": flow.designation,
            "background": "",
            "background_url": "/static/dist/assets/images/flow_background.jpg",
            "background_themed_urls": None,
            "stages": list(flow.stages),
            "policies": [],
            "cache_count": 0,
            "policy_engine_mode": "any",
            "compatibility_mode": False,
            "export_url": f"/api/v3/flows/instances/{flow.slug}/export/",
            "layout": "stacked",
            "denied_action": "message_continue",
            "authentication": "require_unauthenticated",
        }

    def _invitation_json(self, invitation: StoredInvitation) -> JsonObject:
        account = next(a for a in self._accounts.values() if a.pk == invitation.created_by)
        flow = next((f for f in self.flows.values() if f.pk == invitation.flow), None)
        return {
            "pk": invitation.pk,
            "name": invitation.name,
            "expires": authentik_time(invitation.expires),
            "fixed_data": copy.deepcopy(invitation.fixed_data),
            "created_by": {
                "pk": account.pk,
                "username": account.username,
                "name": account.username,
                "is_active": True,
                "last_login": None,
                "email": f"{account.username}@service-accounts.example.org",
                "attributes": {"goauthentik.io/user/service-account": True},
                "uid": hashlib.sha256(account.username.encode()).hexdigest(),
            },
            "single_use": invitation.single_use,
            "flow": invitation.flow,
            "flow_obj": self._flow_json(flow) if flow is not None else None,
        }

    def check(self, method: str, answer: Answer) -> None:
        """Validate one answer and record what is wrong with it."""
        if answer.status in (0, 503):
            return  # no answer, or an outage page: not authentik's API speaking
        where = f"{method} {answer.template or answer.schema} -> {answer.status}"
        if answer.template is not None:
            errors = self.spec.response_errors(method, answer.template, answer.status, answer.body)
        elif answer.schema == "Flow" or answer.schema == "GenericError":
            errors = self.spec.schema_errors(answer.schema, answer.body, where)
        else:
            errors = self._stage_list_errors(answer.body, where)
        with self._lock:
            self.spec_violations += errors

    def _stage_list_errors(self, body: object, where: str) -> list[str]:
        assert isinstance(body, dict)
        errors = self.spec.schema_errors("Pagination", body.get("pagination"), where)
        validator = jsonschema.Draft7Validator(
            INVITATION_STAGE_SCHEMA, format_checker=jsonschema.FormatChecker()
        )
        for item in body.get("results", []):
            errors += [f"{where}: {e.message}" for e in validator.iter_errors(item)]
        return errors


def _handler_for(double: AuthentikDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return  # the test's output stays readable; requests are in `double.requests`

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer, _, drop = double.handle(self.command, self.path, headers, body)
            if drop:
                self.close_connection = True
                self.connection.close()
                return
            double.check(self.command, answer)
            if answer.status == 503:
                self._send(503, b"Service Unavailable", "text/plain")
            elif answer.body is None:
                self._send(answer.status, b"", None)
            else:
                self._send(answer.status, json.dumps(answer.body).encode(), "application/json")

        def _send(self, status: int, payload: bytes, content_type: str | None) -> None:
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    return Handler


def every_pk_form(pks: set[str]) -> Iterator[str]:
    """A pk as the link carries it, and as authentik's Events write it (hex, no dashes)."""
    for pk in pks:
        yield pk
        yield pk.replace("-", "")
