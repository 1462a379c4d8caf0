"""A user's mistakes on the command line end in one line starting ``error:`` and exit code 2."""

from pathlib import Path

import pytest

from transferops.cli import main

REPO = Path(__file__).resolve().parents[2]
PARAMS = str(REPO / "params.yaml")


def _error(capsys, *argv: str) -> str:
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_help_lists_the_subcommands_and_hides_the_internal_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "==SUPPRESS==" not in out and "remote-stage" not in out
    for name in ("ingest", "run", "pipeline", "predict", "registry", "summary"):
        assert f"\n    {name}" in out


def test_no_subcommand_and_unknown_option(capsys):
    assert "required: COMMAND" in _error(capsys)
    assert "unrecognized arguments: --bogus" in _error(capsys, "params", "--bogus")
    assert "required: --model" in _error(capsys, "predict", "x.png")


def test_pipeline_compile_out_must_be_yaml_in_a_writable_place(capsys, tmp_path):
    out = tmp_path / "x.out"
    msg = _error(capsys, "pipeline", "compile", "--params", PARAMS, "--out", str(out))
    assert "argument --out" in msg and "ending in .yaml or .yml" in msg
    assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    msg = _error(capsys, "pipeline", "compile", "--params", PARAMS, "--out", str(afile / "p.yaml"))
    assert f"{afile} is a file, not a folder" in msg


def test_out_paths_are_checked_before_any_work(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert "is a file; expected a folder" in _error(capsys, "benchmark", "seeds", "--out", str(afile))
    assert "is a folder; expected a file name" in _error(
        capsys, "predict", "--model", "m.pt", "--out", str(tmp_path), "x"
    )
    assert "ending in .json" in _error(capsys, "rank", "--out", str(tmp_path / "r.csv"))
    msg = _error(capsys, "benchmark", "throughput", "--out", str(afile / "r.json"))
    assert "is a file, not a folder" in msg
    assert afile.read_text() == ""


@pytest.mark.parametrize("flag", [["--seeds", "0"], ["--seeds", "two"]])
def test_counts_must_be_positive(capsys, flag):
    assert "expected a positive integer" in _error(capsys, "benchmark", "seeds", *flag)


def test_params_file_and_set_mistakes(capsys, tmp_path):
    assert _error(capsys, "params", "--params", str(tmp_path / "nope.yaml")).endswith("params file not found")
    assert "is a folder; expected a params file" in _error(capsys, "params", "--params", str(tmp_path))
    assert "expected section.key=value" in _error(capsys, "params", "--params", PARAMS, "--set", "finetune.epochs")
    msg = _error(capsys, "params", "--params", PARAMS, "--set", "base.device=gpu0")
    assert msg == "error: --set: base.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu0'"


def test_a_bad_grid_point_is_refused_before_anything_is_queued(capsys):
    msg = _error(capsys, "sweep", "--params", PARAMS, "--grid", "finetune.optimizer=adam,sgdd")
    assert (
        msg == "error: --grid finetune.optimizer=sgdd: finetune.optimizer: expected one of adamw, adam, sgd, got 'sgdd'"
    )
    assert "unknown key 'nope'" in _error(capsys, "sweep", "--params", PARAMS, "--grid", "nope.lr=1,2")


def test_an_unreachable_registry_is_one_line_not_minutes_of_retries(capsys):
    uri = "mlflow.tracking_uri=http://127.0.0.1:9"  # the discard port: connection refused
    rc = main(["registry", "history", "--params", PARAMS, "--set", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: http://127.0.0.1:9: MLflow tracking server unreachable")
