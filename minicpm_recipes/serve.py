"""Serve a trained model with LLaMA-Factory's OpenAI-compatible API (`llamafactory-cli api`).

Pure core: `check_bind` (loopback by default, a key required to listen beyond it), `server_env` (LLaMA-Factory's
API_HOST / API_PORT / API_KEY / API_MODEL_NAME variables) and `api_argv`. `serve` writes the inference config
(see inference.py) and runs the server as a child process, forwarding Ctrl-C / SIGTERM to it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from .errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, api_key: str | None, allow_no_key: bool = False) -> None:
    """Refuse to listen beyond this machine without an API key (unless explicitly allowed)."""
    if not host:
        raise UserError("--host must not be empty; use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
    if not (1 <= port <= 65535):
        raise UserError(f"--port must be a TCP port (1-65535), got {port}")
    if api_key is not None and (not api_key.strip() or any(c.isspace() for c in api_key)):
        raise UserError("the API key must be non-empty and contain no whitespace")
    if not is_loopback(host) and not api_key and not allow_no_key:
        raise UserError(f"--host {host} makes the model reachable from other machines: set an API key "
                        "(API_KEY environment variable or --api-key-file FILE), or pass --no-api-key to serve "
                        "without one")


def server_env(base: dict[str, str], host: str, port: int, api_key: str | None,
               model_name: str | None) -> dict[str, str]:
    """The environment of `llamafactory-cli api`: LLaMA-Factory reads API_HOST, API_PORT, API_KEY, API_MODEL_NAME."""
    env = dict(base)
    env["API_HOST"] = host
    env["API_PORT"] = str(port)
    if api_key:
        env["API_KEY"] = api_key
    else:
        env.pop("API_KEY", None)
    if model_name:
        env["API_MODEL_NAME"] = model_name
    return env


def api_argv(config_path: str | Path) -> list[str]:
    """`llamafactory-cli api CONFIG`, with the interpreter of this installation."""
    return [sys.executable, "-m", "llamafactory.cli", "api", str(config_path)]


def read_api_key(key_file: str | None, environ: dict[str, str]) -> str | None:
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--api-key-file {key_file}: cannot read it ({exc.strerror})") from exc
        if not key:
            raise UserError(f"--api-key-file {key_file}: the file is empty")
        return key
    return environ.get("API_KEY") or None


def run_server(config_text: str, env: dict[str, str], config_name: str = "serve.yaml") -> int:
    """Write the inference config to a private temp folder and run the API server until it exits. The server
    runs as `train` runs its child (launch.run.run_process): Ctrl-C, SIGTERM and SIGHUP stop it, and it dies with
    this process even on SIGKILL."""
    from .launch.run import run_process

    with tempfile.TemporaryDirectory(prefix="minicpm-serve-") as tmp:
        path = Path(tmp) / config_name
        path.write_text(config_text, encoding="utf-8")
        return run_process(api_argv(path), env, grace_s=10.0)


def default_model_name(config_path: str | Path) -> str:
    from .inference import config_stem

    return config_stem(config_path)


def environ() -> dict[str, str]:
    return dict(os.environ)
