# The image every Kubeflow component (and Trainer job) runs in; components/image.py names its tag.
# It installs exactly what `make` installs: requirements.lock, then the package without dependencies.
# The torch wheels in the lock carry their CUDA runtime (nvidia-* packages); the node supplies the driver.
# Build from the repository root, passing the commit so lineage records it (the image has no .git):
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) -t ghcr.io/transferops/transferops:<version> .
FROM python:3.11-slim

ARG GIT_SHA=unknown
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib TRANSFEROPS_GIT_SHA=${GIT_SHA}

WORKDIR /opt/transferops
COPY requirements.lock ./
RUN pip install -r requirements.lock

# the synthetic source renders from the fonts inside matplotlib's wheel (pinned above): no system fonts needed
COPY pyproject.toml README.md params.yaml ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
 && useradd --create-home --uid 1000 transferops \
 && mkdir -p /workspace /var/log/katib && chown transferops /workspace /var/log/katib

USER transferops
WORKDIR /workspace
ENTRYPOINT ["transferops"]
CMD ["--help"]
