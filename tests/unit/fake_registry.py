"""An in-memory stand-in for the part of ``mlflow.MlflowClient`` the registry code uses.

It raises the same ``MlflowException`` error codes as the real client, so the gate's workflow can be driven
through thousands of generated sequences in seconds; the integration tests run the same code on real stores.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST


@dataclass
class _Version:
    name: str
    version: int
    source: str
    tags: dict[str, str]
    description: str
    aliases: list[str] = field(default_factory=list)


@dataclass
class _Model:
    name: str
    tags: dict[str, str]
    description: str
    aliases: dict[str, int] = field(default_factory=dict)


class FakeRegistryClient:
    def __init__(self) -> None:
        self.models: dict[str, _Model] = {}
        self.versions: dict[str, list[_Version]] = {}
        self.counter: dict[str, int] = {}
        self.lock = threading.RLock()

    def _model(self, name: str) -> _Model:
        if name not in self.models:
            raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
        return self.models[name]

    def get_registered_model(self, name: str) -> _Model:
        with self.lock:
            return self._model(name)

    def create_registered_model(self, name: str, tags=None, description=None) -> _Model:
        with self.lock:
            if name in self.models:
                raise MlflowException(f"Registered Model (name={name}) already exists.", RESOURCE_ALREADY_EXISTS)
            self.models[name] = _Model(name, dict(tags or {}), description or "")
            self.versions[name] = []
            return self.models[name]

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        with self.lock:
            self._model(name).tags[key] = value

    def create_model_version(self, name, source, run_id=None, tags=None, description=None, model_id=None):
        with self.lock:
            if name not in self.models:
                self.create_registered_model(name)
            self.counter[name] = self.counter.get(name, 0) + 1
            v = _Version(name, self.counter[name], source, dict(tags or {}), description or "")
            self.versions[name].append(v)
            return v

    def set_model_version_tag(self, name: str, version, key: str, value: str) -> None:
        with self.lock:
            self._version(name, version).tags[key] = value

    def delete_model_version(self, name: str, version) -> None:
        with self.lock:
            self.versions[name] = [v for v in self.versions[name] if v.version != int(version)]
            model = self._model(name)
            model.aliases = {a: n for a, n in model.aliases.items() if n != int(version)}

    def _version(self, name: str, version) -> _Version:
        for v in self.versions.get(name, []):
            if v.version == int(version):
                v.aliases = sorted(a for a, n in self._model(name).aliases.items() if n == v.version)
                return v
        raise MlflowException(f"Model Version (name={name}, version={version}) not found", RESOURCE_DOES_NOT_EXIST)

    def get_model_version(self, name: str, version) -> _Version:
        with self.lock:
            return self._version(name, version)

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        with self.lock:
            model = self._model(name)
            if alias not in model.aliases:
                raise MlflowException(f"alias {alias} not found", RESOURCE_DOES_NOT_EXIST)
            return self._version(name, model.aliases[alias])

    def set_registered_model_alias(self, name: str, alias: str, version) -> None:
        with self.lock:
            self._version(name, version)
            self._model(name).aliases[alias] = int(version)

    def search_model_versions(self, filter_string: str) -> list[_Version]:
        with self.lock:
            name = re.search(r"name = '([^']+)'", filter_string).group(1)
            tag = re.search(r"tags\.`([^`]+)` = '([^']*)'", filter_string)
            found = [self._version(name, v.version) for v in self.versions.get(name, [])]
            if tag:
                found = [v for v in found if v.tags.get(tag.group(1)) == tag.group(2)]
            return found
