"""The SDK example of docs/API.md runs as written against a live server."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from engine.api.auth import Token
from tests.api.live import API, live_server

ROOT = Path(__file__).resolve().parents[2]


def test_the_sdk_example_in_the_api_docs_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "API.md").read_text()
    code = text.split("```python", 1)[1].split("```", 1)[0]
    # a real clock 1000 times faster: the example's poller sees the upgrade through
    tokens = (Token("local-dev-token"),)
    with live_server(tmp_path, clock="real", speed=1000, tokens=tokens) as server:
        server.http.headers["Authorization"] = "Bearer local-dev-token"
        server.publish("1.0.0")
        body = {
            "location": "westeurope",
            "sku": {"capacity": 2},
            "properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {
                "publisher": "Canonical", "offer": "UbuntuServer", "sku": "18.04-LTS"}}}},
        }  # fmt: skip
        path = (
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
            "/providers/Microsoft.Compute/virtualMachineScaleSets/web"
        )
        assert server.http.put(path, params={"api-version": API}, json=body).status_code == 201
        server.publish("1.1.0", bootSeconds=5)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(code.replace("http://127.0.0.1:8080", server.url), {})
    printed = [line for line in output.getvalue().splitlines() if not line.startswith("20")]
    # (log lines start with the date; the SDK's enums print as e.g. UpgradeState.COMPLETED)
    assert len(printed) == 2, printed
    assert printed[0].upper().endswith("COMPLETED 2")
    assert "COMPLETED" in printed[1].upper() and printed[1].upper().endswith("USER")
