"""`encoder-serve`: the installed command, with `serve`, `export` and `info`.

`export` runs `python -m export` in a child process, so that service/ never imports the export side (torch): an
image with only the serve dependencies still has a working `serve` and `info`, and `export` says what is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from pydantic_core import PydanticUndefined

from service.settings import Settings

logger = logging.getLogger("service.cli")


def _as_env_value(value: object) -> str:
    """A default as one would write it in the environment variable."""
    if value is PydanticUndefined:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_table() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, from `Settings` itself."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)  # a list setting's default comes from a factory
        rows.append((f"{prefix}{name}".upper(), _as_env_value(default), field.description or ""))
    return rows


def _info() -> int:
    rows = settings_table()
    width = max(len(env) for env, _, _ in rows)
    lines = [f"{'setting'.ljust(width)}  default"] + [f"{env.ljust(width)}  {default}" for env, default, _ in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _export(args: Sequence[str]) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("export") is None:
        logging.basicConfig(level=logging.ERROR)
        logger.error("export needs the export dependencies: pip install 'encoder-serve[export]'")
        return 2
    return subprocess.call([sys.executable, "-m", "export", *args], env=os.environ.copy())  # noqa: S603  argv, no shell


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="encoder-serve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the artifact directory (EMBED_* settings; see `info`)")
    commands.add_parser("export", help="export a model to an artifact directory (python -m export --help)",
                        add_help=False)
    commands.add_parser("info", help="print every setting with its environment variable and default")
    args, rest = parser.parse_known_args(argv)
    if args.command == "export":
        return _export(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        return _info()
    from service.__main__ import main as serve

    return serve()


if __name__ == "__main__":
    sys.exit(main())
