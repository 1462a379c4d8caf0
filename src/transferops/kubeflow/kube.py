"""What the Trainer and Katib adapters share: DNS names, pod-spec pieces, one custom-object client, one poll loop.

The pod-spec helpers are pure (values in, Kubernetes dicts out). :class:`CustomObjects` talks to the API server
through the official ``kubernetes`` client (imported on first use); every API failure becomes one
:class:`KubeApiError` line naming the server and the HTTP status, so a KFP task log says why without a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from transferops.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""RFC 1035 label: what TrainJob (CRD rule) and Katib Experiment (webhook) names must match."""

SHM_VOLUME = {"name": "dshm", "mountPath": "/dev/shm"}
"""The memory-backed emptyDir that gives DataLoader workers a /dev/shm larger than the runtime's 64 MiB."""

TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


class KubeApiError(TrainingError):
    """The API server refused a request or could not be reached; ``status`` is the HTTP status (None: unreachable)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth another try: unreachable, throttled (429) or a server-side error (5xx)."""
        return self.status is None or self.status == 429 or self.status >= 500


def one_line(text: Any, limit: int = 500) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to single spaces, cut at ``limit``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# names and pod-spec pieces (pure)


def dns_name(*parts: str, max_length: int = 63) -> str:
    """A DNS-1035 label made of ``parts``: a readable slug plus 8 hex digits of a hash of the exact text.

    Stable (the same parts always give the same name: a retried KFP task finds its job again) and distinct
    (parts that slug alike, or share a long prefix, still differ by the hash).
    """
    text = "\0".join(parts)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"x-{slug}".rstrip("-")
    return f"{slug[: max_length - 9].rstrip('-')}-{digest}"


def check_dns_name(name: str, what: str, max_length: int = 63) -> None:
    """Raise ConfigError unless ``name`` is a DNS-1035 label of at most ``max_length`` characters."""
    if not DNS_LABEL.match(name or "") or len(name) > max_length:
        raise ConfigError(
            f"{what} {name!r}: must be lowercase letters, digits and '-', start with a letter, end with a letter "
            f"or digit, and have at most {max_length} characters"
        )


def env_vars(env: Mapping[str, str], secret_env: Iterable[tuple[str, Mapping[str, str]]]) -> list[dict]:
    """Container ``env``: plain values first, then one ``secretKeyRef`` per (secret, {key: VARIABLE}) entry."""
    out: list[dict] = [{"name": name, "value": str(value)} for name, value in env.items()]
    for secret, keys in secret_env:
        for key, variable in keys.items():
            out.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    names = [e["name"] for e in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"environment variables set twice (env and secrets): {', '.join(duplicates)}")
    return out


def resource_requirements(resources: Mapping[str, Mapping[str, Any]]) -> dict:
    """``{"requests": {...}, "limits": {...}}`` with every quantity as a string (``2`` -> ``"2"``)."""
    unknown = sorted(set(resources) - {"requests", "limits"})
    if unknown:
        raise ConfigError(f"resources: unknown section(s) {unknown} (expected 'requests' and/or 'limits')")
    return {
        section: {name: str(quantity) for name, quantity in values.items()}
        for section, values in resources.items()
        if values
    }


def gpu_count(resources: Mapping[str, Mapping[str, Any]]) -> int:
    """The ``nvidia.com/gpu`` limit (or request), 0 when there is none."""
    for section in ("limits", "requests"):
        value = (resources.get(section) or {}).get("nvidia.com/gpu")
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"resources {section}: nvidia.com/gpu {value!r} is not a whole number") from None
    return 0


def tolerations(items: Iterable[Any]) -> list[dict]:
    """Pod tolerations from dicts (or dataclasses such as TolerationConfig); empty strings are left out."""
    out = []
    for item in items:
        data = asdict(item) if is_dataclass(item) else dict(item)
        unknown = sorted(set(data) - set(TOLERATION_KEYS))
        if unknown:
            raise ConfigError(f"toleration {data}: unknown field(s) {unknown} (allowed: {', '.join(TOLERATION_KEYS)})")
        out.append({k: data[k] for k in TOLERATION_KEYS if data.get(k) not in (None, "")})
    return out


def shm_volume(size: str) -> dict:
    """The pod volume behind :data:`SHM_VOLUME`: an emptyDir in memory, capped at ``size`` (e.g. ``"8Gi"``)."""
    return {"name": SHM_VOLUME["name"], "emptyDir": {"medium": "Memory", "sizeLimit": size}}


# ---------------------------------------------------------------------------------------------------------------
# the API server


def default_api_client():
    """An ApiClient from the pod's service account when running in a cluster, else from ~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            # $KUBECONFIG as it is now (the client reads it once, when first imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
    except config.ConfigException as exc:
        raise KubeApiError(f"no Kubernetes credentials (in-cluster service account or kubeconfig): {exc}") from None
    return client.ApiClient(cfg)


class CustomObjects:
    """Create, read and delete namespaced custom objects of one kind (``group/version/plural``)."""

    def __init__(self, api_client, group: str, version: str, plural: str, kind: str):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client or default_api_client())
        self.host = self.api.api_client.configuration.host
        self.group, self.version, self.plural, self.kind = group, version, plural, kind

    def create(self, body: dict, poll_seconds: float = 1.0, timeout_seconds: float = 300.0) -> tuple[dict, bool]:
        """Create ``body``; if an object of that name exists, return it instead: ``(object, created)``.

        An existing object that is being deleted (``metadata.deletionTimestamp``, e.g. left by the previous
        attempt of a retried task) is waited out and then created afresh.
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                created = self._call(
                    f"create {self.kind} {namespace}/{name}",
                    self.api.create_namespaced_custom_object,
                    self.group,
                    self.version,
                    namespace,
                    self.plural,
                    body,
                )
                return created, True
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
            existing = self.get(namespace, name, missing_ok=True)  # None: gone since our POST, so try again
            if existing is not None and not existing.get("metadata", {}).get("deletionTimestamp"):
                return existing, False
            if time.monotonic() >= deadline:
                raise TrainingError(
                    f"{self.kind} {namespace}/{name} is still being deleted after {timeout_seconds:g} s; "
                    "cannot create it again"
                )
            if existing is not None:
                log.info("%s %s/%s is being deleted; creating it again once it is gone", self.kind, namespace, name)
                time.sleep(poll_seconds)

    def get(self, namespace: str, name: str, missing_ok: bool = False) -> dict | None:
        """The object as the server has it (``None`` if it does not exist and ``missing_ok``)."""
        try:
            return self._call(
                f"read {self.kind} {namespace}/{name}",
                self.api.get_namespaced_custom_object,
                self.group,
                self.version,
                namespace,
                self.plural,
                name,
            )
        except KubeApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def delete(self, namespace: str, name: str) -> bool:
        """Delete the object and, in the background, what it owns; False if it was already gone."""
        from kubernetes import client

        try:
            self._call(
                f"delete {self.kind} {namespace}/{name}",
                self.api.delete_namespaced_custom_object,
                self.group,
                self.version,
                namespace,
                self.plural,
                name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return api_call(self.host, action, fn, *args, **kwargs)


def api_call(host: str, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, with every API or connection failure turned into one :class:`KubeApiError` line."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise KubeApiError(
            f"{action}: Kubernetes API {host} answered HTTP {exc.status} {exc.reason or ''}".rstrip()
            + _status_message(exc.body),
            exc.status,
        ) from None
    except (HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KubeApiError(f"{action}: Kubernetes API {host} unreachable: {one_line(reason, 200)}") from None


def _status_message(body: Any) -> str:
    """``": <message>"`` from a Kubernetes Status body, or ``""``."""
    import json

    try:
        message = json.loads(body).get("message", "") if body else ""
    except (ValueError, AttributeError):
        message = body if isinstance(body, str) else ""
    return f": {one_line(message, 300)}" if message else ""


def watch(
    get: Callable[[], dict],
    describe: Callable[[dict], list[str]],
    finished: Callable[[dict], bool],
    what: str,
    poll_seconds: float,
    timeout_seconds: float,
    max_errors: int = 3,
) -> dict:
    """Poll ``get`` until ``finished(obj)`` (which raises on failure) and return the final object.

    Every line of ``describe(obj)`` that was not there at the previous poll is logged once as ``<what>: <line>``.
    Up to ``max_errors`` transient API failures in a row (unreachable, 429, 5xx) are logged and retried.
    """
    deadline = time.monotonic() + timeout_seconds
    shown: list[str] = []
    errors = 0
    while True:
        try:
            obj = get()
        except KubeApiError as exc:
            errors += 1
            if not exc.transient or errors > max_errors:
                raise
            log.warning("%s (attempt %d of %d, trying again)", exc, errors, max_errors + 1)
        else:
            errors = 0
            lines = describe(obj)
            for line in lines:
                if line not in shown:
                    log.info("%s: %s", what, line)
            shown = lines
            if finished(obj):
                return obj
        left = deadline - time.monotonic()
        if left <= 0:
            last = "; ".join(shown) or "no status reported"
            raise TrainingError(one_line(f"{what} did not finish within {timeout_seconds:g} s (last status: {last})"))
        time.sleep(min(poll_seconds, left))


def true_condition(obj: dict, kind: str) -> dict | None:
    """The ``status.conditions`` entry of type ``kind`` if its status is "True"."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and str(cond.get("status")) == "True":
            return cond
    return None


def condition_lines(obj: dict) -> list[str]:
    """``Type=Status Reason: message`` for each condition in ``status.conditions``."""
    lines = []
    for cond in (obj.get("status") or {}).get("conditions") or []:
        head = f"{cond.get('type')}={cond.get('status')}"
        reason = f" {cond['reason']}" if cond.get("reason") else ""
        message = f": {one_line(cond['message'], 300)}" if cond.get("message") else ""
        lines.append(head + reason + message)
    return lines
