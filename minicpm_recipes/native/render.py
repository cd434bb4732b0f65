"""`render sft --backend trainer`: a launch script for `minicpm-recipes finetune` plus its DeepSpeed/accelerate
config. Pure: options -> file contents; writing is `render.write_rendered`.

The Trainer arguments start from the same recipe defaults as the LLaMA-Factory backend (recipes/stages.yaml:
batch size, accumulation, epochs, learning rate, cutoff_len as --max-length, ...); `--set KEY=VALUE` takes
any `minicpm-recipes finetune` option by its name with underscores (learning_rate=5e-5, max_steps=100).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from .. import __version__
from ..catalog import did_you_mean, load_catalog
from ..errors import UserError
from ..render import Rendered, RenderedFile, _ref, check_topology, jinja_env

# recipe keys (LLaMA-Factory names in recipes/stages.yaml) that map onto `finetune` options
_RECIPE_KEYS = {
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "per_device_eval_batch_size": "per_device_eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "num_train_epochs": "num_train_epochs",
    "lr_scheduler_type": "lr_scheduler_type",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "eval_steps": "eval_steps",
    "bf16": "bf16",
    "cutoff_len": "max_length",
}
# options the launch script sets itself, not through --set
_RESERVED = {"model", "train_data", "eval_data", "dev_ratio", "output_dir", "use_lora", "deepspeed", "help"}


@dataclass(frozen=True)
class TrainerRenderOptions:
    method: str = "lora"
    dist: str = "single"
    nodes: int = 1
    gpus_per_node: int = 1
    model: str = "openbmb/MiniCPM-SALA"
    train_data: str = "data/train.json"
    eval_data: str | None = None
    dev_ratio: float | None = None
    output_dir: str | None = None
    sets: tuple[str, ...] = ()
    master_addr: str | None = None
    master_port: int = 29500
    ref_dir: str = "."


def finetune_parser() -> argparse.ArgumentParser:
    from ..commands import finetune_cmd

    parser = argparse.ArgumentParser(prog="minicpm-recipes finetune", add_help=False, exit_on_error=False)
    finetune_cmd.add_arguments(parser)
    return parser


def _options_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _RESERVED}


def _flag_args(action: argparse.Action, value: Any) -> list[tuple[str, str | None]]:
    """(flag, value) pairs for one option; value None for a bare flag."""
    flag = next((s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")),
                action.option_strings[0])
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise UserError(f"--set {action.dest}: expected true or false, got {value!r}")
        return [(flag if value else "--no-" + flag[2:], None)]
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UserError(f"--set {action.dest}: expected true or false, got {value!r}")
        return [(flag, None)] if value else []
    if isinstance(value, bool):
        raise UserError(f"--set {action.dest}: expected a value, not {str(value).lower()}")
    text = format(value, "g") if isinstance(value, float) else str(value)
    if action.type is not None:
        try:
            action.type(text)
        except (TypeError, ValueError) as exc:
            raise UserError(f"--set {action.dest}={text}: not a valid {action.type.__name__}") from exc
    return [(flag, text)]


def _parse_set(item: str, options: dict[str, argparse.Action]) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, for example --set learning_rate=5e-5")
    if key in _RECIPE_KEYS and _RECIPE_KEYS[key] != key:
        key = _RECIPE_KEYS[key]
    if key not in options:
        hint = " (set it with its own render option)" if key in _RESERVED else did_you_mean(key, options)
        raise UserError(f"--set {key}: not a `minicpm-recipes finetune` option with --backend trainer{hint}; "
                        f"choose one of: {', '.join(sorted(options))}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        value = raw
    return key, value


def render_trainer(options: TrainerRenderOptions, stage_name: str = "sft") -> Rendered:
    catalog = load_catalog()
    stage = catalog.stage(stage_name)
    if stage.name != "sft":
        raise UserError(f"--backend trainer renders sft only (the native Trainer backend trains chat SFT); "
                        f"render {stage.name} with the default --backend llamafactory")
    method = catalog.method(options.method)
    dist = catalog.dist(options.dist)
    check_topology(options)
    if bool(options.eval_data) == bool(options.dev_ratio):
        raise UserError("--backend trainer needs a validation set: pass --eval-data FILE or --dev-ratio R (one)")
    if options.dev_ratio is not None and not 0.0 < options.dev_ratio < 1.0:
        raise UserError(f"--dev-ratio must be between 0 and 1 (exclusive), got {options.dev_ratio:g}")

    from .train import model_defaults

    known = catalog.find_model(options.model)
    slug = known.slug if known else options.model.rstrip("/").split("/")[-1].lower() or "model"
    name_or_path = model_defaults(options.model)["name_or_path"]

    # Trainer arguments: recipe defaults, then --set
    recipe: dict[str, Any] = {**stage.defaults, **catalog.common, **stage.method_defaults.get(method.name, {})}
    values: dict[str, Any] = {ours: recipe[lf] for lf, ours in _RECIPE_KEYS.items() if lf in recipe}
    parser = finetune_parser()
    actions = _options_by_dest(parser)
    for item in options.sets:
        key, value = _parse_set(item, actions)
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value

    env = jinja_env()
    files: list[RenderedFile] = []
    accelerate_ref = deepspeed_ref = None
    if dist.deepspeed:
        ds_name = dist.deepspeed["file"]
        files.append(RenderedFile(ds_name, env.get_template("deepspeed/ds_config.json.j2").render(
            zero_stage=dist.deepspeed["zero_stage"], offload=dist.deepspeed["offload"]), "deepspeed"))
        deepspeed_ref = _ref(options.ref_dir, ds_name)
    if dist.accelerate:
        acc_name = dist.accelerate["file"]
        mixed = "bf16" if values.get("bf16") else "no"
        files.append(RenderedFile(acc_name, env.get_template("accelerate/fsdp_config.yaml.j2").render(
            version=__version__, fsdp_version=dist.accelerate["fsdp_version"], mixed_precision=mixed,
            nodes=options.nodes, gpus_per_node=options.gpus_per_node,
            master_addr=options.master_addr or "127.0.0.1", master_port=options.master_port,
            launch_target="-m minicpm_recipes finetune ARGS (see the _trainer.sh script)"), "accelerate"))
        accelerate_ref = _ref(options.ref_dir, acc_name)

    output_dir = options.output_dir or f"saves/{slug}/{method.name}/sft-trainer"
    args: list[tuple[str, str | None]] = [("--model", name_or_path), ("--train-data", options.train_data)]
    args += [("--eval-data", options.eval_data)] if options.eval_data else [("--dev-ratio", format(options.dev_ratio, "g"))]
    if method.name == "lora":
        args.append(("--use-lora", None))
    if deepspeed_ref:
        args.append(("--deepspeed", deepspeed_ref))
    for dest, action in actions.items():  # in the order of `finetune --help`
        if dest in values:
            args += _flag_args(action, values[dest])
    args.append(("--output-dir", output_dir))
    # the command must parse exactly as `minicpm-recipes finetune` will parse it
    argv = [part for flag, value in args for part in ((flag,) if value is None else (flag, value))]
    try:
        parsed = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:  # pragma: no cover - guarded by _flag_args
        raise UserError(f"--set: the rendered finetune arguments do not parse ({exc})") from exc
    if parsed.use_lora != (method.name == "lora"):  # pragma: no cover - defensive
        raise UserError("internal error: --use-lora does not match --method")

    launcher = "accelerate" if dist.engine == "accelerate" else (
        "torchrun" if (dist.deepspeed or options.nodes > 1 or options.gpus_per_node > 1) else "python")
    parts = [slug, method.name, "sft"] + ([dist.name] if dist.name != "single" else [])
    parts += [f"{options.nodes}nodes"] if options.nodes > 1 else []
    script_name = "_".join(parts) + "_trainer.sh"
    script_ref = _ref(options.ref_dir, script_name)
    title = (f"{name_or_path}: {method.name} sft with transformers.Trainer "
             f"({dist.name}, {options.nodes} node(s) x {options.gpus_per_node} GPU(s))")
    script = env.get_template("trainer/launch.sh.j2").render(
        title=title, version=__version__, nodes=options.nodes, gpus_per_node=options.gpus_per_node,
        master_addr=options.master_addr or "", master_port=options.master_port, launcher=launcher,
        accelerate_ref=accelerate_ref or "", script_ref=script_ref, args=args)
    files.insert(0, RenderedFile(script_name, script, "launch", executable=True))

    notes: list[str] = []
    if options.nodes > 1:
        addr = options.master_addr or "<node-0 address>"
        commands = tuple(f"NODE_RANK={r} MASTER_ADDR={shlex.quote(addr)} bash {shlex.quote(script_ref)}"
                         + ("   # on node 0" if r == 0 else f"   # on node {r}") for r in range(options.nodes))
        if not options.master_addr:
            notes.append("set MASTER_ADDR on every node to the address of node 0 (or render with --master-addr)")
    else:
        commands = (f"bash {shlex.quote(script_ref)}",)
    if dist.name == "fsdp":
        notes.append("FSDP (v1) needs GPUs; on CPU use --dist fsdp2")
    if known is not None and known.requires_flash_attn:
        notes.append(f"{known.id}: {known.notes or 'its modeling code needs flash-attn'} (install flash-attn)")
    params = {dest: getattr(parsed, dest) for dest in vars(parsed)}
    return Rendered(files=tuple(files), train_file=script_name, params=params, engine=launcher,
                    commands=commands, notes=tuple(notes))


def run_render(args: argparse.Namespace) -> int:
    """`render sft --backend trainer ...` from render_cmd's parsed arguments: write the files, print the command."""
    import sys
    from pathlib import Path

    from ..commands.render_cmd import _path_for_yaml, _reference_dir, print_rendered
    from ..render import DEFAULT_MODEL, write_rendered
    from ..resources import datasets_dir

    for flag, value in (("--template", args.template), ("--dataset", args.dataset),
                        ("--dataset-dir", args.dataset_dir)):
        if value is not None:
            raise UserError(f"{flag} is a LLaMA-Factory option; with --backend trainer the model's own chat "
                            "template is used and data come from --train-data/--eval-data")
    to_stdout = args.out == "-"
    out_dir = Path(args.out)
    train_data = args.train_data or _path_for_yaml(datasets_dir() / "demo" / "minicpm_demo_sft_zh.json")
    dev_ratio = args.dev_ratio if args.dev_ratio is not None else (None if args.eval_data else 0.1)
    options = TrainerRenderOptions(
        method=args.method, dist=args.dist, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        model=args.model or DEFAULT_MODEL, train_data=train_data, eval_data=args.eval_data, dev_ratio=dev_ratio,
        output_dir=args.output_dir, sets=tuple(args.sets), master_addr=args.master_addr,
        master_port=args.master_port, ref_dir="." if to_stdout else _reference_dir(out_dir),
    )
    rendered = render_trainer(options, args.stage)
    if to_stdout:
        sys.stdout.write(rendered.files[0].content)
        others = [f.name for f in rendered.files[1:]]
        if others:
            print(f"note: the script references {', '.join(others)}, which -o - does not write; "
                  "render with -o DIR to get them", file=sys.stderr)
        return 0
    notes = list(rendered.notes)
    if not args.eval_data and args.dev_ratio is None:
        notes.insert(0, f"no --eval-data: {dev_ratio:g} of the training data is split off as the validation set")
    print_rendered(write_rendered(rendered, out_dir), notes, rendered.commands)
    return 0
