"""`minicpm-recipes serve CONFIG`: OpenAI-compatible API for the trained model (LLaMA-Factory's `api`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "serve the trained model (base + adapter) with LLaMA-Factory's OpenAI-compatible API"
DESCRIPTION = """\
Serve the model a training config produces (the base model plus the LoRA adapter in its output_dir, or the
fully fine-tuned output_dir) with `llamafactory-cli api`, which speaks the OpenAI chat-completions API
(streaming and not). CONFIG may also be an inference config for `llamafactory-cli api` (no `stage` key),
e.g. the *_merged_infer.yaml written by `render-export`.

Listens on 127.0.0.1 unless --host says otherwise. With an API key (the API_KEY environment variable, as in
LLaMA-Factory, or --api-key-file) every request must send `Authorization: Bearer KEY`. Listening beyond
this machine without a key is refused unless --no-api-key is given.

examples:
  minicpm-recipes serve configs/minicpm-sala_lora_sft.yaml
  API_KEY=$(cat ~/.minicpm-key) minicpm-recipes serve configs/minicpm-sala_lora_sft.yaml --host 0.0.0.0
  minicpm-recipes serve configs/minicpm-sala_lora_sft_merged_infer.yaml --port 8001
  minicpm-recipes serve configs/minicpm-sala_lora_sft.yaml -o configs/sala_api.yaml   # write, don't serve

client:
  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ.get("API_KEY", "none"))
  client.chat.completions.create(model="minicpm-sala_lora_sft", messages=[{"role": "user", "content": "hi"}])
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="training YAML (or an inference YAML for llamafactory-cli api)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="read the API key from FILE (default: the API_KEY environment variable, if set)")
    p.add_argument("--no-api-key", action="store_true",
                   help="serve without a key even beyond 127.0.0.1 (ignores API_KEY)")
    p.add_argument("--model-name", default=None,
                   help="model id reported by /v1/models (default: the config's file name)")
    p.add_argument("--adapter", default=None, help="adapter folder to load (default: the training output_dir)")
    p.add_argument("--template", default=None, help="chat template (default: the config's)")
    p.add_argument("--backend", default=None, choices=["huggingface", "vllm", "sglang"],
                   help="inference engine (default huggingface)")
    p.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="write the inference config to FILE and print how to serve it, instead of serving")


def _check_trained(params: dict, config_path: str) -> None:
    """Fail early, with the fix, when the training output the config points to is not there yet."""
    from ..errors import UserError

    for adapter in str(params.get("adapter_name_or_path") or "").split(","):
        adapter = adapter.strip()
        if adapter and Path(adapter).exists() and not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: no adapter_config.json, so no trained adapter there yet; train first "
                            f"(minicpm-recipes train {config_path}) or pass --adapter DIR")
        local = adapter.startswith((".", "/", "~")) or adapter.count("/") != 1  # a hub id is ORG/NAME
        if adapter and not Path(adapter).exists() and local:
            raise UserError(f"{adapter}: no such folder, so no trained adapter yet; train first "
                            f"(minicpm-recipes train {config_path}) or pass --adapter DIR")


def run(args: argparse.Namespace) -> int:
    from ..inference import infer_params, read_yaml_config, render_infer
    from ..serve import (
        DEFAULT_HOST,
        DEFAULT_PORT,
        check_bind,
        default_model_name,
        environ,
        read_api_key,
        run_server,
        server_env,
    )

    host = args.host or DEFAULT_HOST
    port = args.port if args.port is not None else DEFAULT_PORT
    api_key = None if args.no_api_key else read_api_key(args.api_key_file, environ())
    check_bind(host, port, api_key, allow_no_key=args.no_api_key)
    config = read_yaml_config(args.config)
    params = infer_params(config, adapter=args.adapter, template=args.template, backend=args.backend)
    model_name = args.model_name or default_model_name(args.config)
    if args.out:  # writing the config ahead of training is fine: no check that the adapter exists yet
        from ..fsutil import atomic_write_text

        out = Path(args.out)
        rendered = render_infer(params, out.name, out.as_posix())
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, rendered.content)
        except OSError as exc:
            from ..errors import UserError

            raise UserError(f"-o {args.out}: cannot write ({exc.strerror})") from exc
        print(f"wrote {out}")
        print("serve it with (API_KEY optional):")
        print(f"  API_HOST={shlex.quote(host)} API_PORT={port} API_MODEL_NAME={shlex.quote(model_name)} "
              f"llamafactory-cli api {shlex.quote(out.as_posix())}")
        return 0
    _check_trained(params, args.config)
    backend = params.get("infer_backend")
    if backend in ("vllm", "sglang"):
        import importlib.util

        if importlib.util.find_spec(backend) is None:
            from ..errors import UserError

            raise UserError(f"--backend {backend}: the {backend} package is not installed here; install it "
                            f"(pip install {backend}) or serve with --backend huggingface")
    rendered = render_infer(params, "serve.yaml", "serve.yaml")
    env = server_env(environ(), host, port, api_key, model_name)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {model_name} on http://{shown}:{port}/v1 (OpenAI-compatible)"
          + ("; requests must send the API key" if api_key else "; no API key"), file=sys.stderr, flush=True)
    return run_server(rendered.content, env)
