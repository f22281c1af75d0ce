"""Starting a third-party gateway: what is refused, and a gateway that never gets healthy is stopped."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import psutil
import pytest

from loadtests.execution import gateways
from loadtests.execution.gateways import GATEWAYS, Gateway, gateway_missing, start_gateway
from loadtests.execution.procs import ServerError, target_endpoint


def test_a_missing_package_is_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GATEWAYS, "nope", Gateway("nope", "nope-gw", "turnbench_no_such_module", "1.0"))
    why = gateway_missing("nope")
    assert why is not None and "nope-gw" in why and "[gateways]" in why
    with pytest.raises(ServerError, match="nope-gw"):
        start_gateway(target_endpoint("https", "http://127.0.0.1:9/v1", ca_path=None, api_key=None),
                      workdir=Path("/nonexistent"), name="nope")  # fmt: skip


def test_a_tls_upstream_is_refused(tmp_path: Path) -> None:
    if gateway_missing() is not None:
        pytest.skip(gateway_missing() or "")
    up = target_endpoint("https", "https://127.0.0.1:9/v1", ca_path=str(tmp_path / "ca.pem"), api_key=None)
    with pytest.raises(ServerError, match="plain TCP"):
        start_gateway(up, workdir=tmp_path)


def test_a_gateway_whose_upstream_never_answers_is_stopped(tmp_path: Path) -> None:
    """The gateway waits for its upstream's /health; none answers on port 9: an error with its log, no process
    left behind."""
    if importlib.util.find_spec("agentic_api") is None:
        if os.environ.get("CI"):
            pytest.fail("agentic-api is not installed: .ci/run installs the [gateways] extra")
        pytest.skip("agentic-api is not installed")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    up = target_endpoint("https", "http://127.0.0.1:9/v1", ca_path=None, api_key=None)
    with pytest.raises(ServerError, match="was not healthy"):
        start_gateway(up, workdir=tmp_path, timeout_s=3.0)
    left = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()} - before
    assert not [p for p in left if psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert (tmp_path / "gateway-agentic-api.log").is_file()
    assert gateways.GATEWAYS["agentic-api"].version == "0.9.0"
