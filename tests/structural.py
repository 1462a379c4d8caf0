"""Structural-schema checks the way the Kubernetes API server applies a CRD's ``openAPIV3Schema``.

A structural schema prunes: a field the schema does not declare (no ``properties`` entry, no
``additionalProperties``, no ``x-kubernetes-preserve-unknown-fields`` above it) is silently dropped when the
object is stored. :func:`errors` reports each such field as an error naming its path, since what the server
drops never reaches the pods; :func:`prune` returns what the server would store, for the fake API server.

Checked: ``type``, ``x-kubernetes-int-or-string``, ``anyOf``/``oneOf``/``allOf`` (and OpenAPI ``$ref`` via
``definitions``), ``required``, ``enum``, ``properties``/``additionalProperties``,
``x-kubernetes-preserve-unknown-fields``, ``pattern``, ``minLength``/``maxLength``, ``minimum``/``maximum``,
``minItems``/``maxItems`` and unique ``x-kubernetes-list-map-keys``. Not evaluated: CEL rules
(``x-kubernetes-validations``) and ``format``. The root ``metadata`` is ObjectMeta, which the server validates
itself and never prunes, so it is passed over.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


class Schema:
    """One schema tree; ``definitions`` resolves ``$ref`` (``#/components/schemas/<name>``) for OpenAPI types."""

    def __init__(self, root: Mapping[str, Any], definitions: Mapping[str, Any] | None = None):
        self.root = root
        self.definitions = definitions or {}

    def resolve(self, node: Mapping[str, Any]) -> dict:
        """``node`` with ``$ref`` and single-entry ``allOf`` (how OpenAPI wraps a reference) merged in."""
        node = dict(node)
        while "$ref" in node or len(node.get("allOf") or []) == 1:
            if "$ref" in node:
                target = self.definitions[node.pop("$ref").rsplit("/", 1)[1]]
            else:
                (target,) = node.pop("allOf")
            node = {**target, **node}
        return node

    def errors(self, obj: Any) -> list[str]:
        """Every way ``obj`` breaks the schema, one ``<path>: <what>`` line each (empty: it is stored as sent)."""
        out: list[str] = []
        self.check_value(obj, self.root, "", out, root=True)
        return out

    def prune(self, obj: Any) -> tuple[Any, list[str]]:
        """``(what the server stores, the paths it dropped)``."""
        obj = copy.deepcopy(obj)
        dropped: list[str] = []
        self._prune(obj, self.root, "", dropped, root=True)
        return obj, dropped

    # -- internals --------------------------------------------------------------------------------------------

    def _children(self, node: dict, key: str) -> tuple[dict | None, bool]:
        """The schema of property ``key`` of an object node, and whether it is declared at all."""
        props = node.get("properties") or {}
        if key in props:
            return self.resolve(props[key]), True
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return self.resolve(extra), True
        if extra is True or node.get("x-kubernetes-preserve-unknown-fields"):
            return None, True
        return None, False

    def check_value(self, value: Any, node: Mapping[str, Any], path: str, out: list[str], root: bool = False) -> None:
        node = self.resolve(node)
        where = path or "<root>"
        if not self._type_ok(value, node):
            out.append(f"{where}: {type(value).__name__} {value!r} where the schema wants {self._type_name(node)}")
            return
        if "enum" in node and value not in node["enum"]:
            out.append(f"{where}: {value!r} is not one of {node['enum']}")
        if isinstance(value, str):
            if "pattern" in node and not re.search(node["pattern"], value):
                out.append(f"{where}: {value!r} does not match {node['pattern']!r}")
            if len(value) > node.get("maxLength", len(value)) or len(value) < node.get("minLength", 0):
                bounds = f"[{node.get('minLength', 0)}, {node.get('maxLength')}]"
                out.append(f"{where}: length {len(value)} outside {bounds}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value < node.get("minimum", value) or value > node.get("maximum", value):
                out.append(f"{where}: {value} outside [{node.get('minimum')}, {node.get('maximum')}]")
        if isinstance(value, dict):
            for key in node.get("required") or []:
                if key not in value:
                    out.append(f"{path}.{key}".lstrip(".") + ": required")
            for key, item in value.items():
                child_path = f"{path}.{key}" if path else key
                if root and key == "metadata":
                    continue
                child, declared = self._children(node, key)
                if not declared:
                    out.append(f"{child_path}: not declared by the schema (the server drops it)")
                elif child is not None:
                    self.check_value(item, child, child_path, out)
        if isinstance(value, list):
            if len(value) > node.get("maxItems", len(value)) or len(value) < node.get("minItems", 0):
                out.append(f"{where}: {len(value)} items outside [{node.get('minItems', 0)}, {node.get('maxItems')}]")
            keys = node.get("x-kubernetes-list-map-keys")
            if keys:
                seen = [tuple(i.get(k) for k in keys) for i in value if isinstance(i, dict)]
                if len(set(seen)) != len(seen):
                    out.append(f"{where}: list-map keys {keys} repeat")
            if "items" in node:
                for i, item in enumerate(value):
                    self.check_value(item, node["items"], f"{path}[{i}]", out)

    def _type_ok(self, value: Any, node: dict) -> bool:
        if node.get("x-kubernetes-int-or-string"):
            return JSON_TYPES["integer"](value) or JSON_TYPES["string"](value)
        for combinator in ("anyOf", "oneOf"):
            options = node.get(combinator)
            if options and "type" not in node and all("type" in self.resolve(o) for o in options):
                return any(JSON_TYPES[self.resolve(o)["type"]](value) for o in options)
        kind = node.get("type")
        return kind is None or JSON_TYPES[kind](value)

    def _type_name(self, node: dict) -> str:
        if node.get("x-kubernetes-int-or-string"):
            return "an integer or a string"
        return str(node.get("type") or [self.resolve(o).get("type") for o in node.get("oneOf") or []])

    def _prune(self, value: Any, node: Mapping[str, Any], path: str, dropped: list[str], root: bool = False) -> None:
        node = self.resolve(node)
        if isinstance(value, dict):
            for key in list(value):
                child_path = f"{path}.{key}" if path else key
                if root and key == "metadata":
                    continue
                child, declared = self._children(node, key)
                if not declared:
                    del value[key]
                    dropped.append(child_path)
                elif child is not None:
                    self._prune(value[key], child, child_path, dropped)
        elif isinstance(value, list) and "items" in node:
            for i, item in enumerate(value):
                self._prune(item, node["items"], f"{path}[{i}]", dropped)


def declares(schema: Schema, path: str) -> bool:
    """Whether the dotted ``path`` (e.g. ``spec.runtimePatches``) is a declared field of ``schema``."""
    node: dict | None = schema.resolve(schema.root)
    for key in path.split("."):
        if node is None:
            return True  # below preserve-unknown-fields
        while node.get("type") == "array" and "items" in node:
            node = schema.resolve(node["items"])
        child, declared = schema._children(node, key)
        if not declared:
            return False
        node = child
    return True
