"""System metrics: a tracked training run records MLflow's ``system/*`` series; other stages' runs do not."""

from dataclasses import replace

from transferops.stages import ingest, pretrain
from transferops.tracking import MlflowTracker


def _run_of(client, cfg, stage: str):
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.`transferops.stage` = '{stage}'")
    return run


def test_a_tracked_pretrain_run_records_system_metrics_when_on(tiny_cfg, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)  # the tracker sets it
    interval = 0.1
    cfg = replace(
        tiny_cfg,
        mlflow=replace(tiny_cfg.mlflow, system_metrics=True, system_metrics_interval=interval),
        pretrain=replace(tiny_cfg.pretrain, epochs=tiny_cfg.pretrain.epochs * 4),  # long enough to sample twice
    )
    tracker = MlflowTracker(cfg.mlflow)
    ingest.run(cfg, tracker)
    pretrain.run(cfg, tracker)
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)

    client = mlflow.MlflowClient()
    trained = _run_of(client, cfg, "pretrain").data.metrics
    system = {k: v for k, v in trained.items() if k.startswith("system/")}
    assert 0.0 <= system["system/cpu_utilization_percentage"] <= 100.0
    assert system["system/system_memory_usage_megabytes"] > 10.0  # a Python process with torch uses far more
    info = _run_of(client, cfg, "pretrain").info
    history = client.get_metric_history(info.run_id, "system/cpu_utilization_percentage")
    assert (info.end_time - info.start_time) / 1000 > 6 * interval  # the run outlasts several sampling intervals
    assert len(history) >= 2  # sampled through the run, not once at its end
    assert not [k for k in _run_of(client, cfg, "ingest").data.metrics if k.startswith("system/")]
