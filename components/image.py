"""The one container image every component runs in; its tag follows the package version.

Build it from the repository root with the Dockerfile (which installs requirements.lock, like `make`):
    docker build -t ghcr.io/transferops/transferops:<version> . && docker push ghcr.io/transferops/transferops:<version>
"""

from transferops import __version__

REGISTRY = "ghcr.io/transferops/transferops"
IMAGE = f"{REGISTRY}:{__version__}"
