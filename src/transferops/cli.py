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
import typing
from pathlib import Path

from transferops import __version__
from transferops.config import DEFAULT_PARAMS, Config, dump_config, load_config
from transferops.errors import ConfigError, TransferopsError
from transferops.stages.graph import GRAPH, RESUMABLE, gated

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


def run_stage(name: str, cfg: Config, restart: bool = False, obey_schedule: bool = False):
    """Run one stage with the MLflow tracker (under torchrun, rank 0 alone tracks)."""
    from transferops.stages import run_stage as run
    from transferops.tracking import make_tracker

    tracker = make_tracker(cfg, enabled=os.environ.get("RANK", "0") == "0")
    return run(name, cfg, tracker, restart, obey_schedule)


def cmd_stage(args: argparse.Namespace) -> int:
    run_stage(args.command, _config(args), getattr(args, "restart", False), args.obey_schedule)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline (:mod:`transferops.stages.graph`) under one MLflow parent run: through ``dvc repro``
    (default) or in this process (``--direct``).

    The schedule stage decides whether this run retrains; when it says no, the run says why in one line (in
    this process the run stops there; under DVC the stages after it keep their outputs).
    """
    from transferops.stages import read_decision, run_pipeline
    from transferops.summary import print_summary
    from transferops.tracking import PARENT_ENV, MlflowTracker, make_tracker

    cfg = _config(args)
    if args.set and not args.direct:
        raise TransferopsError(
            "--set is for `run --direct`; under DVC use `dvc exp run -S key=value` (DVC tracks params.yaml)"
        )
    tracker = MlflowTracker(cfg.mlflow)
    parent = tracker.start_pipeline_run(None, cfg)
    log.info("pipeline run %s (MLflow experiment %r)", parent, cfg.mlflow.experiment)
    os.environ[PARENT_ENV] = parent
    status = "FAILED"
    try:
        if args.direct:
            _, decision = run_pipeline(cfg, lambda _: make_tracker(cfg))
        else:
            _dvc(["repro"], parent, args.force)
            decision = read_decision(cfg)
        status = "FINISHED"
    finally:
        tracker.end_pipeline_run(status)
        os.environ.pop(PARENT_ENV, None)
    if decision is not None and not decision["retrain"]:
        kept = "stopped after the schedule" if args.direct else "the stages after the schedule kept their outputs"
        print(f"transferops run: no retraining ({kept}): {decision['reason']}")
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
    if args.out and table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"score": cfg.rank.score, "table": table}, indent=2) + "\n")
    return 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from transferops.stages import dvc

    if args.check:
        same = args.out.is_file() and args.out.read_text() == dvc.render()
        print(f"{args.out}: {'up to date' if same else 'differs from the stage graph: run `transferops dvc-yaml`'}")
        return 0 if same else 1
    print(f"{args.out}: {'written' if dvc.write(args.out) else 'unchanged'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A grid of overrides on DVC's queue, a Kubeflow ParallelFor (local or on a server), or Katib."""
    from transferops import sweep
    from transferops.tracking import MlflowTracker

    cfg = _config(args)
    points = sweep.expand(args.grid)
    _check_points(args, points)
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
            p = _adapter("transfer_pipeline")

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


def _check_points(args: argparse.Namespace, points: list[list[str]]) -> None:
    """Validate every grid point's config before anything is queued or submitted."""
    from transferops.config import config_from_dict, read_params

    data = read_params(args.params)
    core = [o for o in args.set if not o.startswith("kfp.")]  # kfp.* is the Kubeflow adapter's to check
    for point in points:
        try:
            config_from_dict(data, [*core, *(o for o in point if not o.startswith("kfp."))])
        except ConfigError as exc:
            raise ConfigError(f"--grid {' '.join(point)}: {str(exc).removeprefix('--set: ')}") from None


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
    if not cfg.base.state_uri:
        log.warning(
            "base.state_uri is empty: a preempted Katib trial gets a new pod but restarts training from scratch "
            "(set it to s3://... or a volume every trial mounts to resume)"
        )
    if args.dry_run:
        print(_yaml.safe_dump(manifest, sort_keys=False))
        return 0
    created = katib.create_experiment(manifest)
    meta, spec = created["metadata"], manifest["spec"]
    print(
        f"created Katib Experiment {meta['namespace']}/{meta['name']} ({spec['maxTrialCount']} trials, "
        f"{spec['parallelTrialCount']} at a time, failing after {spec['maxFailedTrialCount']} failed)"
    )
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
    from transferops_bench import seeds, seeds_markdown

    report = seeds(_config(args), args.seeds, args.out)
    print(seeds_markdown(report))
    return 0


def cmd_bench_methods(args: argparse.Namespace) -> int:
    from transferops.tracking import make_tracker
    from transferops_bench import DEFAULT_CURVE, methods, methods_markdown

    cfg = _config(args)
    names = [m.strip() for m in args.methods.split(",")] if args.methods else None
    curve = tuple(int(k) for k in args.curve.split(",")) if args.curve else DEFAULT_CURVE
    tracker = make_tracker(cfg, enabled=not args.no_mlflow)
    report = methods(cfg, args.seeds, names, curve, args.out, tracker, k0_only=args.unsupervised_k0_only)
    print(methods_markdown(report))
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from transferops_bench.scale import ThroughputSpec, throughput, throughput_markdown

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
        _write_report(args.out, report)
    if not args.no_mlflow:
        _log_benchmark("benchmark-throughput", report)
    return 0


def cmd_bench_ranking(args: argparse.Namespace) -> int:
    from transferops_bench.ranking import markdown, validate

    names = [n.strip() for n in args.candidates.split(",")] if args.candidates else None
    print(markdown(validate(_config(args), args.seeds, names, args.out)))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from transferops_bench.scale import data, data_markdown

    report = data(args.images, args.size, args.folder, args.workers, args.width, args.epoch_steps, args.keep)
    print(data_markdown(report))
    if args.out:
        _write_report(args.out, report)
    return 0


def _write_report(path: Path, report: dict) -> None:
    """A benchmark's figures as JSON (the folder created, as ``--out`` promised)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


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
    from transferops_bench import targets, targets_markdown

    names = [t.strip() for t in args.targets.split(",")] if args.targets else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    print(targets_markdown(targets(_config(args), args.seeds, names, methods, args.out)))
    return 0


PIPELINE_ACTIONS = {
    "compile": "write the IR YAML (default pipelines/transfer_pipeline.yaml)",
    "run-local": "run the DAG with kfp.local in this environment, then print its summary",
    "submit": "compile and start a run on a KFP server (kfp.Client)",
    "schedule": "compile and create a recurring run on a KFP server",
    "doctor": "check the cluster: CRDs and versions, the service account's permissions, the secrets",
}


def _adapter(module: str):
    """A module of the Kubeflow adapter, ``pipelines/`` (installed with the package from a checkout)."""
    import importlib

    try:
        return importlib.import_module(f"pipelines.{module}")
    except ImportError as exc:
        raise TransferopsError(
            f"the Kubeflow adapter (pipelines/) cannot be imported ({exc}): install transferops from its checkout"
        ) from exc


def cmd_pipeline(args: argparse.Namespace) -> int:
    return _adapter("cli").run(args)


def add_pipeline_parser(sub, common: argparse.ArgumentParser) -> None:
    """``transferops pipeline <action>``: arguments here, behaviour in ``pipelines/cli.py`` (imported when run)."""
    pipe = sub.add_parser("pipeline", help="the Kubeflow Pipelines DAG: compile, run-local, submit, schedule, doctor")
    actions = pipe.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in PIPELINE_ACTIONS.items():
        p = actions.add_parser(action, parents=[common], help=text, description=text)
        p.set_defaults(func=cmd_pipeline)
        if action == "compile":
            p.add_argument("--out", type=output_file(".yaml", ".yml"), default=None, help="the IR YAML to write")
        if action == "run-local":
            p.add_argument("--pipeline-root", type=Path, default=Path("artifacts/kfp-local"))
            p.add_argument("--cache", action="store_true", help="enable kfp.local caching")
        if action in ("submit", "schedule"):
            p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
            p.add_argument("--experiment", default="transferops")
        if action == "schedule":
            p.add_argument("--cron", default=None, help='6-field cron, seconds first (default kfp.cron: "0 0 3 * * *")')
        if action == "doctor":
            text = "check as this service account of kfp.namespace (impersonated), e.g. transferops"
            p.add_argument("--service-account", default="", help=text)
            text = "skip what this cluster does not use: trainer (no kfp.distributed), katib (no Katib sweeps)"
            p.add_argument("--without", nargs="+", default=[], choices=("trainer", "katib"), help=text)


def _registry_client(args: argparse.Namespace):
    """A client of the configured MLflow, through the tracker: bounded retries, and an unreachable server is one
    line (``TrackingError``) instead of minutes of retries and a traceback."""
    from transferops.tracking import MlflowTracker

    return MlflowTracker(_config(args).mlflow).mlflow.MlflowClient()


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


def _writable(path: Path, what: str) -> None:
    """Refuse an output path that cannot be written: an ancestor that is a file, or no write permission."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise argparse.ArgumentTypeError(f"{path}: cannot write the {what} ({parent} is not writable)")
            return


def output_file(*suffixes: str):
    """An argparse type for an output file: not a folder, in a writable place, with one of ``suffixes``."""

    def parse(text: str) -> Path:
        path = Path(text)
        if suffixes and not path.name.lower().endswith(suffixes):
            raise argparse.ArgumentTypeError(f"{text}: expected a file name ending in {' or '.join(suffixes)}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: is a folder; expected a file name")
        _writable(path, "file")
        return path

    return parse


def output_dir(text: str) -> Path:
    """An argparse type for an output folder (created when missing) in a writable place."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file; expected a folder")
    _writable(path / "x", "folder")
    return path


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of the command line."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--params", default=DEFAULT_PARAMS, type=Path, help="params file (default: params.yaml)")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set finetune.epochs=2 (repeatable; values parsed as YAML)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = Parser(prog="transferops", description="Deep transfer learning pipeline.")
    parser.add_argument("--version", action="version", version=f"transferops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in GRAPH:
        if stage.name == "rank":  # rank has options of its own (cmd_rank)
            continue
        p = sub.add_parser(stage.name, parents=[common], help=stage.help, description=stage.help)
        if stage.resumable:
            p.add_argument("--restart", action="store_true", help="ignore a saved training state and start over")
        if gated(stage.name):
            text = "keep the previous outputs when the schedule's decision (artifacts/schedule) says no retraining"
            p.add_argument("--obey-schedule", action="store_true", help=text + " (dvc.yaml runs stages so)")
        p.set_defaults(func=cmd_stage, obey_schedule=False)
    p = sub.add_parser("run", parents=[common], help="run the whole pipeline (through dvc repro by default)")
    p.add_argument("--direct", action="store_true", help="run the stages in this process instead of dvc repro")
    p.add_argument("-f", "--force", action="store_true", help="re-run every stage (dvc repro --force)")
    p.set_defaults(func=cmd_run)
    bench = sub.add_parser("benchmark", help="benchmarks that print figures").add_subparsers(
        dest="bench", required=True, metavar="BENCHMARK"
    )
    p = bench.add_parser("seeds", parents=[common], help="the pipeline over several seeds: accuracy, baselines, gain")
    p.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (default 3)")
    p.add_argument("--out", type=output_dir, default=Path("reports"), help="report directory (default reports/)")
    p.set_defaults(func=cmd_bench_seeds)
    p = bench.add_parser("methods", parents=[common], help="every transfer method on the same data and budget")
    p.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (default 5)")
    p.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    p.add_argument("--curve", default="", help="labels per class of the label-efficiency curve (default 0,1,2,5,10)")
    p.add_argument("--out", type=output_dir, default=Path("reports"), help="report directory (default reports/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the benchmark to MLflow")
    text = "run the unsupervised methods at k = 0 only (default: also at the default labels per class)"
    p.add_argument("--unsupervised-k0-only", action="store_true", help=text)
    p.set_defaults(func=cmd_bench_methods)
    p = bench.add_parser("throughput", help="the Trainer's images/s next to a bare training step, on this device")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--image-size", type=_positive_int, default=28, help="side the network sees (default 28)")
    p.add_argument("--stored-size", type=int, default=0, help="side the shards store (default: image size)")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--augment", default="affine", help="training augmentation policy (default affine)")
    p.add_argument("--steps", type=_positive_int, default=50, help="timed steps per run (default 50)")
    text = "alternating runs of each; medians reported (default 3)"
    p.add_argument("--repeats", type=_positive_int, default=3, help=text)
    p.add_argument("--width", type=int, default=32, help="smallcnn width")
    p.add_argument("--device", default="auto")
    p.add_argument("--linear-probe", action="store_true", help="also time a linear probe, cached vs not")
    p.add_argument("--out", type=output_file(".json"), default=None, help="also write the figures as JSON")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the figures to MLflow")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_bench_throughput)
    p = bench.add_parser("ranking", parents=[common], help="do transferability scores predict fine-tuned accuracy?")
    p.add_argument("--seeds", type=_positive_int, default=2)
    p.add_argument("--candidates", default="", help="a subset of the built-in candidates (default: all)")
    p.add_argument("--out", type=output_dir, default=Path("reports"), help="report directory (default reports/)")
    p.set_defaults(func=cmd_bench_ranking)
    p = bench.add_parser("data", help="ingest and one epoch on an ImageFolder: images/s and peak memory")
    p.add_argument("--images", type=_positive_int, default=40_000, help="JPEGs to generate (default 40,000)")
    p.add_argument("--size", type=_positive_int, default=160, help="their side in px (default 160)")
    p.add_argument("--folder", type=Path, default=None, help="read this ImageFolder instead of generating one")
    p.add_argument("--workers", type=int, default=0, help="ingest processes (default: every CPU)")
    p.add_argument("--width", type=int, default=8, help="smallcnn width of the training epoch (default 8)")
    p.add_argument("--epoch-steps", type=int, default=0, help="cap the epoch (default: one full pass)")
    p.add_argument("--keep", type=output_dir, default=None, help="work in this folder and keep it")
    p.add_argument("--out", type=output_file(".json"), default=None, help="also write the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_bench_data)
    text = "the pipeline on generated targets of the kind a new user brings (colour, inverted, unseen font)"
    p = bench.add_parser("targets", parents=[common], help=text)
    p.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (default 3)")
    p.add_argument("--targets", default="", help="comma-separated subset (default: all)")
    p.add_argument("--methods", default="", help="other methods to score on the same source model (comma-separated)")
    p.add_argument("--out", type=output_dir, default=Path("reports"), help="report directory (default reports/)")
    p.set_defaults(func=cmd_bench_targets)
    add_pipeline_parser(sub, common)
    reg = sub.add_parser("registry", help="the model registry: alias history, promote, rollback")
    reg = reg.add_subparsers(dest="action", required=True, metavar="ACTION")
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
    p.add_argument("--out", type=output_file(), default=None, help="CSV file to write (default: stdout)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively), .zip/.tar archives, s3://bucket/prefix",
    )
    p.set_defaults(func=cmd_predict)
    # no help=: a hidden subcommand (argparse would list help=SUPPRESS as "==SUPPRESS==")
    p = sub.add_parser("remote-stage", description="(inside a Kubeflow Trainer job)")
    p.add_argument("stage", choices=RESUMABLE)
    p.add_argument("--staging", required=True, help="where the Kubeflow task staged params, inputs and outputs")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_remote_stage)
    text = "rank candidate backbones by transferability (LogME, LEEP, NCE, H-score) on the labelled target images"
    p = sub.add_parser("rank", parents=[common], help=text, description=text)
    p.add_argument("--candidates", default="", help="comma-separated name or name@weights (default: rank.candidates)")
    text = "also write the table as JSON to this file (e.g. reports/ranking.json)"
    p.add_argument("--out", type=output_file(".json"), default=None, help=text)
    p.set_defaults(func=cmd_rank)
    text = "write dvc.yaml from the declared stage graph (src/transferops/stages/graph.py)"
    p = sub.add_parser("dvc-yaml", help=text, description=text)
    p.add_argument("--out", type=Path, default=Path("dvc.yaml"), help="where (default dvc.yaml)")
    p.add_argument("--check", action="store_true", help="only check: exit 1 when the file differs")
    p.set_defaults(func=cmd_dvc_yaml, verbose=False)
    text = "run a grid of overrides: DVC's experiment queue, a Kubeflow ParallelFor, or a Katib Experiment"
    p = sub.add_parser("sweep", parents=[common], help=text, description=text)
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2", help="e.g. finetune.lr=1e-3,3e-4")
    p.add_argument("--engine", default="dvc", choices=("dvc", "kfp-local", "kubeflow", "katib"))
    p.add_argument("--jobs", type=_positive_int, default=1, help="DVC queue workers (default 1)")
    p.add_argument("--pipeline-root", type=output_dir, default=Path("artifacts/kfp-local"))
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
