"""``transferops predict``: classify image files with a registered model (e.g. ``models:/NAME@champion``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferops.data.sources import read_image_file
from transferops.errors import TrackingError


def _classes(model_uri: str) -> list[str] | None:
    """Class names from the version's tags, for ``models:/NAME@alias`` and ``models:/NAME/VERSION`` URIs."""
    import mlflow

    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/") :]
    client = mlflow.MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, version = ref.split("/", 1)
        mv = client.get_model_version(name, version)
    else:
        return None
    tag = mv.tags.get("transferops.classes")
    return tag.split(",") if tag else None


def predict_files(model_uri: str, files: list[Path]) -> list[tuple[str, str, float]]:
    """(file, class, confidence) per image; the image geometry comes from the model's signature."""
    import mlflow
    import mlflow.pytorch
    import torch

    try:
        info = mlflow.models.get_model_info(model_uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:
        raise TrackingError(f"{model_uri}: cannot load the model ({str(exc).splitlines()[0][:200]})") from None
    shape = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
    channels, size = int(shape[1]), int(shape[2])
    images = np.stack([read_image_file(Path(f), size, channels, str(f)) for f in files]).astype(np.float32) / 255
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    classes = _classes(model_uri)
    out = []
    for f, p in zip(files, probs, strict=True):
        i = int(p.argmax())
        out.append((str(f), classes[i] if classes else str(i), float(p[i])))
    return out
