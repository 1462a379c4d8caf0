# The image every Kubeflow component runs in (components/image.py names its tag).
# It installs exactly what `make` installs: requirements.lock, then the package without dependencies.
# The torch wheels in the lock carry their CUDA runtime (nvidia-* packages); the node supplies the driver.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# fonts for the synthetic source domain, git for lineage (git sha)
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core fonts-dejavu-extra git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/transferops
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md params.yaml ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
 && useradd --create-home --uid 1000 transferops \
 && mkdir -p /workspace && chown transferops /workspace

USER transferops
WORKDIR /workspace
ENTRYPOINT ["transferops"]
CMD ["--help"]
