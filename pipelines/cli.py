"""``transferops pipeline compile | run-local | submit | schedule | doctor``: the Kubeflow adapter's command line.

It lives beside the DAG it drives; the ``transferops`` command line adds it when it runs from a checkout.
``--set`` is applied when the pipeline is compiled, for every action: ``kfp.*`` keys change node pools,
retries, caching and secrets in the compiled YAML, the others change the parameter defaults baked into it.
Nothing here imports kfp until an action runs; ``doctor`` never does (it asks the Kubernetes API only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferops.cli import output_file

ACTIONS = {
    "compile": "write the IR YAML (default pipelines/transfer_pipeline.yaml)",
    "run-local": "run the DAG with kfp.local in this environment, then print its summary",
    "submit": "compile and start a run on a KFP server (kfp.Client)",
    "schedule": "compile and create a recurring run on a KFP server",
}


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """Add ``pipeline`` and its actions to the ``transferops`` subcommands."""
    pipe = sub.add_parser("pipeline", help="the Kubeflow Pipelines DAG: compile, run-local, submit, schedule")
    actions = pipe.add_subparsers(dest="action", required=True)
    for action, text in ACTIONS.items():
        p = actions.add_parser(action, parents=[common], help=text, description=text)
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
        p.set_defaults(func=main)
    text = "check the cluster: CRDs and versions, the service account's permissions, the secrets"
    p = actions.add_parser("doctor", parents=[common], help=text, description=text)
    p.add_argument(
        "--service-account",
        default="",
        help="check as this service account of kfp.namespace (impersonated), e.g. transferops",
    )
    p.add_argument(
        "--without",
        nargs="+",
        default=[],
        choices=("trainer", "katib"),
        help="skip what this cluster does not use: trainer (no kfp.distributed), katib (no Katib sweeps)",
    )
    p.set_defaults(func=doctor)


def doctor(args: argparse.Namespace) -> int:
    """Print :func:`transferops.kubeflow.doctor.diagnose`'s report; exit 1 when something is missing."""
    from transferops.kubeflow.doctor import diagnose, report
    from transferops.kubeflow.settings import load_kfp_config

    kfp = load_kfp_config(args.params, list(args.set))
    account = args.service_account
    if account and ":" not in account:
        account = f"system:serviceaccount:{kfp.namespace}:{account}"
    checks = diagnose(kfp, service_account=account, without=tuple(args.without))
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1


def main(args: argparse.Namespace) -> int:
    from pipelines import transfer_pipeline as p

    overrides = list(args.set)
    p.resolve(args.params, overrides)  # validate first: a bad params file or --set fails with one line
    if args.action == "compile":
        print(p.compile_pipeline(args.params, args.out or p.DEFAULT_OUT, overrides))
    elif args.action == "run-local":
        p.run_local(args.params, args.pipeline_root, cache=args.cache, overrides=overrides)
        print(p.local_summary(args.params, args.pipeline_root, overrides))
    elif args.action == "submit":
        run = p.submit(args.host, args.params, experiment=args.experiment, overrides=overrides)
        print(f"submitted run {run.run_id}")
    elif args.action == "schedule":
        job = p.schedule(args.host, args.params, args.cron, args.experiment, overrides=overrides)
        print(f"scheduled recurring run {getattr(job, 'recurring_run_id', job)}")
    return 0
