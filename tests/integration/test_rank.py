"""`transferops rank` on the tiny pipeline: candidates scored by every applicable transferability score, the
table printed and written, and with rank.apply the winner is what pretrain builds."""

import json
from dataclasses import replace

from transferops.stages import ingest, pretrain
from transferops.stages.rank import applied_model, parse_candidate


def test_rank_scores_candidates_and_the_winner_can_be_applied(tiny_cfg, tmp_path, capsys):
    from transferops.cli import main

    for stage in (ingest, pretrain):
        stage.run(tiny_cfg)
    ckpt = f"{tiny_cfg.base.artifacts_dir}/pretrain/model.pt"
    params = tmp_path / "p.json"
    params.write_text(json.dumps(tiny_cfg.to_dict()))
    candidates = f"smallcnn@{ckpt},smallcnn,resnet18"
    out = tmp_path / "reports" / "ranking.json"
    assert main(["rank", "--params", str(params), "--candidates", candidates, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = json.loads(out.read_text())["table"]
    assert {r["candidate"] for r in table} == set(candidates.split(","))
    by_name = {r["candidate"]: r for r in table}
    # LEEP and NCE need a trained head (the pretrained checkpoint has one); LogME and H-score need only features
    assert by_name[f"smallcnn@{ckpt}"]["leep"] is not None and by_name["resnet18"]["leep"] is None
    assert all(r["logme"] is not None and r["hscore"] is not None for r in table)
    # the pretrained source model transfers better than a randomly initialised one of the same shape
    assert by_name[f"smallcnn@{ckpt}"]["logme"] > by_name["smallcnn"]["logme"]
    assert "| candidate | logme" in printed and "best under logme:" in printed

    # with rank.apply the winner is what pretrain builds
    applied = replace(tiny_cfg, rank=replace(tiny_cfg.rank, candidates=["resnet18", "smallcnn"], apply=True))
    from transferops.stages import rank

    winner = rank.run(applied).metrics["winner"]
    assert applied_model(applied) == parse_candidate(winner, tiny_cfg.model)
