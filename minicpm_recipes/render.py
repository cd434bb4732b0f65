"""Recipe data + options -> file contents (pure), then -> files on disk (atomic writes)."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from . import __version__
from .catalog import Catalog, Dist, Model, Stage, did_you_mean, load_catalog
from .errors import UserError
from .fsutil import atomic_write_text
from .lfspec import load_spec
from .resources import templates_dir
from .yamlvalue import shell_quote, yaml_value

DEFAULT_MODEL = "openbmb/MiniCPM-SALA"
DEFAULT_MASTER_PORT = 29500
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class RenderOptions:
    stage: str = "sft"
    method: str = "lora"
    dist: str = "single"
    nodes: int = 1
    gpus_per_node: int = 1
    model: str = DEFAULT_MODEL
    template: str | None = None
    dataset: str | None = None
    dataset_dir: str | None = None  # as written into the YAML; None: the bundled demo datasets
    output_dir: str | None = None  # LLaMA-Factory's output_dir; None: saves/<model>/<method>/<stage>
    sets: tuple[str, ...] = ()  # raw "key=value" strings from --set
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT
    ref_dir: str = "."  # how the rendered files refer to each other (the folder they are written to)
    # How the YAML / commands refer to the DeepSpeed / accelerate config; None: ref_dir/<its file name>.
    # `install` points these at an equivalent file already in the checkout, or at a per-recipe name.
    # The rendered file is returned in `files` either way.
    deepspeed_ref: str | None = None
    accelerate_ref: str | None = None


@dataclass(frozen=True)
class RenderedFile:
    name: str  # file name inside the output folder
    content: str
    role: str  # train | deepspeed | accelerate | launch
    executable: bool = False


@dataclass(frozen=True)
class Rendered:
    files: tuple[RenderedFile, ...]
    train_file: str
    params: dict[str, Any]
    engine: str
    commands: tuple[str, ...]  # how to run it, one line per node kind
    notes: tuple[str, ...] = field(default=())

    def file(self, role: str) -> RenderedFile | None:
        return next((f for f in self.files if f.role == role), None)


def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["yaml_value"] = yaml_value
    env.filters["shell_quote"] = shell_quote
    return env


def parse_set(item: str) -> tuple[str, Any]:
    """'key=value' -> (key, value typed as a YAML scalar). Unknown LLaMA-Factory keys are an error."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, for example --set learning_rate=5e-5")
    known = load_spec().train_keys
    if key not in known:
        raise UserError(
            f"--set {key}: not a LLaMA-Factory {load_spec().version} training argument{did_you_mean(key, known)}; "
            "see `llamafactory-cli train -h` for the full list"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML: keep the text as a string
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
        value = raw  # only scalars and flat lists are typed; anything else is the text as given
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads yes/no/on/off as booleans; `eval_strategy=no` means the string
    if isinstance(value, str) and raw.strip() == value and _FLOAT_RE.match(value):
        value = float(value)  # YAML 1.1 reads 5e-5 as a string; users (and OmegaConf) mean a number
    if isinstance(value, float) and value != value:  # NaN
        raise UserError(f"--set {key}: NaN is not a usable value")
    return key, value


def _ref(ref_dir: str, name: str) -> str:
    return name if ref_dir in ("", ".") else posixpath.join(ref_dir.replace(os.sep, "/"), name)


def train_file_name(model: Model, method: str, stage: Stage, dist: Dist, nodes: int) -> str:
    parts = [model.slug, method, stage.name]
    if dist.name != "single":
        parts.append(dist.name)
    if nodes > 1:
        parts.append(f"{nodes}nodes")
    return "_".join(parts) + ".yaml"


def build_params(
    catalog: Catalog, options: RenderOptions, model: Model, stage: Stage, dist: Dist, deepspeed_ref: str | None
) -> dict[str, Any]:
    """The training arguments, in a stable order, before --set overrides."""
    method = catalog.method(options.method)
    params: dict[str, Any] = {"model_name_or_path": model.name_or_path}
    if model.trust_remote_code:
        params["trust_remote_code"] = True
    if model.flash_attn != "auto":
        params["flash_attn"] = model.flash_attn
    params["stage"] = stage.llamafactory_stage
    params.update(method.defaults)
    if method.name == "lora":
        params.update(lora_rank=model.lora_rank, lora_alpha=model.lora_alpha, lora_dropout=0.05)
        params["lora_target"] = model.lora_target
    if deepspeed_ref:
        params["deepspeed"] = deepspeed_ref
    params.update(stage.defaults)
    params["dataset"] = options.dataset or stage.default_dataset
    params["dataset_dir"] = options.dataset_dir or "data"
    if stage.needs_template:
        params["template"] = model.template
    params["output_dir"] = options.output_dir or f"saves/{model.slug}/{method.name}/{stage.name}"
    params.update(catalog.common)
    params.update(stage.method_defaults.get(method.name, {}))
    return params


def check_topology(options) -> None:
    """--nodes, --gpus-per-node and --master-port are in range (UserError otherwise)."""
    if options.nodes < 1:
        raise UserError(f"--nodes must be 1 or more, got {options.nodes}")
    if options.gpus_per_node < 1:
        raise UserError(f"--gpus-per-node must be 1 or more, got {options.gpus_per_node}")
    if not (1 <= options.master_port <= 65535):
        raise UserError(f"--master-port must be a TCP port (1-65535), got {options.master_port}")


def render(options: RenderOptions, catalog: Catalog | None = None) -> Rendered:
    """Render every file of one recipe. Pure: reads templates and recipes, writes nothing."""
    catalog = catalog or load_catalog()
    stage = catalog.stage(options.stage)
    catalog.method(options.method)
    dist = catalog.dist(options.dist)
    check_topology(options)
    model = catalog.resolve_model(options.model, options.template)
    spec = load_spec()
    if stage.needs_template:
        spec.check_template(model.template, "--template ")

    env = jinja_env()
    train_name = train_file_name(model, options.method, stage, dist, options.nodes)
    base = train_name[: -len(".yaml")]
    files: list[RenderedFile] = []
    deepspeed_ref = accelerate_ref = None
    if dist.deepspeed:
        ds_name = dist.deepspeed["file"]
        ds_text = env.get_template("deepspeed/ds_config.json.j2").render(
            zero_stage=dist.deepspeed["zero_stage"], offload=dist.deepspeed["offload"]
        )
        files.append(RenderedFile(ds_name, ds_text, "deepspeed"))
        deepspeed_ref = options.deepspeed_ref or _ref(options.ref_dir, ds_name)
    params = build_params(catalog, options, model, stage, dist, deepspeed_ref)
    explicit = set()
    for item in options.sets:
        key, value = parse_set(item)
        explicit.add(key)
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    if "template" in explicit and params.get("template") is not None:
        spec.check_template(params["template"], "--set template=")
    notes: list[str] = []
    if params.get("eval_dataset") and "val_size" in params and "val_size" not in explicit:
        del params["val_size"]  # LLaMA-Factory refuses val_size together with eval_dataset
        notes.append("eval_dataset is set, so the recipe's val_size is left out (LLaMA-Factory accepts one of them)")

    mixed_precision = "bf16" if params.get("bf16") else ("fp16" if params.get("fp16") else "no")
    if dist.accelerate:
        acc_name = dist.accelerate["file"]
        acc_text = env.get_template("accelerate/fsdp_config.yaml.j2").render(
            version=__version__,
            fsdp_version=dist.accelerate["fsdp_version"],
            mixed_precision=mixed_precision,
            nodes=options.nodes,
            gpus_per_node=options.gpus_per_node,
            master_addr=options.master_addr or "127.0.0.1",
            master_port=options.master_port,
        )
        files.append(RenderedFile(acc_name, acc_text, "accelerate"))
        accelerate_ref = options.accelerate_ref or _ref(options.ref_dir, acc_name)

    train_ref = _ref(options.ref_dir, train_name)
    engine = dist.engine
    if engine == "llamafactory" and (options.gpus_per_node > 1 or options.nodes > 1):
        engine = "torchrun"
    if options.nodes > 1:
        script_name = f"{base}_node.sh"
        script_ref = _ref(options.ref_dir, script_name)
        script = env.get_template("launch/node.sh.j2").render(
            title=f"{model.id} {options.method} {stage.name}",
            version=__version__,
            nodes=options.nodes,
            gpus_per_node=options.gpus_per_node,
            master_addr=options.master_addr or "",
            master_port=options.master_port,
            engine=engine,
            script_name=script_name,
            train_ref=train_ref,
            accelerate_ref=accelerate_ref or "",
        )
        files.append(RenderedFile(script_name, script, "launch", executable=True))
        addr = options.master_addr or "<node-0 address>"
        commands = tuple(
            f"NODE_RANK={rank} MASTER_ADDR={shlex.quote(addr)} bash {shlex.quote(script_ref)}"
            + ("   # on node 0" if rank == 0 else f"   # on node {rank}")
            for rank in range(options.nodes)
        )
        if not options.master_addr:
            notes.append("set MASTER_ADDR on every node to the address of node 0 (or render with --master-addr)")
    elif engine == "accelerate":
        commands = (f"accelerate launch --config_file {shlex.quote(accelerate_ref)} -m llamafactory.launcher "
                    f"{shlex.quote(train_ref)}",)
    elif engine == "torchrun":
        commands = (f"FORCE_TORCHRUN=1 NPROC_PER_NODE={options.gpus_per_node} llamafactory-cli train "
                    f"{shlex.quote(train_ref)}",)
    else:
        commands = (f"llamafactory-cli train {shlex.quote(train_ref)}",)

    if model.template_note and options.template:
        notes.append(f"{model.id}: {model.template_note}")
    if dist.name == "fsdp":
        notes.append("FSDP (v1) needs GPUs; on CPU use --dist fsdp2")

    title = f"{model.id}: {options.method} {stage.name} ({dist.name}, {options.nodes} node(s) x {options.gpus_per_node} GPU(s))"
    train_text = env.get_template("llamafactory/train.yaml.j2").render(
        title=title, version=__version__, params=params, command=commands[0].split("   #")[0]
    )
    files.insert(0, RenderedFile(train_name, train_text, "train"))
    return Rendered(
        files=tuple(files), train_file=train_name, params=params, engine=engine, commands=commands, notes=tuple(notes)
    )


def write_rendered(rendered: Rendered, out_dir: Path) -> list[Path]:
    """Write every rendered file into out_dir atomically; return their paths."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot create the folder ({exc.strerror}); choose a writable folder") from exc
    written = []
    for f in rendered.files:
        path = out_dir / f.name
        try:
            atomic_write_text(path, f.content, mode=0o755 if f.executable else 0o644)
        except OSError as exc:
            raise UserError(f"-o {out_dir}: cannot write {f.name} ({exc.strerror}); choose a writable folder") from exc
        written.append(path)
    return written
