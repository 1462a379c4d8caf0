"""A local HTTP server standing in for the Kubernetes API's custom-objects REST API (no cluster runs here).

It serves ``/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]`` for any group, version and plural, the
way the real ``kubernetes`` client calls it: POST creates (201; 409 AlreadyExists when the name is taken), GET
reads one (404 NotFound) or lists, DELETE removes. Errors carry a ``Status`` body like the real server's.

Every request is recorded as ``(method, path, body)``. Scenarios, per test:

- :meth:`FakeKube.seed` puts an object in place before the code under test runs;
- :meth:`FakeKube.at_get` changes an object's status (or deletes it) when its n-th GET arrives, the way a
  controller moves a job along;
- :meth:`FakeKube.fail` answers the next matching requests with an error code (500 by default);
- :meth:`FakeKube.prune_with` makes the server store created objects of a plural the way a real one does with
  a structural CRD schema (:class:`tests.structural.Schema`): undeclared fields are dropped, silently, so a test
  can stand in for a cluster running a given Trainer release;
- :meth:`FakeKube.put` serves a fixed object at an exact path (a CRD, a Secret, a cluster-scoped runtime) and
  :meth:`FakeKube.allow` grants a verb on a resource to SelfSubjectAccessReviews (everything else is denied);
  the ``Impersonate-User`` header of each request is kept in :attr:`FakeKube.impersonated`.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)


ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


class Request(NamedTuple):
    method: str
    path: str
    body: Any


@dataclass
class _Step:
    plural: str
    name: str
    nth: int
    status: dict | None
    delete: bool


@dataclass
class _Failure:
    method: str
    code: int
    times: int
    path_contains: str


class FakeKube:
    """The server's state and the scenario handle tests use."""

    def __init__(self):
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str, str, str, str], dict] = {}
        self.requests: list[Request] = []
        self.gets: Counter = Counter()
        self._steps: list[_Step] = []
        self._failures: list[_Failure] = []
        self._uid = itertools.count(1)
        self._schemas: dict[str, Any] = {}
        self._fixed: dict[str, dict] = {}
        self._allowed: set[tuple[str, str, str, str, str]] = set()
        self.impersonated: list[str | None] = []

    # -- scenario handle ---------------------------------------------------------------------------------------

    def seed(self, plural: str, obj: dict) -> dict:
        """Store ``obj`` (its apiVersion and metadata say where) as if it had been created earlier."""
        group, version = obj["apiVersion"].split("/")
        meta = obj["metadata"]
        with self.lock:
            stored = self._stamp(copy.deepcopy(obj))
            self.objects[(group, version, meta["namespace"], plural, meta["name"])] = stored
        return stored

    def at_get(self, plural: str, name: str, nth: int, status: dict | None = None, delete: bool = False) -> None:
        """From the ``nth`` GET (1-based) of ``plural/name`` on, the object has ``status`` merged into its
        ``status`` (top-level keys replaced), or is gone (``delete``): that GET already sees the change."""
        with self.lock:
            self._steps.append(_Step(plural, name, nth, status, delete))

    def fail(self, method: str, code: int = 500, times: int = 1, path_contains: str = "") -> None:
        """Answer the next ``times`` requests of ``method`` whose path contains ``path_contains`` with ``code``."""
        with self.lock:
            self._failures.append(_Failure(method, code, times, path_contains))

    def prune_with(self, plural: str, schema) -> None:
        """Store created ``plural`` objects pruned by ``schema`` (a :class:`tests.structural.Schema`)."""
        with self.lock:
            self._schemas[plural] = schema

    def put(self, path: str, obj: dict) -> None:
        """Answer GET ``path`` (exact, e.g. ``/api/v1/namespaces/ml/secrets/s3``) with ``obj``."""
        with self.lock:
            self._fixed[path] = copy.deepcopy(obj)

    def allow(self, verb: str, resource: str, group: str = "", namespace: str = "", subresource: str = "") -> None:
        """SelfSubjectAccessReviews for this verb on this resource (in ``namespace``) answer allowed."""
        with self.lock:
            self._allowed.add((verb, group, resource, subresource, namespace))

    def stored(self, plural: str, namespace: str, name: str) -> dict | None:
        """The object as the server holds it now (any group/version), or None."""
        with self.lock:
            for (_, _, ns, pl, nm), obj in self.objects.items():
                if (ns, pl, nm) == (namespace, plural, name):
                    return copy.deepcopy(obj)
        return None

    def calls(self, method: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if method is None or r.method == method]

    # -- request handling (called by the handler, under no lock) -----------------------------------------------

    def _stamp(self, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"00000000-0000-0000-0000-{next(self._uid):012d}")
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-11-23T00:00:00Z")
        return obj

    def _injected_failure(self, method: str, path: str) -> int | None:
        for f in self._failures:
            if f.times > 0 and f.method == method and f.path_contains in path:
                f.times -= 1
                return f.code
        return None

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(Request(method, path, body))
            code = self._injected_failure(method, path)
            if code is not None:
                return code, status_body(code, "InternalError" if code >= 500 else "BadRequest", "injected failure")
            if method == "GET" and path in self._fixed:
                return 200, copy.deepcopy(self._fixed[path])
            if method == "POST" and path == ACCESS_REVIEWS:
                return self._review(body)
            match = PATH.match(path)
            if not match:
                return 404, status_body(404, "NotFound", "the server could not find the requested resource")
            group, version, namespace, plural, name = match.group("group", "version", "namespace", "plural", "name")
            key = (group, version, namespace, plural, name)
            if method == "POST" and name is None:
                return self._create(group, version, namespace, plural, body)
            if method == "GET" and name is None:
                items = [copy.deepcopy(o) for (g, v, ns, pl, _), o in self.objects.items() if (g, v, ns, pl) == key[:4]]
                return 200, {"apiVersion": f"{group}/{version}", "kind": "List", "items": items, "metadata": {}}
            if method == "GET":
                return self._get(key)
            if method == "DELETE" and name is not None:
                if key not in self.objects:
                    return 404, status_body(404, "NotFound", f'{plural}.{group} "{name}" not found', name, group)
                del self.objects[key]
                details = {"name": name, "group": group, "kind": plural}
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            return 405, status_body(405, "MethodNotAllowed", f"{method} is not supported here")

    def _create(self, group, version, namespace, plural, body) -> tuple[int, dict]:
        meta = (body or {}).get("metadata") or {}
        name = meta.get("name")
        if not name:
            return 422, status_body(422, "Invalid", "metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            return 400, status_body(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if body.get("apiVersion") != f"{group}/{version}":
            return 400, status_body(400, "BadRequest", f"apiVersion {body.get('apiVersion')!r} does not match the URL")
        key = (group, version, namespace, plural, name)
        if key in self.objects:
            return 409, status_body(409, "AlreadyExists", f'{plural}.{group} "{name}" already exists', name, group)
        obj = self._stamp(copy.deepcopy(body))
        if plural in self._schemas:
            obj, _ = self._schemas[plural].prune(obj)
        obj["metadata"]["namespace"] = namespace
        self.objects[key] = obj
        return 201, copy.deepcopy(obj)

    def _review(self, body: dict) -> tuple[int, dict]:
        attrs = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
        wanted = tuple(attrs.get(k) or "" for k in ("verb", "group", "resource", "subresource", "namespace"))
        allowed = wanted in self._allowed
        reply = copy.deepcopy(body)
        reply["status"] = {"allowed": allowed} | ({} if allowed else {"reason": "no RBAC rule allows it"})
        return 201, reply

    def _get(self, key) -> tuple[int, dict]:
        group, _, _, plural, name = key
        if key not in self.objects:
            return 404, status_body(404, "NotFound", f'{plural}.{group} "{name}" not found', name, group)
        self.gets[(plural, name)] += 1
        n = self.gets[(plural, name)]
        for step in self._steps:
            if (step.plural, step.name, step.nth) == (plural, name, n):
                if step.delete:
                    del self.objects[key]
                    return 404, status_body(404, "NotFound", f'{plural}.{group} "{name}" not found', name, group)
                self.objects[key].setdefault("status", {}).update(copy.deepcopy(step.status or {}))
        return 200, copy.deepcopy(self.objects[key])


def status_body(code: int, reason: str, message: str, name: str = "", group: str = "") -> dict:
    """A ``Status`` object as the API server sends with an error."""
    details = {"name": name, "group": group} if name else {}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    """A metav1.Condition as controllers write them."""
    stamp = "2026-11-23T00:00:00Z"
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": stamp}


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else None
            fake.impersonated.append(self.headers.get("Impersonate-User"))
            code, reply = fake.handle(self.command, urlsplit(self.path).path, body)
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve  # noqa: N815

        def log_message(self, *args):
            pass

    return Handler


class KubeServer:
    """:class:`FakeKube` served on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self):
        self.fake = FakeKube()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.fake))
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> KubeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
