"""submit/schedule against a local HTTP server standing in for the KFP v2beta1 API (no cluster runs here)."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO

pytest.importorskip("kfp")


class FakeKfp(BaseHTTPRequestHandler):
    requests: list = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}") if n else {}
        self.requests.append((self.command, self.path, body))
        return body

    def do_GET(self):  # noqa: N802
        self._record()
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})
        else:
            self._reply({})

    def do_POST(self):  # noqa: N802
        body = self._record()
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/recurringruns"):
            self._reply({"recurring_run_id": "rr-1", **body})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({"run_id": "run-1", "experiment_id": "exp-1", **body})
        else:
            self._reply({})

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_server():
    FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", FakeKfp.requests
    server.shutdown()


def _posts(requests, prefix):
    return [body for method, path, body in requests if method == "POST" and path.startswith(prefix)]


def test_submit_sends_the_pipeline_spec_and_parameters(kfp_server, tmp_path):
    from transferops.cli import main

    host, requests = kfp_server
    params = REPO / "params.yaml"
    assert main(["pipeline", "submit", "--host", host, "--params", str(params), "--set", "finetune.epochs=2"]) == 0
    (run,) = _posts(requests, "/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1"
    spec = run["pipeline_spec"]["pipeline_spec"]  # with kfp-kubernetes settings: pipeline + platform spec
    assert spec["pipelineInfo"]["name"] == "transferops-transfer"
    assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]
    # the stages before the gate, then one condition holding the training stages
    tasks = spec["root"]["dag"]["tasks"]
    assert {t for t in tasks if not t.startswith("condition")} == {"ingest", "rank", "schedule"}
    assert len(tasks) == 4 and tasks["condition-1"]["taskInfo"]["name"] == "retrain"
    # --set is compiled in (the run uses the pipeline's defaults), not passed as a run-time override
    assert run["runtime_config"]["parameters"] == {}
    params = json.loads(spec["root"]["inputDefinitions"]["parameters"]["params_json"]["defaultValue"])
    assert params["finetune"]["epochs"] == 2


def test_schedule_sends_a_six_field_cron_with_concurrency_one_and_no_catchup(kfp_server):
    from transferops.cli import main

    host, requests = kfp_server
    assert main(["pipeline", "schedule", "--host", host, "--params", str(REPO / "params.yaml")]) == 0
    (rr,) = _posts(requests, "/apis/v2beta1/recurringruns")
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(rr["max_concurrency"]) == 1
    assert rr["no_catchup"] is True
    assert rr["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "transferops-transfer"
    assert rr["mode"] == "ENABLE"
    custom = ["pipeline", "schedule", "--host", host, "--params", str(REPO / "params.yaml"), "--cron", "0 30 2 * * 1"]
    assert main(custom) == 0
    assert _posts(requests, "/apis/v2beta1/recurringruns")[-1]["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1"


class RefusingKfp(FakeKfp):
    """Answers the health check, then refuses every write as an API without the caller's permissions would."""

    def do_POST(self):  # noqa: N802
        self._record()
        self.send_response(403, "Forbidden")
        self.send_header("Content-Length", "0")
        self.end_headers()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("action", ["submit", "schedule"])
def test_an_unreachable_kfp_api_is_one_line_naming_the_host(action, capsys, caplog):
    from transferops.cli import main

    host = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["pipeline", action, "--host", host, "--params", str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"pipeline {action}: cannot reach the KFP API at {host}" in err and "refused" in err.lower()
    # urllib3's warning per retry of the health check is held back: the error line says it once
    assert not [r for r in caplog.records if r.name.startswith("urllib3") and r.levelno >= logging.WARNING]


def test_a_kfp_api_that_refuses_the_run_is_one_line_with_the_status(capsys):
    from transferops.cli import main

    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_port}"
    try:
        assert main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml")]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip()
    expected = f"error: pipeline submit: the KFP API at {host} refused the request: HTTP 403 Forbidden"
    assert err.splitlines() == [expected]


def test_a_kubeflow_sweep_to_an_unreachable_kfp_api_is_one_line(capsys):
    from transferops.cli import main

    host = f"http://127.0.0.1:{_free_port()}"
    argv = ["sweep", "--grid", "finetune.lr=0.001,0.01", "--engine", "kubeflow", "--host", host]
    assert main([*argv, "--params", str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: sweep submit: cannot reach the KFP API at {host}")
