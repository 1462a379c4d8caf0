"""Katib v0.19's checks on an Experiment, as far as they can run without a cluster.

Katib's Experiment CRD validates nothing (``x-kubernetes-preserve-unknown-fields`` at the root), so what an
Experiment must satisfy lives in two places, both ported here:

- the Go types (``pkg/apis/controller/experiments/v1beta1``) as published in Katib's OpenAPI spec
  (tests/schemas/katib/): the controller decodes the object into them, so a field they do not declare is
  dropped, i.e. an error here (checked with :class:`tests.structural.Schema`);
- the admission webhook (``pkg/webhook/v1beta1/experiment/validator/validator.go``): counts, objective,
  algorithm, early stopping, parameters and the trial template's ``${trialParameters.x}`` substitution;
  :func:`webhook_errors` follows its order and messages.

The trial template (a batch/v1 Job) is checked against the Kubernetes API's own types, the ``kubernetes``
client's models (:func:`k8s_errors`): the Job the trial controller creates drops what they do not declare.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.structural import Schema

SCHEMAS = Path(__file__).parent / "schemas"
KATIB_VERSION = "v0.19.0"
ALGORITHMS = {  # katib-config.yaml of the standalone install (runtime.suggestions / runtime.earlyStoppings)
    "random", "tpe", "grid", "hyperband", "bayesianoptimization", "cmaes", "sobol", "multivariate-tpe", "enas",
    "darts", "pbt",
}  # fmt: skip
EARLY_STOPPING = {"medianstop"}
MEDIANSTOP_SETTINGS = {"min_trials_required": lambda v: int(v) > 0, "start_step": lambda v: int(v) >= 1}
PARAMETER_TYPES = {"int", "double", "categorical", "discrete"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}
RESUME_POLICIES = {"", "Never", "LongRunning", "FromVolume"}
META_KEYS = {"Name", "Namespace", "Kind", "APIVersion"}  # ${trialSpec.<key>}; Labels/Annotations take [key]
REPLACE = re.compile(r"\$\{trialParameters\..+?\}")


def experiment_spec_schema() -> Schema:
    definitions = json.loads((SCHEMAS / "katib" / f"experiment-spec-{KATIB_VERSION}.json").read_text())
    return Schema(definitions["v1beta1.ExperimentSpec"], definitions)


def _is_meta_key(reference: str) -> bool:
    match = re.fullmatch(r"\$\{trialSpec\.(\w+)(\[.+\])?\}", reference)
    if not match:
        return False
    return match.group(1) in META_KEYS or (match.group(1) in ("Labels", "Annotations") and bool(match.group(2)))


def webhook_errors(experiment: dict) -> list[str]:
    """The admission webhook's refusals for a new Experiment (validator.go, ValidateExperiment)."""
    spec = experiment.get("spec") or {}
    name = (experiment.get("metadata") or {}).get("name") or ""
    out = []
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 40:
        out.append("metadata.name: lower case alphanumerics or '-', at most 40 characters")
    most, failed, parallel = spec.get("maxTrialCount"), spec.get("maxFailedTrialCount"), spec.get("parallelTrialCount")
    if failed is not None and failed < 0:
        out.append("spec.maxFailedTrialCount: should not be less than 0")
    if most is not None and most <= 0:
        out.append("spec.maxTrialCount: must be greater than 0")
    if parallel is not None and parallel <= 0:
        out.append("spec.parallelTrialCount: must be greater than 0")
    if failed is not None and most is not None and failed > most:
        out.append("spec.maxFailedTrialCount: should be less than or equal to spec.maxTrialCount")
    if parallel is not None and most is not None and parallel > most:
        out.append("spec.parallelTrialCount: should be less than or equal to spec.maxTrialCount")
    objective = spec.get("objective")
    if objective is None:
        return [*out, "spec.objective: must be specified"]
    if objective.get("type") not in ("minimize", "maximize"):
        out.append("spec.objective.type: must be minimize or maximize")
    if not objective.get("objectiveMetricName"):
        out.append("spec.objective.objectiveMetricName: must be specified")
    if objective.get("objectiveMetricName") in (objective.get("additionalMetricNames") or []):
        out.append("spec.objective.additionalMetricNames: should not contain spec.objective.objectiveMetricName")
    algorithm = spec.get("algorithm")
    if algorithm is None or algorithm.get("algorithmName") not in ALGORITHMS:
        out.append(f"spec.algorithm.algorithmName: no Suggestion config for {algorithm!r}")
    out += _early_stopping(spec.get("earlyStopping"))
    if spec.get("resumePolicy", "") not in RESUME_POLICIES:
        out.append("spec.resumePolicy: invalid ResumePolicyType")
    out += _trial_template(spec)
    parameters = spec.get("parameters") or []
    if not parameters and not spec.get("nasConfig"):
        out.append("spec: spec.parameters or spec.nasConfig must be specified")
    out += _parameters(parameters)
    return out


def _early_stopping(es: dict | None) -> list[str]:
    if es is None:
        return []
    if es.get("algorithmName") not in EARLY_STOPPING:
        return [f"spec.earlyStopping.algorithmName: no EarlyStopping config for {es.get('algorithmName')!r}"]
    out = []
    for setting in es.get("algorithmSettings") or []:  # the medianstop service's ValidateEarlyStoppingSettings
        check = MEDIANSTOP_SETTINGS.get(setting.get("name"))
        if check is None:
            out.append(f"spec.earlyStopping: unknown setting {setting.get('name')} for algorithm medianstop")
        elif not check(setting.get("value")):
            out.append(f"spec.earlyStopping: {setting['name']} = {setting.get('value')} is out of range")
    return out


def _parameters(parameters: list[dict]) -> list[str]:
    out = []
    for i, p in enumerate(parameters):
        where = f"spec.parameters[{i}]"
        kind, space = p.get("parameterType"), p.get("feasibleSpace") or {}
        if kind not in PARAMETER_TYPES:
            out.append(f"{where}.parameterType: {kind} is not supported")
        if space.get("distribution") and space["distribution"] not in DISTRIBUTIONS:
            out.append(f"{where}.feasibleSpace.distribution: {space['distribution']} is not supported")
        if not space:
            out.append(f"{where}.feasibleSpace: feasibleSpace must be specified")
        elif kind in ("double", "int"):
            if space.get("list"):
                out.append(f"{where}.feasibleSpace.list: not supported for parameterType {kind}")
            if not space.get("max") or not space.get("min"):
                out.append(f"{where}.feasibleSpace.max: max and min must be specified for parameterType {kind}")
        elif any(space.get(k) for k in ("max", "min", "step")):
            out.append(f"{where}.feasibleSpace: max, min and step are not supported for parameterType {kind}")
    return out


def _trial_template(spec: dict) -> list[str]:
    template = spec.get("trialTemplate")
    if template is None:
        return ["spec.trialTemplate: must be specified"]
    out = []
    if not template.get("primaryContainerName"):
        out.append("spec.trialTemplate.primaryContainerName: must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        out.append("spec.trialTemplate: successCondition and failureCondition must be specified")
    if template.get("trialParameters") is None:
        return [*out, "spec.trialTemplate.trialParameters: must be specified"]
    if "trialSpec" not in template:
        return [*out, "spec.trialTemplate.trialSpec: must be specified (no configMap here)"]
    text = json.dumps(template["trialSpec"])
    names = {p.get("name") for p in spec.get("parameters") or []}
    seen_names, seen_refs = set(), set()
    for i, tp in enumerate(template["trialParameters"]):
        where = f"spec.trialTemplate.trialParameters[{i}]"
        name, ref = tp.get("name") or "", tp.get("reference") or ""
        if not name or not ref or "{" in name or "}" in name:
            out.append(f"{where}: name and reference must be specified and name must not contain '{{' or '}}'")
            continue
        if name in seen_names or ref in seen_refs:
            out.append(f"{where}: name or reference repeats")
            continue
        seen_names.add(name)
        seen_refs.add(ref)
        if names and not _is_meta_key(ref) and ref not in names:
            out.append(f"{where}.reference: {ref} does not exist in spec.parameters")
        token = f"${{trialParameters.{name}}}"
        if token not in text:
            return [*out, f"{where}.name: {name} not found in spec.trialTemplate"]
        text = text.replace(token, "test-value")
    left = REPLACE.findall(text)
    if left:
        out.append(f"spec.trialTemplate: {left} not found in spec.trialTemplate.trialParameters")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes built-in types, from the kubernetes client's generated models

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(str, (.+)\)$")
_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def k8s_errors(value: Any, kind: str, path: str = "") -> list[str]:
    """Fields of ``value`` (a dict as sent to the API) that the Kubernetes type ``kind`` (e.g. ``V1Job``) does
    not declare, or whose type is wrong: ``<path>: <what>`` each."""
    from kubernetes import client

    where = path or "<root>"
    if match := _LIST.match(kind):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, item in enumerate(value) for e in k8s_errors(item, match.group(1), f"{path}[{i}]")]
    if match := _DICT.match(kind):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, item in value.items() for e in k8s_errors(item, match.group(1), f"{path}.{k}")]
    if kind in _SCALARS:
        if kind == "int" and isinstance(value, bool) or not isinstance(value, _SCALARS[kind]):
            return [f"{where}: {value!r} is not {kind}"]
        return []
    model = getattr(client, kind)
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({kind})"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    out = []
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key not in by_json:
            out.append(f"{child}: not a field of {kind} (dropped)")
        else:
            out += k8s_errors(item, model.openapi_types[by_json[key]], child)
    return out


def all_errors(experiment: dict) -> list[str]:
    """Everything Katib v0.19 and the Job API would refuse or drop in ``experiment``."""
    spec = experiment.get("spec") or {}
    out = [f"spec.{e}" for e in experiment_spec_schema().errors(spec)]
    out += webhook_errors(experiment)
    trial = (spec.get("trialTemplate") or {}).get("trialSpec")
    if trial is not None:
        out += k8s_errors(trial, "V1Job", "spec.trialTemplate.trialSpec")
    return out
