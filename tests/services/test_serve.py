"""Serving a registered version: ``mlflow models serve`` by alias on loopback, and ``transferops predict`` by alias
with both runtimes, reading its images from an S3 prefix."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.services import free_port
from tests.unit.helpers import brightness_images, brightness_model

pytestmark = pytest.mark.services

NAME = "serve-tiny"
CLASSES = ["dark", "mid", "bright"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A sqlite store holding NAME@champion logged like the register stage does, with its ONNX export beside it.

    Returns (tracking URI, model, ONNX export record).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    from transferops.serving.onnx_export import log_onnx
    from transferops.stages.register import pip_requirements

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("serve", artifact_location=(root / "mlruns").as_uri())
    model = brightness_model()
    images, _ = brightness_images(30, seed=1)
    example = images[:4].astype(np.float32) / 255
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(
            model, name="model", signature=signature, input_example=example, pip_requirements=pip_requirements()
        )
        exported = log_onnx(model, 1, 12, images, classes=CLASSES)
    mv = mlflow.register_model(info.model_uri, NAME, tags={"transferops.classes": ",".join(CLASSES), **exported.tags})
    client.set_registered_model_alias(NAME, "champion", mv.version)
    yield uri, model, exported
    mlflow.set_tracking_uri(previous)


def test_onnx_export_is_found_from_the_alias(registry):
    import mlflow
    import mlflow.onnx

    from transferops.serving.onnx_export import OPSET
    from transferops.serving.predict import find_onnx
    from transferops.serving.runtime import ONNX_URI_TAG

    _, _, exported = registry
    assert exported.agrees() and exported.n_images == 30 and exported.max_abs_diff < 1e-4
    mv = mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion")
    assert mv.tags[ONNX_URI_TAG] == exported.model_uri == find_onnx(f"models:/{NAME}@champion")
    assert find_onnx(f"models:/{NAME}/{mv.version}") == exported.model_uri
    proto = mlflow.onnx.load_model(exported.model_uri)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert exported.model_uri.startswith("models:/m-")


def test_unknown_models_and_missing_exports_fail_with_one_line_naming_them(registry):
    import mlflow

    from transferops.errors import TrackingError
    from transferops.serving.predict import find_onnx, load_classifier
    from transferops.serving.runtime import ONNX_URI_TAG

    for runtime in ("torch", "onnx"):
        with pytest.raises(TrackingError, match=r"^models:/no-such-model@champion: ") as err:
            load_classifier("models:/no-such-model@champion", runtime)
        assert "\n" not in str(err.value)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(NAME, "champion").version
    client.delete_model_version_tag(NAME, version, ONNX_URI_TAG)
    try:
        with pytest.raises(TrackingError, match=f"version {version} has no ONNX export"):
            find_onnx(f"models:/{NAME}@champion")
    finally:
        client.set_model_version_tag(NAME, version, ONNX_URI_TAG, registry[2].model_uri)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"mlflow models serve not ready: {log.read_text()[-3000:]}")


def test_mlflow_models_serve_by_alias_returns_the_local_logits(registry, tmp_path, record_property):
    uri, model, _ = registry
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": bindir + os.pathsep + os.environ["PATH"]}  # uvicorn
    port = free_port()
    cmd = [f"{bindir}/mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "-p", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the uvicorn child is stopped with it
        )
    try:
        url = f"http://127.0.0.1:{port}"
        startup = _wait_ready(url, proc, log)
        images, labels = brightness_images(9, seed=5)
        batch = images.astype(np.float32) / 255
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": batch.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as r:
            served = np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
        latency = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with torch.no_grad():
        local = model(torch.from_numpy(batch)).numpy()
    assert served.shape == (9, 3)
    np.testing.assert_array_equal(served.argmax(1), local.argmax(1))
    np.testing.assert_array_equal(served.argmax(1), labels)  # and they are right
    np.testing.assert_allclose(served, local, atol=1e-4)
    record_property("serve_startup_s", round(startup, 2))
    record_property("invocation_s", round(latency, 3))
    print(f"\nmlflow models serve: /ping after {startup:.1f} s; 9-image /invocations in {1000 * latency:.0f} ms")


def test_predict_by_alias_reads_s3_and_both_runtimes_agree(registry, s3, tmp_path):
    uri, _, _ = registry
    _, s3_client = s3
    s3_client.create_bucket(Bucket="predict-inputs")
    images, labels = brightness_images(6, size=16, seed=7)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[0], mode="L").save(buf, format="PNG")
        s3_client.put_object(Bucket="predict-inputs", Key=f"incoming/day1/img{i}.png", Body=buf.getvalue())
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}  # no params.yaml here: the tracking URI comes from the env
    out = {}
    for runtime in ("torch", "onnx"):
        r = subprocess.run(
            [sys.executable, "-m", "transferops.cli", "predict", "--model", f"models:/{NAME}@champion"]
            + ["--runtime", runtime, "s3://predict-inputs/incoming"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        out[runtime] = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["file"] for row in out["onnx"]] == [f"s3://predict-inputs/incoming/day1/img{i}.png" for i in range(6)]
    assert [row["predicted"] for row in out["torch"]] == [CLASSES[y] for y in labels]  # class names from the tag
    assert [row["predicted"] for row in out["onnx"]] == [row["predicted"] for row in out["torch"]]
    np.testing.assert_allclose(
        [float(row["confidence"]) for row in out["onnx"]], [float(row["confidence"]) for row in out["torch"]], atol=2e-6
    )
