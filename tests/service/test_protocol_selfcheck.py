"""The httptools protocol rests on uvicorn internals: a missing hook must stop the server loudly, and a missing
httptools must fall back to (our bounded) h11 with the door inside the app; EMBED_HTTP_PARSER picks either."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.http_limits import BoundedConnection, ConnectionLimits
from service.protocol import HTTPTOOLS_IMPL, ProtocolCheckError, http_protocol, missing_hooks
from tests.conftest import REPO
from tests.server_process import ServerProcess


def test_the_pinned_uvicorn_has_every_hook() -> None:
    impl = importlib.import_module(HTTPTOOLS_IMPL)
    assert missing_hooks(impl.HttpToolsProtocol, impl.RequestResponseCycle) == []
    protocol = http_protocol(10.0, door=None)
    assert issubclass(protocol, impl.HttpToolsProtocol)


def _impl_without(hook: str) -> types.ModuleType:
    real = importlib.import_module(HTTPTOOLS_IMPL)
    namespace = {k: v for k, v in vars(real.HttpToolsProtocol).items() if k != hook}
    stripped = type("HttpToolsProtocol", (), namespace)  # the same class, minus one method, no base to inherit it
    return types.SimpleNamespace(HttpToolsProtocol=stripped, RequestResponseCycle=real.RequestResponseCycle)  # type: ignore[return-value]


def test_a_uvicorn_without_a_hook_stops_the_server_with_its_name() -> None:
    with pytest.raises(ProtocolCheckError, match=r"lacks HttpToolsProtocol\._start_asgi_task.*pinned uvicorn"):
        http_protocol(10.0, door=None, impl=_impl_without("_start_asgi_task"))


def test_without_httptools_the_server_runs_on_h11(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, HTTPTOOLS_IMPL, None)  # import now raises ImportError
    with caplog.at_level(logging.WARNING, logger="service.protocol"):
        protocol = http_protocol(10.0, door=None)
    assert issubclass(protocol, H11Protocol)
    assert issubclass(protocol, BoundedConnection)  # the size limits and the connection cap hold on h11 too
    assert "h11" in caplog.text
    assert "door runs inside the app" in caplog.text


def test_the_parser_setting_picks_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    impl = importlib.import_module(HTTPTOOLS_IMPL)
    assert issubclass(http_protocol(10.0, door=None, parser="h11"), H11Protocol)
    assert issubclass(http_protocol(10.0, door=None, parser="httptools"), impl.HttpToolsProtocol)
    limits = ConnectionLimits(300, 2000, 7)
    assert http_protocol(10.0, door=None, parser="h11", limits=limits).limits == limits
    assert http_protocol(10.0, door=None, limits=limits).limits == limits
    monkeypatch.setitem(sys.modules, HTTPTOOLS_IMPL, None)
    with pytest.raises(ProtocolCheckError, match="EMBED_HTTP_PARSER=httptools, but httptools is not installed"):
        http_protocol(10.0, door=None, parser="httptools")


def test_a_uvicorn_whose_h11_protocol_lacks_a_hook_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(H11Protocol, "send_400_response")
    with pytest.raises(ProtocolCheckError, match=r"lacks H11Protocol\.send_400_response"):
        http_protocol(10.0, door=None, parser="h11")


def test_a_server_without_httptools_still_serves(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    # A sitecustomize that hides httptools, as if it were not installed.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['httptools'] = None\n")
    env = {"PYTHONPATH": f"{hide}:{REPO}", "EMBED_INTRA_OP_THREADS": "1"}
    server = ServerProcess(tiny_artifact_dir, tmp_path / "server.log", **env).wait_ready()
    try:
        reply = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "hello"}, timeout=30)
        assert reply.status_code == 200
    finally:
        server.stop_and_check()
    log = (tmp_path / "server.log").read_text()
    assert "httptools is not installed: serving with h11" in log


def test_the_command_line_exits_2_when_a_hook_is_missing(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import uvicorn.protocols.http.httptools_impl as m\n"
        "del m.HttpToolsProtocol.on_headers_complete\n"
    )
    done = subprocess.run([sys.executable, "-m", "service"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{patch}:{REPO}",
                               "EMBED_ARTIFACT_DIR": str(tiny_artifact_dir), "EMBED_PORT": "0"})
    assert done.returncode == 2
    assert "lacks HttpToolsProtocol.on_headers_complete" in done.stdout + done.stderr
