"""``transferops pipeline compile | run-local | submit | schedule | doctor``: what each action does.

The actions' arguments are declared with the rest of the command line (:mod:`transferops.cli`), which imports
this module only when a ``pipeline`` action runs. ``--set`` is applied when the pipeline is compiled, for every
action: ``kfp.*`` keys change node pools, retries, caching and secrets in the compiled YAML, the others change
the parameter defaults baked into it.
Nothing here imports kfp until an action runs; ``doctor`` never does (it asks the Kubernetes API only).
"""

from __future__ import annotations

import argparse


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


def run(args: argparse.Namespace) -> int:
    """Run the ``pipeline`` action ``args.action``."""
    return doctor(args) if args.action == "doctor" else main(args)
