"""Run the repository's own nginx config outside Docker, for `nginx -t` and the scale-out test.

Only two things change: the included upstream_servers.conf gets 127.0.0.1 addresses (same per-server
parameters, minus `resolve`, which needs nginx >= 1.27.3 and means nothing for literal IPs), and the one
`listen` line gets a free loopback port. Everything else in deploy/nginx/nginx.conf is used verbatim.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.deploy.contract_names import REPO

NGINX_DIR = REPO / "deploy" / "nginx"
_SERVER_LINE = re.compile(r"^(\s*server\s+)(\S+)(.*?);", flags=re.MULTILINE)


def upstream_parameters() -> str:
    """Per-server parameters of the repository's upstream line (e.g. `max_fails=2 fail_timeout=10s`)."""
    lines = _SERVER_LINE.findall((NGINX_DIR / "upstream_servers.conf").read_text())
    if len(lines) != 1:
        raise ValueError(f"expected one server line in upstream_servers.conf, found {len(lines)}")
    params = [p for p in lines[0][2].split() if p != "resolve"]
    return " ".join(params)


def render(directory: Path, *, listen_port: int, upstream_ports: list[int]) -> Path:
    """Write nginx.conf + a loopback upstream_servers.conf into directory; return the nginx.conf path."""
    directory.mkdir(parents=True, exist_ok=True)
    main = (NGINX_DIR / "nginx.conf").read_text()
    main, count = re.subn(r"^(\s*)listen\s+[^;]+;", rf"\1listen 127.0.0.1:{listen_port};", main, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"expected one listen line in nginx.conf, found {count}")
    params = upstream_parameters()
    servers = "".join(f"server 127.0.0.1:{port} {params};\n" for port in upstream_ports)
    (directory / "upstream_servers.conf").write_text(servers)
    conf = directory / "nginx.conf"
    conf.write_text(main)
    (directory / "logs").mkdir(exist_ok=True)
    return conf


def command(nginx: str, conf: Path, *extra: str) -> list[str]:
    """nginx argv that keeps pid and logs in the config's directory, in the foreground, as the current user."""
    prefix = conf.parent
    return [
        nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log"),
        "-g", f"daemon off; pid {prefix / 'nginx.pid'};", *extra,
    ]


def check(nginx: str, conf: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a rendered config."""
    return subprocess.run(command(nginx, conf, "-t"), capture_output=True, text=True, timeout=30, check=False)
