"""Shared test fixtures: repository paths, real data fixtures, the tiny local model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
LF_DATA = FIXTURES / "llamafactory-data"  # LLaMA-Factory's own data/ folder (demo files + dataset_info.json)
MINICPM_DATA = FIXTURES / "minicpm-data" / "AdvertiseGenChatML"  # MiniCPM's {"messages": [...]} example

# keep child processes quiet and offline
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight Llama model with a cpm4-ready tokenizer, built once per test session."""
    from minicpm_recipes.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m minicpm_recipes ARGS` as a user would, capturing output."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "minicpm_recipes", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
