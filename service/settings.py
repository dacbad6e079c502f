"""Every knob of the server, read once from `EMBED_*` environment variables (docs/contract.md §2).

One flat pydantic-settings root: the names map one-to-one onto the contract's env table, so an operator can grep
for a variable and land here. `create_app(settings)` takes an instance; tests build their own `Settings(...)`
instead of mutating the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Per-model options an EMBED_MODELS entry may carry after `;` (anything else is a start-up error).
MODEL_OPTIONS = ("max_queue_size", "max_batch_tokens", "max_batch_size")


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its artifact directory, the name clients select it by (None: the manifest's model
    name), and limits of its own where they differ from the server-wide EMBED_* ones."""

    artifact_dir: Path
    name: str | None = None
    max_queue_size: int | None = None
    max_batch_tokens: int | None = None
    max_batch_size: int | None = None


def parse_model_specs(value: str) -> list[ModelSpec]:
    """`EMBED_MODELS`: comma-separated entries `[name=]artifact_dir[;option=value...]`, the first the default.

    e.g. `minilm=artifacts/all-MiniLM-L6-v2,rerank=artifacts/ms-marco;max_queue_size=256`.
    """
    specs: list[ModelSpec] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        head, *options = (part.strip() for part in entry.split(";"))
        name, sep, directory = head.partition("=")
        if not sep:
            name, directory = "", head
        if not directory.strip():
            raise ValueError(f"EMBED_MODELS entry {entry!r} has no artifact directory")
        limits: dict[str, int] = {}
        for option in options:
            key, _, raw = option.partition("=")
            if key.strip() not in MODEL_OPTIONS:
                raise ValueError(f"EMBED_MODELS entry {entry!r}: unknown option {key.strip()!r} "
                                 f"(known: {', '.join(MODEL_OPTIONS)})")
            try:
                number = int(raw)
            except ValueError:
                raise ValueError(f"EMBED_MODELS entry {entry!r}: {key.strip()} must be an integer") from None
            if number < 1:
                raise ValueError(f"EMBED_MODELS entry {entry!r}: {key.strip()} must be >= 1")
            limits[key.strip()] = number
        specs.append(ModelSpec(Path(directory.strip()), name.strip() or None, **limits))
    if not specs:
        raise ValueError("EMBED_MODELS is set but names no model")
    return specs


class Settings(BaseSettings):
    """Server configuration. Defaults are the contract's; invalid values fail at start-up, not at first request."""

    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore", frozen=True)

    artifact_dir: Path = Path("artifacts/all-MiniLM-L6-v2")
    served_model_name: str | None = None
    # Several models in one process (EMBED_MODELS, see parse_model_specs); when set, artifact_dir and
    # served_model_name are not used. The first model is the default of routes that name none.
    models: Annotated[list[ModelSpec], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)

    # fp32: the exact graph, fastest on the 2-core Zen 5 CPU measured (docs/performance.md); fp32-fused: the same
    # with onnxruntime's transformer fusions baked in; int8: opt-in, CPU; fp16: CUDA only.
    graph_variant: Literal["fp32", "fp32-fused", "int8", "fp16"] = "fp32"
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    require_gpu: bool = False
    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    intra_op_spinning: bool = True
    # Keep spinning after a forward pass returns (onnxruntime's default) instead of stopping at once.
    intra_op_spin_after_run: bool = False
    # Round each batch's padded width up to a multiple of this (1 = off). onnxruntime keeps per-shape state, so
    # fewer distinct shapes keep RSS flat over a long run; padding is masked, so results do not change.
    pad_to_multiple: int = Field(8, ge=1)
    ort_mem_pattern: bool = False  # onnxruntime's memory-pattern planner; off because it caches a plan per shape
    # The attention-map graph: "lazy" builds it on the first attention request (saves ~145 MB of RSS for servers
    # that only embed), "eager" builds and warms it before /ready, "off" never (attention requests get 422).
    attention_graph: Literal["lazy", "eager", "off"] = "lazy"
    # The explain graph (/v1/explain's walk-through): built on the first explain request when lazy, before /ready
    # when eager, never when off (explain requests get 422 explain_unavailable).
    explain_graph: Literal["lazy", "eager", "off"] = "lazy"
    # The most tokens (special tokens included) /v1/explain and /v1/similarity/explain take per input: an
    # explanation returns L×H×T×T values several times over, so it has its own limit (422 explain_budget_exceeded).
    explain_max_tokens: int = Field(128, ge=2)

    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(2048, ge=1)
    batch_padding_slack_tokens: int = Field(16, ge=0)
    max_wait_ms: float = Field(2.0, ge=0)
    # Skip the wait window while recent batches held about one row (a lone client gains ~2 ms per request); it
    # comes back as soon as batches of several rows form. False: always wait up to max_wait_ms.
    batch_window_adaptive: bool = True
    max_queue_size: int = Field(2048, ge=1)
    queue_timeout_s: float = Field(10.0, gt=0)
    # Deadline-aware admission: admit a request only if the queued work plus its own can start within this share
    # of queue_timeout_s at the throughput measured now (else 429 + Retry-After); 0 counts queue slots only.
    admission_deadline_share: float = Field(0.5, ge=0, le=1)
    # Requests of one input or at most this many tokens run in a small lane ahead of queued big work (0: off).
    small_request_tokens: int = Field(128, ge=0)

    # What an over-long input does when the request leaves `truncate` out (or null): cut to the model's window
    # and report it (true, TEI 1.9's default), or 422 (false). A request's own `truncate` always wins.
    auto_truncate: bool = True

    max_body_bytes: int = Field(2_000_000, ge=1)
    max_inputs_per_request: int = Field(256, ge=1)
    max_chars_per_input: int = Field(100_000, ge=1)
    max_tokens_per_request: int = Field(65536, ge=1)
    attention_budget: int = Field(4_000_000, ge=0)
    # Rerank: documents one request may carry (each is one query-document pair in the batcher).
    max_documents_per_request: int = Field(1000, ge=1)
    # Sparse models: the most vocabulary weights returned per text (the largest first; zeros are never sent).
    sparse_top_k: int = Field(1024, ge=1)

    api_key: SecretStr | None = None
    public_probes: bool = True  # /health, /ready and /metrics answer without the API key
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Slow-client guards (uvicorn has none): request line + headers, then the whole body, must arrive in time.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(10.0, gt=0)
    # Memory bounded per connection: the request line and the header block are cut at these sizes (414 / 431,
    # then the connection is closed), and at most `max_connections` are open at once (past it: 503 + Retry-After).
    # The cap sits above the door's queue so that a burst meets the door's 429 first.
    max_request_line_bytes: int = Field(8192, ge=256)
    max_header_bytes: int = Field(32768, ge=1024)
    max_connections: int = Field(4096, ge=1)
    # uvicorn's HTTP/1.1 parser: httptools (llhttp, fastest; the load-shedding door and the header deadline live in
    # its protocol), h11 (pure Python; the door runs inside the app, no header deadline), or auto (httptools when
    # installed). Both enforce the size limits and the connection cap above.
    http_parser: Literal["auto", "httptools", "h11"] = "auto"

    graceful_timeout_s: float = Field(20.0, ge=0)
    # After SIGTERM, keep serving (with /ready 503) this long before closing the listener, so load balancers
    # see the 503 and stop routing here first (the built-in form of a Kubernetes preStop sleep).
    drain_delay_s: float = Field(0.0, ge=0)
    watchdog_timeout_s: float = Field(30.0, gt=0)
    # This many batches in a row failing on every row -> /ready 503 until a 1-token probe forward pass works.
    failure_threshold: int = Field(5, ge=1)

    # Test-only fault injection (off by default): an input containing a marker makes the runner fail or hang.
    fault_injection: bool = False
    fault_duration_s: float = Field(60.0, ge=0)  # how long a "hang" sleeps and a "break" keeps failing
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept the env form `a,b` as well as a list, so `EMBED_CORS_ORIGINS=https://x,https://y` works."""
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_model_specs(value) if value.strip() else []
        return value

    @model_validator(mode="after")
    def _unique_model_names(self) -> Settings:
        names = [spec.name for spec in self.models if spec.name is not None]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"EMBED_MODELS names {', '.join(duplicates)} more than once")
        return self

    def model_specs(self) -> list[ModelSpec]:
        """What to serve: EMBED_MODELS, else the one EMBED_ARTIFACT_DIR (named EMBED_SERVED_MODEL_NAME)."""
        return list(self.models) or [ModelSpec(self.artifact_dir, self.served_model_name)]

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        """`EMBED_API_KEY=` (empty) means open, not "the empty string is the key"."""
        return None if value == "" else value
