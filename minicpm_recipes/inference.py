"""Training config -> the configs that use its result: inference (`llamafactory-cli api/chat`, `serve`) and
export (`llamafactory-cli export`: merge the LoRA adapter into the base model). Pure, plus `write_configs`.

Paths are copied as the training config has them: LLaMA-Factory resolves them against the folder it runs
in, so run the rendered configs from the folder you trained from.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError

# carried from the training config into inference/export configs when present
_CARRIED = ("trust_remote_code", "flash_attn", "quantization_bit", "quantization_method", "double_quantization",
            "default_system", "enable_thinking", "rope_scaling", "cache_dir")
ADAPTER_TYPES = ("lora", "oft")
DEFAULT_EXPORT_SIZE = 5  # GB per shard, LLaMA-Factory's default


@dataclass(frozen=True)
class RenderedConfig:
    name: str
    content: str
    params: dict[str, Any]
    command: str


def is_training_config(config: dict[str, Any]) -> bool:
    return "stage" in config or bool(config.get("do_train"))


def infer_params(config: dict[str, Any], *, adapter: str | None = None, template: str | None = None,
                 backend: str | None = None) -> dict[str, Any]:
    """Inference arguments for the model a training config produces (or an inference config, checked)."""
    if not isinstance(config, dict) or not config.get("model_name_or_path"):
        raise UserError("the config has no model_name_or_path; give a training config written by "
                        "`minicpm-recipes render` or an inference config for `llamafactory-cli api`")
    if not is_training_config(config):
        params = dict(config)
        if adapter:
            params["adapter_name_or_path"] = adapter
            params.setdefault("finetuning_type", "lora")
    else:
        finetuning_type = config.get("finetuning_type", "lora")
        output_dir = config.get("output_dir")
        params = {}
        if finetuning_type in ADAPTER_TYPES:
            params["model_name_or_path"] = config["model_name_or_path"]
            adapters = [a for a in str(config.get("adapter_name_or_path") or "").split(",") if a.strip()]
            if adapter:
                adapters.append(adapter)
            elif output_dir:
                adapters.append(str(output_dir))
            else:
                raise UserError("the training config has no output_dir, so there is no adapter to load; "
                                "pass --adapter DIR")
            params["adapter_name_or_path"] = ",".join(adapters)
        else:  # full / freeze: the output folder is a whole model
            if adapter:
                raise UserError(f"--adapter: the config trains with finetuning_type {finetuning_type}, which "
                                "writes a whole model, not an adapter")
            if not output_dir:
                raise UserError("the training config has no output_dir: there is no trained model to load")
            params["model_name_or_path"] = str(output_dir)
        for key in _CARRIED:
            if key in config:
                params[key] = config[key]
        if config.get("template"):
            params["template"] = config["template"]
        params["finetuning_type"] = finetuning_type
        params["infer_backend"] = "huggingface"
    if template:
        params["template"] = template
    if params.get("template") is not None:
        from .lfspec import load_spec

        load_spec().check_template(params["template"], "template ")
    if backend:
        params["infer_backend"] = backend
    return params


def export_params(config: dict[str, Any], export_dir: str, *, adapter: str | None = None,
                  template: str | None = None, export_size: int = DEFAULT_EXPORT_SIZE,
                  export_device: str = "cpu") -> dict[str, Any]:
    """Arguments that merge the trained adapter into the base model and save it to export_dir."""
    if not export_dir:
        raise UserError("--export-dir must name the folder for the merged model")
    if export_size < 1:
        raise UserError(f"--export-size must be 1 (GB) or more, got {export_size}")
    params = infer_params(config, adapter=adapter, template=template)
    params.pop("infer_backend", None)
    if params.get("quantization_bit") is not None:
        raise UserError("the model is loaded quantized (quantization_bit): LLaMA-Factory cannot merge an adapter "
                        "into a quantized model; export from the unquantized base model")
    params.update(export_dir=export_dir, export_size=export_size, export_device=export_device,
                  export_legacy_format=False)
    return params


def _render(template_name: str, title: str, params: dict[str, Any], command: str) -> str:
    from .render import jinja_env

    return jinja_env().get_template(template_name).render(
        title=title, version=__version__, params=params, command=command)


def config_stem(config_path: str | Path) -> str:
    name = Path(config_path).name
    for suffix in (".yaml", ".yml", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def render_infer(params: dict[str, Any], name: str, ref: str) -> RenderedConfig:
    command = f"llamafactory-cli chat {shlex.quote(ref)}   # or: minicpm-recipes serve {shlex.quote(ref)}"
    text = _render("llamafactory/infer.yaml.j2", f"inference: {params['model_name_or_path']}"
                   + (f" + adapter {params['adapter_name_or_path']}" if params.get("adapter_name_or_path") else ""),
                   params, command)
    return RenderedConfig(name, text, params, command)


def render_export(config: dict[str, Any], config_path: str | Path, export_dir: str, *, ref_dir: str = ".",
                  adapter: str | None = None, template: str | None = None,
                  export_size: int = DEFAULT_EXPORT_SIZE, export_device: str = "cpu") -> list[RenderedConfig]:
    """The export config and an inference config for the merged model (for `chat`/`serve`). Pure."""
    stem = config_stem(config_path)
    params = export_params(config, export_dir, adapter=adapter, template=template, export_size=export_size,
                           export_device=export_device)

    def ref(name: str) -> str:
        return name if ref_dir in ("", ".") else f"{ref_dir.rstrip('/')}/{name}"

    export_name = f"{stem}_export.yaml"
    command = f"llamafactory-cli export {shlex.quote(ref(export_name))}"
    if params.get("adapter_name_or_path"):
        title = f"merge {params['adapter_name_or_path']} into {params['model_name_or_path']} -> {export_dir}"
    else:  # full / freeze: the trained folder is a whole model already
        title = (f"re-save {params['model_name_or_path']} (finetuning_type {params.get('finetuning_type')}: no "
                 f"adapter to merge) as {export_dir}, in shards of {params['export_size']} GB")
    export = RenderedConfig(export_name, _render("llamafactory/export.yaml.j2", title, params, command), params,
                            command)
    merged = {"model_name_or_path": export_dir}
    for key in ("template", "trust_remote_code", "flash_attn", "default_system", "enable_thinking"):
        if key in params:
            merged[key] = params[key]
    merged["infer_backend"] = "huggingface"
    chat = render_infer(merged, f"{stem}_merged_infer.yaml", ref(f"{stem}_merged_infer.yaml"))
    return [export, chat]


def write_configs(configs: list[RenderedConfig], out_dir: Path) -> list[Path]:
    from .fsutil import atomic_write_text

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for c in configs:
            atomic_write_text(out_dir / c.name, c.content)
            paths.append(out_dir / c.name)
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot write ({exc.strerror}); choose a writable folder") from exc
    return paths


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A LLaMA-Factory YAML config as a dict (plain YAML, no torch import)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such config file; render one with `minicpm-recipes render STAGE`")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable YAML config ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of LLaMA-Factory arguments, got {type(data).__name__}")
    return data
