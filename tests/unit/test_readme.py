"""What the README and docs/ show a user exists: every `transferops ...` command, every `make` target and
every params key (in YAML snippets and in `--set` / `-S` overrides)."""

import argparse
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from transferops.cli import build_parser
from transferops.config import Config
from transferops.kubeflow.settings import KfpConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _code(text: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands and keys are shown, not prose (nor ```text output)."""
    blocks = [body for lang, body in FENCE.findall(text) if lang != "text"]
    rest = FENCE.sub("", text)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(text: str) -> set[tuple[str, ...]]:
    """``transferops A [B]`` as shown in code, A (and B when A has sub-commands) kept."""
    found = set()
    top = _subparsers(build_parser())
    for code in _code(text):
        for line in code.splitlines():
            for m in re.finditer(r"(?:^|[\s/])transferops((?:\s+[a-z][\w-]*)+)", line):
                words = m.group(1).split()
                nested = words[0] in top and _subparsers(top[words[0]])
                found.add(tuple(words[:2]) if nested and len(words) > 1 else (words[0],))
    return found


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def _is_key(cls: type, parts: list[str]) -> bool:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if not parts or parts[0] not in names:
        return False
    tp = hints[parts[0]]
    if len(parts) == 1:
        return True
    return dataclasses.is_dataclass(tp) and _is_key(tp, parts[1:])


def _known(key: str) -> bool:
    parts = key.split(".")
    if parts[0] == "kfp":
        return _is_key(KfpConfig, parts[1:])
    return _is_key(Config, parts)


def _yaml_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        keys.append(key)
        is_section = isinstance(v, dict) and not key.endswith(("class_map", "node_selector"))
        if is_section:
            keys += _yaml_keys(v, f"{key}.")
    return keys


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_shown_exists(doc):
    top = _subparsers(build_parser())
    commands = _commands(doc.read_text())
    for cmd in commands:
        assert cmd[0] in top, f"{doc.name}: `transferops {cmd[0]}` is not a subcommand"
        if len(cmd) > 1:
            assert cmd[1] in _subparsers(top[cmd[0]]), f"{doc.name}: `transferops {' '.join(cmd)}` does not exist"
    if doc.name == "README.md":
        assert {("run",), ("pipeline", "compile"), ("params",)} <= commands


def test_the_readme_lists_every_public_subcommand():
    text = (REPO / "README.md").read_text()
    hidden = {"remote-stage"}
    for name in set(_subparsers(build_parser())) - hidden:
        assert f"`transferops {name}" in text or f"`{name}`" in text, f"README.md: no mention of {name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_make_target_shown_exists(doc):
    targets = _make_targets()
    for code in _code(doc.read_text()):
        for name in re.findall(r"(?:^|[\s(])make\s+([a-z][\w-]*)", code):
            assert name in targets, f"{doc.name}: `make {name}` is not a Makefile target"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_params_key_shown_exists(doc):
    text = doc.read_text()
    keys = []
    for lang, body in FENCE.findall(text):
        if lang == "yaml":
            keys += _yaml_keys(yaml.safe_load(body))
    for code in _code(text):
        keys += re.findall(r"(?:--set|-S)[ =]([a-z_]+(?:\.[a-z_]+)+)=", code)
    unknown = [k for k in keys if not _known(k)]
    assert not unknown, f"{doc.name}: params keys that do not exist: {unknown}"


def test_the_readme_params_snippet_is_a_valid_params_file(tmp_path):
    from transferops.config import config_from_dict

    (snippet,) = [body for lang, body in FENCE.findall((REPO / "README.md").read_text()) if lang == "yaml"]
    cfg = config_from_dict(yaml.safe_load(snippet))
    assert cfg.ingest.target.kind == "image_folder" and cfg.ingest.target.split.labels_per_class == 5
    assert cfg.ingest.target.split.test_fraction == Config().ingest.target.split.test_fraction


def test_the_readme_stays_a_users_document():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_the_checks_can_fail():
    assert ("nope",) in _commands("`transferops nope --x`") and ("pipeline", "nope") in _commands(
        "```\ntransferops pipeline nope\n```"
    )
    assert not _known("finetune.nope") and not _known("kfp.gpu.nope") and _known("kfp.gpu.cpu_limit")
    assert "nope" not in _make_targets()


@pytest.mark.parametrize("doc", [*DOCS, REPO / "reports" / "README.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name}: link to {target} does not resolve"
