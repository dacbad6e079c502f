"""sentence-transformers prompts (config_sentence_transformers.json) read at export, refused when inconsistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.pipeline import read_prompts
from model import CheckpointError
from tests.tiny_checkpoint import write_prompts


def test_no_config_means_no_prompts(tmp_path: Path) -> None:
    assert read_prompts(tmp_path) == ({}, None)


def test_prompts_and_default_are_read(tmp_path: Path) -> None:
    write_prompts(tmp_path, {"query": "query: ", "doc": ""}, default_prompt_name="query")
    assert read_prompts(tmp_path) == ({"query": "query: ", "doc": ""}, "query")


def test_version_only_config_has_no_prompts(tmp_path: Path) -> None:
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {"pytorch": "1.8.1"}}))
    assert read_prompts(tmp_path) == ({}, None)


@pytest.mark.parametrize(("content", "needle"), [
    ('{"prompts": {"query": 1}}', "must map prompt names to strings"),
    ('{"prompts": {"query": "q: "}, "default_prompt_name": "doc"}', "'doc' is not one of its prompts"),
    ("{not json", "unreadable"),
])
def test_bad_config_is_refused_naming_the_file(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "config_sentence_transformers.json").write_text(content)
    with pytest.raises(CheckpointError, match=needle) as err:
        read_prompts(tmp_path)
    assert "config_sentence_transformers.json" in str(err.value)
