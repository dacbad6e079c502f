"""Names the deployment files must agree with, read from docs/contract.md rather than copied into the tests.

If a setting, route or metric is renamed in the contract, the manifests that still use the old name fail here.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "contract.md"


def _section(number: int) -> str:
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(rf"^## {number}\..*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        raise LookupError(f"docs/contract.md has no section {number}")
    return match.group(0)


@cache
def setting_names() -> frozenset[str]:
    """Every EMBED_* variable in the settings table (§2)."""
    return frozenset(re.findall(r"`(EMBED_[A-Z0-9_]+)`", _section(2)))


@cache
def setting_default(name: str) -> str:
    """The bracketed default of one setting, e.g. `EMBED_GRACEFUL_TIMEOUT_S` -> "20"."""
    match = re.search(rf"`{name}` \[`?([^`\]]*)`?\]", _section(2))
    if match is None:
        raise LookupError(f"no default for {name} in docs/contract.md")
    return match.group(1)


@cache
def get_routes() -> frozenset[str]:
    """Paths of the GET routes in the HTTP surface (§3), e.g. /health, /ready, /metrics."""
    return frozenset(re.findall(r"`GET (/[A-Za-z0-9_/]*)", _section(3)))


@cache
def metric_names() -> frozenset[str]:
    """Prometheus metric families (§3), without label sets."""
    metrics_part = _section(3).split("Prometheus metrics", 1)[1]
    return frozenset(re.findall(r"`(embed_[a-z_]+)", metrics_part))


def metric_family(series: str) -> str:
    """`embed_batch_size_bucket` -> `embed_batch_size`: the family a PromQL series name belongs to."""
    return re.sub(r"_(bucket|sum|count|created)$", "", series)
