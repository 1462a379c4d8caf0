"""The ``transferops`` command line: one subcommand per stage, plus ``run`` (the whole pipeline) and ``params``.

Every subcommand is a thin door into the library: parse, build the config, call the stage's ``run``.
Logging is configured here and nowhere else. Errors caused by input print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from transferops import __version__
from transferops.config import DEFAULT_PARAMS, Config, dump_config, load_config
from transferops.errors import TransferopsError
from transferops.stages import STAGES

log = logging.getLogger("transferops")


def setup_logging(verbose: bool) -> None:
    from transferops.secrets import SecretMaskingFilter

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by mlflow when it is first imported
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretMaskingFilter())
    for noisy in ("alembic", "mlflow", "urllib3", "botocore", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.params, args.set)


def run_stage(name: str, cfg: Config, restart: bool = False):
    """Run one stage with the MLflow tracker (under torchrun, rank 0 alone tracks)."""
    from transferops.stages import run_stage as run
    from transferops.tracking import make_tracker

    return run(name, cfg, make_tracker(cfg, enabled=os.environ.get("RANK", "0") == "0"), restart)


def cmd_stage(args: argparse.Namespace) -> int:
    run_stage(args.command, _config(args), restart=getattr(args, "restart", False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline under one MLflow parent run: through ``dvc repro`` (default) or in-process.

    With ``schedule.retrain_when`` other than ``always``, ingest runs first and the run stops there, with one
    line saying why, when the schedule says there is nothing to retrain.
    """
    from transferops.summary import print_summary
    from transferops.tracking import PARENT_ENV, MlflowTracker

    cfg = _config(args)
    if args.set and not args.direct:
        raise TransferopsError(
            "--set is for `run --direct`; under DVC use `dvc exp run -S key=value` (DVC tracks params.yaml)"
        )
    tracker = MlflowTracker(cfg.mlflow)
    parent = tracker.start_pipeline_run(None, cfg)
    log.info("pipeline run %s (MLflow experiment %r)", parent, cfg.mlflow.experiment)
    os.environ[PARENT_ENV] = parent
    status, decision = "FAILED", None
    try:
        scheduled = cfg.schedule.retrain_when != "always"
        if args.direct or scheduled:
            run_stage("ingest", cfg) if args.direct else _dvc(["repro", "ingest"], parent, args.force)
        if scheduled:
            from transferops.stages import schedule

            decision = schedule.run(cfg, tracker).metrics
        if decision is None or decision["retrain"]:
            if args.direct:
                for name in STAGES[1:]:
                    run_stage(name, cfg)
            else:
                _dvc(["repro"], parent, args.force)
        status = "FINISHED"
    finally:
        tracker.end_pipeline_run(status)
        os.environ.pop(PARENT_ENV, None)
    if decision is not None and not decision["retrain"]:
        print(f"transferops run: stopped after ingest, no retraining: {decision['reason']}")
        return 0
    print_summary(cfg, tracker.uri)
    return 0


def _dvc(args: list[str], parent: str, force: bool) -> None:
    """``dvc <args>`` with this environment's dvc and transferops, whether or not it is activated."""
    from transferops.tracking import PARENT_ENV

    bindir = str(Path(sys.executable).parent)
    dvc = str(Path(bindir) / "dvc") if (Path(bindir) / "dvc").exists() else "dvc"
    cmd = [dvc, *args] + (["--force"] if force else [])
    log.info("running: dvc %s", " ".join(cmd[1:]))
    env = {**os.environ, PARENT_ENV: parent, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise TransferopsError(f"`{' '.join(cmd)}` failed with exit code {rc} (see the stage output above)")


def cmd_remote_stage(args: argparse.Namespace) -> int:
    from transferops.kubeflow.launch import remote_stage

    return remote_stage(args.stage, args.staging)


def cmd_rank(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from transferops.stages import rank
    from transferops.tracking import make_tracker

    cfg = _config(args)
    if args.candidates:
        cfg = replace(cfg, rank=replace(cfg.rank, candidates=[c for c in args.candidates.split(",") if c.strip()]))
    result = rank.run(cfg, make_tracker(cfg))
    table = json.loads(Path(result.outputs["ranking"]).read_text())["table"]
    if table:
        print(rank.markdown(table))
        print(f"best under {cfg.rank.score}: {result.metrics['winner']}")
    if args.out and not args.no_report and table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"score": cfg.rank.score, "table": table}, indent=2) + "\n")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A grid of overrides on DVC's queue, a Kubeflow ParallelFor (local or on a server), or Katib."""
    from transferops import sweep
    from transferops.tracking import MlflowTracker

    cfg = _config(args)
    points = sweep.expand(args.grid)
    log.info("sweep: %d points on %s", len(points), args.engine)
    if args.engine == "katib":
        return _sweep_katib(args, cfg, points)
    if args.engine in ("kfp-local", "kubeflow"):
        sweep.check_shared(points)
    tracker = MlflowTracker(cfg.mlflow)
    parent = tracker.start_pipeline_run(f"sweep-{len(points)}-points", cfg)
    tracker.mlflow.MlflowClient().set_tag(parent, "transferops.kind", "sweep")
    status = "FAILED"
    try:
        if args.engine == "dvc":
            if args.set:
                raise TransferopsError("--set with --engine dvc: put base settings in params.yaml (DVC tracks it)")
            table = sweep.run_dvc(cfg, points, args.jobs, tracker)
        else:
            cli = _pipelines_cli()
            if cli is None:
                raise TransferopsError("pipelines/ not found: Kubeflow sweeps run from the transferops checkout")
            from pipelines import transfer_pipeline as p

            pipeline = p.build_sweep_pipeline(args.params, list(args.set), points)
            if args.engine == "kubeflow":
                if not args.host:
                    raise TransferopsError("--engine kubeflow needs --host (the KFP API endpoint)")
                run = p.submit_pipeline(args.host, pipeline, experiment=args.experiment)
                print(f"submitted sweep run {run.run_id} ({len(points)} points)")
                table = []
            else:
                os.environ["TRANSFEROPS_SWEEP_PARENT"] = parent
                p.run_local_pipeline(pipeline, args.pipeline_root)
                table = sweep.kfp_local_table(args.pipeline_root, points)
        status = "FINISHED"
    finally:
        os.environ.pop("TRANSFEROPS_SWEEP_PARENT", None)
        tracker.end_pipeline_run(status)
    if table:
        text = sweep.markdown(table)
        print(text)
        tracker.mlflow.MlflowClient().log_text(parent, text, "sweep.md")
        best = max(table, key=lambda r: r.get("accuracy") or 0)
        tracker.log_to_parent({"best_accuracy": best.get("accuracy")}, {"transferops.best_point": best["point"]})
    return 0


def _sweep_katib(args: argparse.Namespace, cfg: Config, points: list[list[str]]) -> int:
    import yaml as _yaml

    from components.image import IMAGE
    from transferops import sweep
    from transferops.kubeflow import katib
    from transferops.kubeflow.settings import load_kfp_config

    kfp = load_kfp_config(args.params, list(args.set))
    manifest = sweep.katib_manifest(
        cfg, points, args.name, IMAGE, kfp, [o for o in args.set if not o.startswith("kfp.")]
    )
    if args.dry_run:
        print(_yaml.safe_dump(manifest, sort_keys=False))
        return 0
    created = katib.create_experiment(manifest)
    meta = created["metadata"]
    print(f"created Katib Experiment {meta['namespace']}/{meta['name']} ({len(points)} trials)")
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    from transferops.sweep import trial

    print(f"val_accuracy={trial(_config(args))}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_config(args)))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from transferops.summary import print_summary
    from transferops.tracking import resolve_tracking_uri

    cfg = _config(args)
    print_summary(cfg, resolve_tracking_uri(cfg.mlflow))
    return 0


def cmd_bench_seeds(args: argparse.Namespace) -> int:
    from transferops.bench import seeds, seeds_markdown

    report = seeds(_config(args), args.seeds, args.out)
    print(seeds_markdown(report))
    return 0


def cmd_bench_methods(args: argparse.Namespace) -> int:
    from transferops.bench import DEFAULT_CURVE, methods, methods_markdown
    from transferops.tracking import make_tracker

    cfg = _config(args)
    names = [m.strip() for m in args.methods.split(",")] if args.methods else None
    curve = tuple(int(k) for k in args.curve.split(",")) if args.curve else DEFAULT_CURVE
    tracker = make_tracker(cfg, enabled=not args.no_mlflow)
    report = methods(cfg, args.seeds, names, curve, args.out, tracker, k0_only=args.unsupervised_k0_only)
    print(methods_markdown(report))
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from transferops.scale import ThroughputSpec, throughput, throughput_markdown

    spec = ThroughputSpec(
        model=args.model,
        image_size=args.image_size,
        stored_size=args.stored_size,
        channels=args.channels,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        augment=args.augment,
        steps=args.steps,
        width=args.width,
        repeats=args.repeats,
    )
    report = throughput(spec, args.device, linear_probe=args.linear_probe)
    print(throughput_markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_mlflow:
        _log_benchmark("benchmark-throughput", report)
    return 0


def cmd_bench_ranking(args: argparse.Namespace) -> int:
    from transferops.ranking_benchmark import markdown, validate

    names = [n.strip() for n in args.candidates.split(",")] if args.candidates else None
    print(markdown(validate(_config(args), args.seeds, names, args.out)))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from transferops.scale import data, data_markdown

    report = data(args.images, args.size, args.folder, args.workers, args.width, args.epoch_steps, args.keep)
    print(data_markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _log_benchmark(name: str, report: dict) -> None:
    """A benchmark's figures as one MLflow run (params: the setting, metrics: the figures)."""
    from transferops.config import MlflowConfig
    from transferops.tracking import MlflowTracker

    tracker = MlflowTracker(MlflowConfig())
    with tracker.mlflow.start_run(experiment_id=tracker.experiment_id, run_name=name):
        nums = {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        tracker.mlflow.log_params({k: v for k, v in report.items() if k not in nums})
        tracker.mlflow.log_metrics({k: float(v) for k, v in nums.items()})


def cmd_bench_targets(args: argparse.Namespace) -> int:
    from transferops.bench import targets, targets_markdown

    names = [t.strip() for t in args.targets.split(",")] if args.targets else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    print(targets_markdown(targets(_config(args), args.seeds, names, methods, args.out)))
    return 0


def _pipelines_cli():
    """The ``pipelines`` package of the checkout this CLI runs in (the Kubeflow adapter), or None."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "pipelines" / "cli.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            from pipelines import cli

            return cli
    return None


def cmd_no_pipelines(args: argparse.Namespace) -> int:
    raise TransferopsError("pipelines/ not found: `transferops pipeline` runs from the transferops checkout")


def _registry_client(args: argparse.Namespace):
    import mlflow

    from transferops.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(_config(args).mlflow))
    return mlflow.MlflowClient()


def cmd_registry(args: argparse.Namespace) -> int:
    from transferops.registry import aliases
    from transferops.registry.gate import model_name

    client = _registry_client(args)
    name = args.name or model_name(_config(args))
    if args.action == "history":
        events = aliases.history(client, name)
        print(f"{'time':20}  {'alias':10}  {'kind':8}  {'from':>4} -> {'to':<4}  reason")
        for e in events:
            run = f"  (run {e['run_id']})" if e.get("run_id") else ""
            moved = f"{e['from_version'] or '-':>4} -> {e['to_version']:<4}"
            print(f"{e['time']:20}  {e['alias']:10}  {e.get('kind', 'promote'):8}  {moved}  {e['reason']}{run}")
    elif args.action == "promote":
        e = aliases.promote(client, name, args.version, args.alias, args.reason)
        print(f"{name}: {args.alias} {e['from_version'] or '-'} -> {e['to_version']}")
    elif args.action == "rollback":
        e = aliases.rollback(client, name, args.alias)
        print(f"{name}: {args.alias} {e['from_version']} -> {e['to_version']} ({e['reason']})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from transferops.serving.predict import is_mlflow_uri, predict

    if is_mlflow_uri(args.model):
        import mlflow

        from transferops.config import MlflowConfig
        from transferops.tracking import resolve_tracking_uri

        # params.yaml is optional here: without one, $MLFLOW_TRACKING_URI or ./mlflow.db
        explicit = args.params != Path(DEFAULT_PARAMS) or args.set
        mlflow_cfg = _config(args).mlflow if explicit or args.params.is_file() else MlflowConfig()
        mlflow.set_tracking_uri(resolve_tracking_uri(mlflow_cfg))
    n = predict(args.model, args.inputs, args.out, args.runtime, args.batch_size)
    if args.out is not None:
        log.info("predict: %d rows written to %s", n, args.out)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=DEFAULT_PARAMS, type=Path, help="params file (default: params.yaml)")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set finetune.epochs=2 (repeatable; values parsed as YAML)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(prog="transferops", description="Deep transfer learning pipeline.")
    parser.add_argument("--version", action="version", version=f"transferops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    docs = {
        "ingest": "read, validate, split and shard the source and target datasets",
        "pretrain": "train the model on the labelled source domain",
        "finetune": "transfer the source model to the target domain with finetune.method",
        "evaluate": "score on the target test split against the source-only and from-scratch baselines",
        "register": "log to MLflow, register, alias challenger, promote to champion if the gate passes",
    }
    for name in STAGES:
        p = sub.add_parser(name, parents=[common], help=docs[name], description=docs[name])
        if name in ("pretrain", "finetune"):
            p.add_argument("--restart", action="store_true", help="ignore a saved training state and start over")
        p.set_defaults(func=cmd_stage)
    p = sub.add_parser("run", parents=[common], help="run the whole pipeline (through dvc repro by default)")
    p.add_argument("--direct", action="store_true", help="run the stages in this process instead of dvc repro")
    p.add_argument("-f", "--force", action="store_true", help="re-run every stage (dvc repro --force)")
    p.set_defaults(func=cmd_run)
    bench = sub.add_parser("benchmark", help="benchmarks that print figures").add_subparsers(
        dest="bench", required=True
    )
    p = bench.add_parser("seeds", parents=[common], help="the pipeline over several seeds: accuracy, baselines, gain")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report directory (default reports/)")
    p.set_defaults(func=cmd_bench_seeds)
    p = bench.add_parser("methods", parents=[common], help="every transfer method on the same data and budget")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    p.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    p.add_argument("--curve", default="", help="labels per class of the label-efficiency curve (default 0,1,2,5,10)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report directory (default reports/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the benchmark to MLflow")
    text = "run the unsupervised methods at k = 0 only (default: also at the default labels per class)"
    p.add_argument("--unsupervised-k0-only", action="store_true", help=text)
    p.set_defaults(func=cmd_bench_methods)
    p = bench.add_parser("throughput", help="the Trainer's images/s next to a bare training step, on this device")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--image-size", type=int, default=28, help="side the network sees (default 28)")
    p.add_argument("--stored-size", type=int, default=0, help="side the shards store (default: image size)")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--augment", default="affine", help="training augmentation policy (default affine)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per run (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians reported (default 3)")
    p.add_argument("--width", type=int, default=32, help="smallcnn width")
    p.add_argument("--device", default="auto")
    p.add_argument("--linear-probe", action="store_true", help="also time a linear probe, cached vs not")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the figures to MLflow")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_bench_throughput)
    p = bench.add_parser("ranking", parents=[common], help="do transferability scores predict fine-tuned accuracy?")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--candidates", default="", help="a subset of the built-in candidates (default: all)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.set_defaults(func=cmd_bench_ranking)
    p = bench.add_parser("data", help="ingest and one epoch on an ImageFolder: images/s and peak memory")
    p.add_argument("--images", type=int, default=40_000, help="JPEGs to generate (default 40,000)")
    p.add_argument("--size", type=int, default=160, help="their side in px (default 160)")
    p.add_argument("--folder", type=Path, default=None, help="read this ImageFolder instead of generating one")
    p.add_argument("--workers", type=int, default=0, help="ingest processes (default: every CPU)")
    p.add_argument("--width", type=int, default=8, help="smallcnn width of the training epoch (default 8)")
    p.add_argument("--epoch-steps", type=int, default=0, help="cap the epoch (default: one full pass)")
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_bench_data)
    text = "the pipeline on generated targets of the kind a new user brings (colour, inverted, unseen font)"
    p = bench.add_parser("targets", parents=[common], help=text)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--targets", default="", help="comma-separated subset (default: all)")
    p.add_argument("--methods", default="", help="other methods to score on the same source model (comma-separated)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report directory (default reports/)")
    p.set_defaults(func=cmd_bench_targets)
    pipelines_cli = _pipelines_cli()
    if pipelines_cli is not None:
        pipelines_cli.add_parser(sub, common)
    else:
        sub.add_parser("pipeline", help="the Kubeflow DAG (from a checkout)").set_defaults(func=cmd_no_pipelines)
    reg = sub.add_parser("registry", help="the model registry: alias history, promote, rollback")
    reg = reg.add_subparsers(dest="action", required=True)
    for action, text in (
        ("history", "every alias move (when, from, to, why, which run)"),
        ("promote", "point an alias (default champion) at a version"),
        ("rollback", "move champion back to the previous champion"),
    ):
        p = reg.add_parser(action, parents=[common], help=text)
        p.add_argument("name", nargs="?", default="", help="registered model (default register.model_name)")
        if action == "promote":
            p.add_argument("version")
            p.add_argument("--reason", default="manual promotion")
        if action != "history":
            p.add_argument("--alias", default="champion")
        p.set_defaults(func=cmd_registry)
    text = "classify images with a trained model; write a CSV (file,predicted,confidence,second,second_confidence)"
    p = sub.add_parser("predict", parents=[common], help=text, description=text)
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS or models:/NAME/VERSION (MLflow), a .onnx file, or a transferops .pt checkpoint",
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        default=None,
        help="torch (default), onnx (ONNX Runtime on CPU with the version's logged fp32 ONNX export; a "
        "checkpoint is exported on the fly) or onnx-int8 (the version's checked INT8 export); a .onnx model "
        "runs as it is",
    )
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--out", type=Path, default=None, help="CSV file to write (default: stdout)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively), .zip/.tar archives, s3://bucket/prefix",
    )
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("remote-stage", help=argparse.SUPPRESS, description="(inside a Kubeflow Trainer job)")
    p.add_argument("stage", choices=("pretrain", "finetune"))
    p.add_argument("--staging", required=True, help="where the Kubeflow task staged params, inputs and outputs")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_remote_stage)
    text = "rank candidate backbones by transferability (LogME, LEEP, NCE, H-score) on the labelled target images"
    p = sub.add_parser("rank", parents=[common], help=text, description=text)
    p.add_argument("--candidates", default="", help="comma-separated name or name@weights (default: rank.candidates)")
    p.add_argument("--out", type=Path, default=Path("reports/ranking.json"), help="the table as JSON")
    p.add_argument("--no-report", action="store_true", help="write artifacts/rank only (the DVC stage)")
    p.set_defaults(func=cmd_rank)
    text = "run a grid of overrides: DVC's experiment queue, a Kubeflow ParallelFor, or a Katib Experiment"
    p = sub.add_parser("sweep", parents=[common], help=text, description=text)
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2", help="e.g. finetune.lr=1e-3,3e-4")
    p.add_argument("--engine", default="dvc", choices=("dvc", "kfp-local", "kubeflow", "katib"))
    p.add_argument("--jobs", type=int, default=1, help="DVC queue workers (default 1)")
    p.add_argument("--pipeline-root", type=Path, default=Path("artifacts/kfp-local"))
    p.add_argument("--host", default="", help="KFP API endpoint (--engine kubeflow)")
    p.add_argument("--experiment", default="transferops")
    p.add_argument("--name", default="transferops-sweep", help="Katib Experiment name")
    p.add_argument("--dry-run", action="store_true", help="katib: print the Experiment instead of creating it")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser(
        "trial", parents=[common], help="one Katib trial: ingest, pretrain, finetune; report val_accuracy"
    )
    p.set_defaults(func=cmd_trial)
    p = sub.add_parser("params", parents=[common], help="print the resolved, validated params")
    p.set_defaults(func=cmd_params)
    p = sub.add_parser("summary", parents=[common], help="print the summary of the last pipeline run")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except TransferopsError as exc:
        from transferops.secrets import mask

        print(f"error: {mask(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
