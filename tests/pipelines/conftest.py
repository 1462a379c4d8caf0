"""Fixtures for the Kubeflow adapters: the real ``kubernetes`` client against a fake API server."""

import pytest

from tests.kube_fake import KubeServer


@pytest.fixture
def kube():
    """``(api_client, requests, fake)``: a ``kubernetes.client.ApiClient`` whose host is the fake server, the
    server's request log (``(method, path, body)``, appended as requests arrive) and the scenario handle."""
    client = pytest.importorskip("kubernetes.client")
    with KubeServer() as server:
        api_client = client.ApiClient(client.Configuration(host=server.url))
        try:
            yield api_client, server.fake.requests, server.fake
        finally:
            api_client.close()
