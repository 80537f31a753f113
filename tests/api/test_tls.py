"""HTTPS (``--tls-cert/--tls-key``): the SDK's own bearer-token policy works unchanged."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.mgmt.compute import ComputeManagementClient

from tests.api.live import SUB, TOKEN, live_server


class Credential:
    """Any TokenCredential; the server checks the token it hands out."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(TOKEN, int(time.time()) + 3600)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_sdk_with_its_default_auth_policy_over_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with live_server(tmp_path, tls_cert=cert, tls_key=key) as server:
        assert server.url.startswith("https://")
        server.publish("1.0.0")
        with ComputeManagementClient(
            Credential(), SUB, base_url=server.url, connection_verify=str(cert)
        ) as client:  # closed first: a TLS close from the server side is not awaited
            versions = client.virtual_machine_images.list("westeurope", "Canonical",
                                                      "UbuntuServer", "18.04-LTS")  # fmt: skip
            assert [v.name for v in versions] == ["1.0.0"]
