"""``turnbench conform``'s command line: targets, the case list, ids it does not know, ``--spec``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from loadtests.cli.main import main
from loadtests.commands.conform import list_cases, parse_targets
from loadtests.conform.cases import CASES
from loadtests.conform.spec import derived_document


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_targets_are_name_equals_url_repeated_or_comma_listed() -> None:
    got = parse_targets(["https=https://h:1/v1,ws=wss://h:1/v1", "grpc=h:2"])
    assert got == {"https": "https://h:1/v1", "ws": "wss://h:1/v1", "grpc": "h:2"}
    assert parse_targets(None) == {}
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_targets(["https"])
    with pytest.raises(ValueError, match="conform checks https and ws"):
        parse_targets(["inproc=x"])


def test_list_names_every_case_with_its_transport_and_whether_it_is_required(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["conform", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == list_cases()
    for c in CASES:
        line = next(line for line in out.splitlines() if line.startswith(c.id + " "))
        assert (c.transport in line and ("required" in line) == c.required) or "optional" in line


def test_an_unknown_case_id_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "--only", "no-such-case", "--target", "https=http://127.0.0.1:9/v1"]) == 2
    assert "no such case: no-such-case" in capsys.readouterr().err


def test_a_target_url_that_is_not_http_or_ws_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "--target", "https=ftp://127.0.0.1:9/v1"]) == 2
    assert "expected an http(s):// or ws(s):// URL" in capsys.readouterr().err


def test_a_spec_file_that_is_not_an_openapi_document_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "spec.json").write_text('{"info": {}}', encoding="utf-8")
    assert main(["conform", "--spec", str(tmp_path / "spec.json"), "--target", "https=http://127.0.0.1:9/v1"]) == 2
    assert "not an OpenAPI document (no components/schemas)" in capsys.readouterr().err


def test_a_spec_file_replaces_the_derived_schemas_in_the_run_and_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {**derived_document(), "info": {"title": "Open Responses", "version": "2099-01-01"}}
    (tmp_path / "spec.json").write_text(json.dumps(doc), encoding="utf-8")
    args = ["conform", "--spec", str(tmp_path / "spec.json"), "--only", "basic-response", "--timeout", "5"]
    rc = main([*args, "--target", f"https=http://127.0.0.1:{free_port()}/v1", "--json", str(tmp_path / "r.json")])
    assert rc == 1  # nothing listens there: the case fails, the run still reports
    record = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert record["spec"] == {
        "title": "Open Responses",
        "version": "2099-01-01",
        "schemas": str(tmp_path / "spec.json"),
    }
    assert f"Open Responses 2099-01-01 (schemas: {tmp_path / 'spec.json'})" in capsys.readouterr().out
