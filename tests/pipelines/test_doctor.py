"""``transferops pipeline doctor`` against the fake API server: CRDs and their versions, access reviews, secrets;
and deploy/ (the Role, the secret templates) held to what the doctor checks and params.yaml names."""

import base64
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.kube_fake import ACCESS_REVIEWS
from transferops.config import read_params
from transferops.errors import ConfigError
from transferops.kubeflow import doctor
from transferops.kubeflow.settings import kfp_from_dict

pytest.importorskip("kubernetes")

SCHEMAS = Path(__file__).parents[1] / "schemas" / "trainer"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
DEPLOY = REPO / "deploy"


def kfp(overrides=()):
    return kfp_from_dict(read_params(REPO / "params.yaml"), list(overrides))


def crd(name: str, version: str, schema: dict | None = None) -> dict:
    served = {"name": version, "served": True, "storage": True}
    served["schema"] = {"openAPIV3Schema": schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    plural, group = name.split(".", 1)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": group, "names": {"plural": plural}, "scope": "Namespaced", "versions": [served]},
    }


def install(fake, trainer: str = "v2.3.0", katib: bool = True) -> None:
    schema = json.loads((SCHEMAS / f"trainjob-{trainer}.json").read_text())
    fake.put(CRD_PATH + "trainjobs.trainer.kubeflow.org", crd("trainjobs.trainer.kubeflow.org", "v1alpha1", schema))
    name = "clustertrainingruntimes.trainer.kubeflow.org"
    fake.put(CRD_PATH + name, crd(name, "v1alpha1"))
    runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime"}
    fake.put("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/torch-distributed", runtime)
    if katib:
        for name in ("experiments.kubeflow.org", "trials.kubeflow.org"):
            fake.put(CRD_PATH + name, crd(name, "v1beta1"))


def grant(fake, namespace: str = "kubeflow", skip: tuple = ()) -> None:
    for group, resource, subresource, verbs in doctor.PERMISSIONS:
        for verb in verbs:
            if (verb, resource, subresource) not in skip:
                fake.allow(verb, resource, group, namespace, subresource)


def secret(name: str, keys, namespace: str = "kubeflow") -> tuple[str, dict]:
    data = {k: base64.b64encode(b"x").decode() for k in keys}
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": data}
    return f"/api/v1/namespaces/{namespace}/secrets/{name}", body


def add_secrets(fake) -> None:
    for s in kfp().secrets:
        fake.put(*secret(s.name, s.env))


def test_a_ready_cluster_passes_every_check(kube):
    api, requests, fake = kube
    install(fake)
    grant(fake)
    add_secrets(fake)
    checks = doctor.diagnose(kfp(), api_client=api)
    assert [c.what for c in checks if not c.ok] == []
    text = doctor.report(checks)
    assert text.splitlines()[0] == (
        "ok       CRD trainjobs.trainer.kubeflow.org: serves v1alpha1; declares spec.runtimePatches "
        "(Kubeflow Trainer >= v2.2.0)"
    )
    assert "ok       may create/get/list/watch/delete trainjobs.trainer.kubeflow.org in kubeflow: allowed" in text
    assert "ok       may get pods/log in kubeflow: allowed" in text
    assert "ok       secret kubeflow/s3-credentials: keys access_key_id, secret_access_key, endpoint_url" in text
    assert text.splitlines()[-1] == f"all {len(checks)} checks passed"
    reviews = [r.body["spec"]["resourceAttributes"] for r in requests if r.path == ACCESS_REVIEWS]
    assert len(reviews) == sum(len(verbs) for *_, verbs in doctor.PERMISSIONS) == 17
    assert {"namespace": "kubeflow", "verb": "get", "group": "", "resource": "pods", "subresource": "log"} in reviews
    assert all(r.method in ("GET", "POST") for r in requests)  # POSTs are the reviews only: nothing is created
    assert {r.path for r in requests if r.method == "POST"} == {ACCESS_REVIEWS}


def test_an_old_trainer_no_katib_missing_rights_and_secrets_are_each_named(kube):
    api, _, fake = kube
    install(fake, trainer="v2.1.0", katib=False)
    grant(fake, skip=(("delete", "trainjobs", ""), ("get", "pods", "")))
    fake.put(*secret("mlflow-credentials", ["tracking_uri", "username"]))  # no password; no s3-credentials at all
    checks = doctor.diagnose(kfp(), api_client=api)
    missing = [c.line() for c in checks if not c.ok]
    assert missing == [
        "MISSING  CRD trainjobs.trainer.kubeflow.org: serves v1alpha1 but lacks spec.runtimePatches (since v2.2.0): "
        "upgrade to Kubeflow Trainer >= v2.2.0",
        "MISSING  CRD experiments.kubeflow.org: not installed (install Katib >= v0.19.0)",
        "MISSING  CRD trials.kubeflow.org: not installed (install Katib >= v0.19.0)",
        "MISSING  may create/get/list/watch/delete trainjobs.trainer.kubeflow.org in kubeflow: denied: delete (no RBAC "
        "rule allows it); apply deploy/ (kubectl apply -k deploy)",
        "MISSING  may get/list/watch pods in kubeflow: denied: get (no RBAC rule allows it); apply deploy/ "
        "(kubectl apply -k deploy)",
        "MISSING  secret kubeflow/mlflow-credentials: lacks key(s) password",
        "MISSING  secret kubeflow/s3-credentials: not found: fill in and apply deploy/secrets/s3-credentials.yaml",
    ]
    assert doctor.report(checks).splitlines()[-1] == f"7 of {len(checks)} checks failed"


def test_a_missing_runtime_and_a_namespace_from_params(kube):
    api, requests, fake = kube
    install(fake)
    grant(fake, namespace="ml")
    checks = doctor.diagnose(kfp(["kfp.namespace=ml", "kfp.distributed.runtime=torch-gpu"]), api_client=api)
    lines = [c.line() for c in checks if not c.ok]
    assert lines[0] == (
        "MISSING  ClusterTrainingRuntime torch-gpu: not found: install the Trainer's runtimes or set "
        "kfp.distributed.runtime"
    )
    assert all("in ml" not in line for line in lines)  # every permission holds in kfp.namespace
    assert {r.body["spec"]["resourceAttributes"]["namespace"] for r in requests if r.path == ACCESS_REVIEWS} == {"ml"}


def test_the_service_account_is_impersonated(kube):
    api, _, fake = kube
    install(fake)
    doctor.diagnose(kfp(), api_client=api, service_account="system:serviceaccount:kubeflow:transferops")
    assert set(fake.impersonated) == {"system:serviceaccount:kubeflow:transferops"}


def test_the_cli_prints_the_report_and_exits_1_when_something_is_missing(kube, tmp_path, monkeypatch, capsys):
    from transferops.cli import main

    api, _, fake = kube
    install(fake)
    grant(fake)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": api.configuration.host}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
        "current-context": "fake",
    }
    (tmp_path / "config").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = ["pipeline", "doctor", "--params", str(REPO / "params.yaml"), "--service-account", "transferops"]
    assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [
        "MISSING  secret kubeflow/mlflow-credentials: not found: fill in and apply "
        "deploy/secrets/mlflow-credentials.yaml",
        "MISSING  secret kubeflow/s3-credentials: not found: fill in and apply deploy/secrets/s3-credentials.yaml",
        f"2 of {len(out) - 1} checks failed",
    ]
    assert set(fake.impersonated) == {"system:serviceaccount:kubeflow:transferops"}
    add_secrets(fake)
    assert main(args) == 0


# ---------------------------------------------------------------------------------------------------------------
# deploy/


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_the_role_grants_exactly_what_the_doctor_checks():
    rules = load("role.yaml")["rules"]
    granted = {(g, r, tuple(rule["verbs"])) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    wanted = {(g, f"{r}/{s}" if s else r, verbs) for g, r, s, verbs in doctor.PERMISSIONS}
    assert granted == wanted


def test_the_kustomization_binds_the_role_to_the_service_account():
    k = load("kustomization.yaml")
    assert k["namespace"] == kfp().namespace
    assert all((DEPLOY / f).is_file() for f in k["resources"])
    binding, account, role = load("rolebinding.yaml"), load("serviceaccount.yaml"), load("role.yaml")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]


def test_the_secret_templates_are_the_secrets_params_yaml_names_with_their_keys():
    templates = {p.stem: yaml.safe_load(p.read_text()) for p in (DEPLOY / "secrets").glob("*.yaml")}
    assert {s.name: sorted(s.env) for s in kfp().secrets} == {
        name: sorted(t["stringData"]) for name, t in templates.items()
    }
    assert all(t["kind"] == "Secret" and t["metadata"]["name"] == name for name, t in templates.items())


def test_a_cluster_without_katib_can_say_so(kube):
    api, requests, fake = kube
    install(fake, katib=False)
    grant(fake)
    add_secrets(fake)
    checks = doctor.diagnose(kfp(), api_client=api, without=("katib",))
    assert all(c.ok for c in checks)
    assert not any("kubeflow.org" in c.what and "trainer" not in c.what for c in checks)
    reviewed = {r.body["spec"]["resourceAttributes"]["resource"] for r in requests if r.path == ACCESS_REVIEWS}
    assert reviewed == {"trainjobs", "pods"}
    with pytest.raises(ConfigError, match=r"doctor --without: unknown \['kueue'\]"):
        doctor.diagnose(kfp(), api_client=api, without=("kueue",))
