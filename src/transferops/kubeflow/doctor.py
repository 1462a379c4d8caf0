"""``transferops pipeline doctor``: can this cluster run the pipeline's Kubeflow path? Asked of the Kubernetes API.

Three kinds of check, each one line ``ok`` or ``MISSING`` with what to do:

- **CRDs**: the TrainJob, ClusterTrainingRuntime, Experiment and Trial CRDs are installed and serve the API
  versions the manifests use; the TrainJob schema declares every field the launcher sends
  (:data:`~transferops.kubeflow.trainjob.FIELD_SINCE`), which tells a Trainer below the support floor
  (:data:`~transferops.kubeflow.trainjob.MIN_TRAINER_VERSION`) apart; the ClusterTrainingRuntime named by
  ``kfp.distributed.runtime`` exists.
- **Permissions**: one SelfSubjectAccessReview per verb and resource in :data:`PERMISSIONS` (what deploy/'s
  Role grants), in ``kfp.namespace``. Run it as the pipeline's service account (in its pod, or from a
  kubeconfig allowed to impersonate: ``--service-account``) to check what the pipeline will be allowed.
- **Secrets**: every secret in ``kfp.secrets`` exists in ``kfp.namespace`` with the keys it maps to variables.

Nothing is created or changed except the access reviews, which the API server does not store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transferops.errors import ConfigError
from transferops.kubeflow import katib, kube, trainjob

CRD_GROUP, CRD_VERSION, CRD_PLURAL = "apiextensions.k8s.io", "v1", "customresourcedefinitions"
REVIEW_GROUP, REVIEW_VERSION, REVIEW_PLURAL = "authorization.k8s.io", "v1", "selfsubjectaccessreviews"

KATIB = f"Katib >= {katib.MIN_KATIB_VERSION}"
TRAINER = f"Kubeflow Trainer >= {trainjob.MIN_TRAINER_VERSION}"
CRDS = {
    f"{trainjob.PLURAL}.{trainjob.GROUP}": (trainjob.VERSION, TRAINER),
    f"clustertrainingruntimes.{trainjob.GROUP}": (trainjob.VERSION, TRAINER),
    f"{katib.PLURAL}.{katib.GROUP}": (katib.VERSION, KATIB),
    f"trials.{katib.GROUP}": (katib.VERSION, KATIB),
}
"""CRD name -> (API version the manifests use, what installs it)."""
COMPONENTS = {"trainer": trainjob.GROUP, "katib": katib.GROUP}
"""What a cluster may leave out (``--without``): the Trainer (no ``kfp.distributed``) or Katib (no Katib sweeps),
each by its API group."""

PERMISSIONS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (trainjob.GROUP, trainjob.PLURAL, "", ("create", "get", "list", "watch", "delete")),
    (katib.GROUP, katib.PLURAL, "", ("create", "get", "list", "watch", "delete")),
    (katib.GROUP, "trials", "", ("get", "list", "watch")),
    ("", "pods", "", ("get", "list", "watch")),
    ("", "pods", "log", ("get",)),
)
"""(API group, resource, subresource, verbs) the pipeline's service account needs in ``kfp.namespace``: create,
follow and clean up TrainJobs and Experiments, read trials, and read the pods and logs of both. deploy/role.yaml
grants exactly these (a test holds the two together)."""


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    ok: bool
    what: str
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'MISSING':8} {self.what}: {self.detail}"


class Cluster:
    """The few reads the doctor makes, each failure a :class:`~transferops.kubeflow.kube.KubeApiError` line."""

    def __init__(self, api_client=None, service_account: str = ""):
        from kubernetes import client

        self.api_client = api_client or kube.default_api_client()
        if service_account:
            self.api_client.set_default_header("Impersonate-User", service_account)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.host = self.api_client.configuration.host

    def _call(self, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        return kube.api_call(self.host, action, fn, *args)

    def crd(self, name: str) -> dict | None:
        try:
            return self._call(
                f"read CRD {name}", self.custom.get_cluster_custom_object, CRD_GROUP, CRD_VERSION, CRD_PLURAL, name
            )
        except kube.KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def cluster_object(self, group: str, version: str, plural: str, name: str) -> dict | None:
        try:
            return self._call(
                f"read {plural} {name}", self.custom.get_cluster_custom_object, group, version, plural, name
            )
        except kube.KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def allowed(self, namespace: str, verb: str, group: str, resource: str, subresource: str = "") -> tuple[bool, str]:
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        body = {
            "apiVersion": f"{REVIEW_GROUP}/{REVIEW_VERSION}",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        reply = self._call(
            f"review {verb} {resource}",
            self.custom.create_cluster_custom_object,
            REVIEW_GROUP,
            REVIEW_VERSION,
            REVIEW_PLURAL,
            body,
        )
        status = reply.get("status") or {}
        return bool(status.get("allowed")), status.get("reason") or status.get("evaluationError") or ""

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        try:
            secret = self._call(f"read secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace)
        except kube.KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return set(secret.data or {}) | set(secret.string_data or {})


def crd_checks(cluster: Cluster, runtime: str, groups: set[str]) -> list[Check]:
    """Each CRD of ``groups`` installed and serving its version; the TrainJob schema up to the floor; the
    runtime present."""
    out = []
    for name, (version, source) in CRDS.items():
        if name.split(".", 1)[1] not in groups:
            continue
        crd = cluster.crd(name)
        if crd is None:
            out.append(Check(False, f"CRD {name}", f"not installed (install {source})"))
            continue
        served = [v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("served")]
        if version not in served:
            out.append(
                Check(False, f"CRD {name}", f"serves {', '.join(served) or 'nothing'}, not {version} ({source})")
            )
            continue
        detail = f"serves {', '.join(served)}"
        if name == f"{trainjob.PLURAL}.{trainjob.GROUP}":
            missing = [path for path in trainjob.FIELD_SINCE if not _declares(_schema(crd, version), path)]
            if missing:
                since = ", ".join(f"{p} (since {trainjob.FIELD_SINCE[p]})" for p in missing)
                out.append(Check(False, f"CRD {name}", f"{detail} but lacks {since}: upgrade to {TRAINER}"))
                continue
            detail += f"; declares {', '.join(trainjob.FIELD_SINCE)} ({TRAINER})"
        out.append(Check(True, f"CRD {name}", detail))
    if trainjob.GROUP in groups and cluster.crd(f"clustertrainingruntimes.{trainjob.GROUP}") is not None:
        found = cluster.cluster_object(trainjob.GROUP, trainjob.VERSION, "clustertrainingruntimes", runtime)
        what = f"ClusterTrainingRuntime {runtime}"
        out.append(
            Check(True, what, "present (kfp.distributed.runtime)")
            if found
            else Check(False, what, "not found: install the Trainer's runtimes or set kfp.distributed.runtime")
        )
    return out


def _schema(crd: dict, version: str) -> dict:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return (v.get("schema") or {}).get("openAPIV3Schema") or {}
    return {}


def _declares(schema: dict, path: str) -> bool:
    node = schema
    for key in path.split("."):
        while node.get("type") == "array":
            node = node.get("items") or {}
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return True
        props = node.get("properties") or {}
        if key not in props:
            return False
        node = props[key]
    return True


def permission_checks(cluster: Cluster, namespace: str, groups: set[str]) -> list[Check]:
    out = []
    for group, resource, subresource, verbs in PERMISSIONS:
        if group and group not in groups:
            continue
        full = f"{resource}/{subresource}" if subresource else resource
        full += f".{group}" if group else ""
        denied = []
        for verb in verbs:
            allowed, reason = cluster.allowed(namespace, verb, group, resource, subresource)
            if not allowed:
                denied.append(verb + (f" ({reason})" if reason else ""))
        what = f"may {'/'.join(verbs)} {full} in {namespace}"
        if denied:
            out.append(Check(False, what, f"denied: {', '.join(denied)}; apply deploy/ (kubectl apply -k deploy)"))
        else:
            out.append(Check(True, what, "allowed"))
    return out


def secret_checks(cluster: Cluster, namespace: str, secrets) -> list[Check]:
    """``secrets``: ``kfp.secrets`` (:class:`~transferops.kubeflow.settings.SecretConfig` entries)."""
    out = []
    for secret in secrets:
        what = f"secret {namespace}/{secret.name}"
        try:
            keys = cluster.secret_keys(namespace, secret.name)
        except kube.KubeApiError as exc:
            if exc.status != 403:
                raise
            out.append(Check(False, what, "cannot be read by this identity (403); check it with kubectl"))
            continue
        if keys is None:
            out.append(Check(False, what, f"not found: fill in and apply deploy/secrets/{secret.name}.yaml"))
            continue
        lacking = [k for k in secret.env if k not in keys]
        if lacking:
            out.append(Check(False, what, f"lacks key(s) {', '.join(lacking)}"))
        else:
            out.append(Check(True, what, f"keys {', '.join(secret.env) or '(none needed)'}"))
    return out


def diagnose(kfp, api_client=None, service_account: str = "", without: tuple[str, ...] = ()) -> list[Check]:
    """Every check for the ``kfp`` section (:class:`~transferops.kubeflow.settings.KfpConfig`), in report order.
    ``service_account``: ``system:serviceaccount:<ns>:<name>`` to impersonate (empty: the caller's identity);
    ``without``: :data:`COMPONENTS` this cluster does not need."""
    unknown = sorted(set(without) - set(COMPONENTS))
    if unknown:
        raise ConfigError(f"doctor --without: unknown {unknown} (expected {', '.join(COMPONENTS)})")
    groups = {group for name, group in COMPONENTS.items() if name not in without}
    cluster = Cluster(api_client, service_account)
    return (
        crd_checks(cluster, kfp.distributed.runtime, groups)
        + permission_checks(cluster, kfp.namespace, groups)
        + secret_checks(cluster, kfp.namespace, kfp.secrets)
    )


def report(checks: list[Check]) -> str:
    """The lines of :func:`diagnose` and a last line counting what is missing."""
    missing = sum(not c.ok for c in checks)
    tail = f"{missing} of {len(checks)} checks failed" if missing else f"all {len(checks)} checks passed"
    return "\n".join([*(c.line() for c in checks), tail])
