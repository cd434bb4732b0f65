"""Checks before a training launch, each problem one clear line.

The rules are pure functions of the config (the YAML with the command-line overrides applied) and of `Facts`
gathered once (installed packages, the model's remote-code needs, the DeepSpeed ZeRO stage, the checkpoints
already in `output_dir`). `gather_facts` and `check_datasets` read files; `lf_parser_problems` runs
LLaMA-Factory's own parser in a child process (`minicpm_recipes.lfcheck`). Order: cheap checks first; the
parser only runs when they pass.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# LLaMA-Factory's CHECKPOINT_NAMES: a trained model (not a checkpoint) in output_dir
MODEL_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors.index.json",
               "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
TRUE_STRINGS = ("true", "1", "yes", "y")


@dataclass(frozen=True)
class Problem:
    message: str
    key: str | None = None  # the config key it is about, when there is one

    def __str__(self) -> str:
        return self.message


class PreflightError(UserError):
    """One or more preflight problems; the message joins them, `.problems` keeps them apart."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("; ".join(p.message for p in self.problems))


@dataclass(frozen=True)
class ModelFacts:
    name: str
    catalog_id: str | None = None
    needs_remote_code: str | None = None  # why trust_remote_code is needed, or None
    requires_flash_attn: bool = False


@dataclass(frozen=True)
class Resume:
    output_dir: str
    checkpoint: str | None = None  # newest checkpoint-N folder in output_dir
    step: int | None = None
    model_files: tuple[str, ...] = ()  # a trained model saved in output_dir itself


@dataclass(frozen=True)
class Facts:
    model: ModelFacts
    zero_stage: int | None = None  # DeepSpeed ZeRO stage of the `deepspeed` file, if any
    flash_attn_available: bool = False
    templates: frozenset[str] | None = None  # chat templates of the installed LLaMA-Factory (None: unknown)
    resume: Resume | None = None
    world_size: int = 1  # processes of the planned launch


@dataclass(frozen=True)
class Outcome:
    """What the checks found: problems stop the launch, notes are printed."""

    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    resume_from: str | None = None


# ---- reading the config -----------------------------------------------------------------------------------

def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """'key=value' strings -> values, read as LLaMA-Factory reads them (OmegaConf.from_cli)."""
    from omegaconf import OmegaConf

    from ..catalog import did_you_mean
    from ..lfspec import load_spec

    known = load_spec().train_keys
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r}: expected KEY=VALUE, for example max_steps=10")
        if key not in known:
            raise UserError(f"override {key}: not a LLaMA-Factory {load_spec().version} training argument"
                            f"{did_you_mean(key, known)}; see `llamafactory-cli train -h`")
    try:
        return OmegaConf.to_container(OmegaConf.from_cli(list(items)))
    except Exception as exc:  # noqa: BLE001 - omegaconf grammar errors
        raise UserError(f"overrides {' '.join(items)}: cannot read them ({exc})") from exc


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The training YAML with the overrides applied, read exactly as `llamafactory-cli train FILE k=v` does."""
    from omegaconf import OmegaConf

    p = Path(path)
    if p.is_dir():
        yamls = sorted(q.name for q in p.glob("*.y*ml"))[:5]
        raise UserError(f"{path} is a folder; give one training YAML in it"
                        + (f" ({', '.join(yamls)}{', ...' if len(yamls) == 5 else ''})" if yamls else ""))
    if not p.is_file():
        raise UserError(f"{path}: no such file; give the training YAML (render one with `minicpm-recipes render`)")
    if p.suffix not in (".yaml", ".yml"):
        raise UserError(f"{path}: expected a .yaml/.yml training config (LLaMA-Factory reads only those with overrides)")
    extra = parse_overrides(overrides)
    try:
        loaded = OmegaConf.load(p.absolute())
        merged = OmegaConf.to_container(OmegaConf.merge(loaded, OmegaConf.create(extra)), resolve=True)
    except Exception as exc:  # noqa: BLE001 - YAML / interpolation errors
        raise UserError(f"{path}: not a readable YAML mapping ({str(exc).splitlines()[0]})") from exc
    if not isinstance(merged, dict):
        raise UserError(f"{path}: expected a mapping of LLaMA-Factory arguments at the top level")
    return merged


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in TRUE_STRINGS) or value == 1


def names(value: Any) -> list[str]:
    """LLaMA-Factory's dataset list: a comma-separated string or a list."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


# ---- pure rules -------------------------------------------------------------------------------------------

def check_rules(cfg: Mapping[str, Any], facts: Facts) -> list[Problem]:
    """Cross-field rules LLaMA-Factory enforces late (after loading the model) or not at all."""
    problems: list[Problem] = []
    stage = str(cfg.get("stage", "sft"))
    finetuning = str(cfg.get("finetuning_type", "lora"))  # LLaMA-Factory's default
    if facts.zero_stage == 3:
        if truthy(cfg.get("predict_with_generate")):
            problems.append(Problem("predict_with_generate: true cannot run under DeepSpeed ZeRO-3 "
                                    f"({cfg.get('deepspeed')}); set predict_with_generate=false or use ZeRO-2",
                                    "predict_with_generate"))
        if truthy(cfg.get("pure_bf16")):
            problems.append(Problem(f"pure_bf16: true cannot run under DeepSpeed ZeRO-3 ({cfg.get('deepspeed')}); "
                                    "use bf16: true instead, or ZeRO-2", "pure_bf16"))
    if truthy(cfg.get("neat_packing")) and stage != "sft":
        problems.append(Problem(f"neat_packing: true only works with stage: sft (this config has stage: {stage}); "
                                "remove neat_packing", "neat_packing"))
    if cfg.get("quantization_bit") not in (None, "") and finetuning not in ("lora", "oft"):
        problems.append(Problem(f"quantization_bit: {cfg.get('quantization_bit')} needs finetuning_type: lora "
                                f"(QLoRA); a quantized model cannot be trained with finetuning_type: {finetuning}",
                                "quantization_bit"))
    if cfg.get("deepspeed") not in (None, "") and truthy(cfg.get("use_cpu")) and facts.world_size > 1:
        problems.append(Problem(f"use_cpu: true with DeepSpeed ({cfg.get('deepspeed')}) on {facts.world_size} processes: "
                                "transformers then starts plain gloo without DeepSpeed's communication, and DeepSpeed "
                                "fails its batch-size check (world size 1); remove use_cpu (DeepSpeed finds the CPU "
                                "by itself: pass use_cpu=null)", "use_cpu"))
    model = facts.model
    if model.requires_flash_attn and not facts.flash_attn_available:
        problems.append(Problem(f"{model.catalog_id or model.name} only runs with flash-attention 2 and the "
                                "flash-attn package is not importable here; install it on the GPU machine "
                                "(pip install flash-attn --no-build-isolation)", "flash_attn"))
    if model.needs_remote_code and not truthy(cfg.get("trust_remote_code")):
        problems.append(Problem(f"model {model.name} ships its own modeling code ({model.needs_remote_code}); "
                                "add trust_remote_code: true", "trust_remote_code"))
    return problems


def check_template(cfg: Mapping[str, Any], templates: frozenset[str] | None, version: str = "") -> list[Problem]:
    from ..catalog import did_you_mean

    template = cfg.get("template")
    stage = str(cfg.get("stage", "sft"))
    if template in (None, ""):
        if stage != "pt":
            return [Problem(f"stage: {stage} needs a chat template: add template: NAME "
                            "(see `minicpm-recipes list --templates`)", "template")]
        return []
    if templates is not None and str(template) not in templates:
        return [Problem(f"template: {template} does not exist in LLaMA-Factory {version}".rstrip() +
                        f"{did_you_mean(str(template), templates)}; see `minicpm-recipes list --templates`",
                        "template")]
    return []


def check_resume(cfg: Mapping[str, Any], resume: Resume | None, *, no_resume: bool) -> Outcome:
    """Resuming from output_dir's newest checkpoint (LLaMA-Factory does it by itself), or refusing to."""
    explicit = cfg.get("resume_from_checkpoint")
    overwrite = truthy(cfg.get("overwrite_output_dir"))
    if explicit not in (None, "", False):
        if no_resume:
            return Outcome(problems=(Problem(f"--no-resume, but the config sets resume_from_checkpoint: {explicit}; "
                                             "remove one of them", "resume_from_checkpoint"),))
        return Outcome(notes=(f"resuming from {explicit} (resume_from_checkpoint)",), resume_from=str(explicit))
    if resume is None:
        return Outcome()
    out = resume.output_dir
    if resume.checkpoint is None:
        if resume.model_files and not overwrite:
            return Outcome(problems=(Problem(
                f"output_dir {out} already holds a trained model ({resume.model_files[0]}) and no checkpoint to "
                "resume from; choose another output_dir, or set overwrite_output_dir=true to train over it",
                "output_dir"),))
        return Outcome()
    if overwrite:
        return Outcome(notes=(f"overwrite_output_dir: true: starting from step 0; {out} holds {resume.checkpoint}, "
                              "which will be overwritten",))
    if no_resume:
        return Outcome(problems=(Problem(
            f"output_dir {out} holds {resume.checkpoint} and --no-resume refuses to continue it; choose another "
            "output_dir, or set overwrite_output_dir=true to start over", "output_dir"),))
    return Outcome(notes=(f"resuming from {resume.checkpoint} (step {resume.step}) in {out}",),
                   resume_from=os.path.join(out, resume.checkpoint))


def evaluate(cfg: Mapping[str, Any], facts: Facts, *, no_resume: bool = False, version: str = "") -> Outcome:
    """Every pure check: cross-field rules, template, resume."""
    problems = check_rules(cfg, facts) + check_template(cfg, facts.templates, version)
    resume = check_resume(cfg, facts.resume, no_resume=no_resume)
    return Outcome(problems=tuple(problems) + resume.problems, notes=resume.notes, resume_from=resume.resume_from)


# ---- facts (reads files) ----------------------------------------------------------------------------------

def find_checkpoints(output_dir: str | Path) -> Resume:
    out = Path(output_dir)
    steps = []
    model_files: tuple[str, ...] = ()
    if out.is_dir():
        for child in out.iterdir():
            match = CHECKPOINT_RE.match(child.name)
            if match and child.is_dir():
                steps.append(int(match.group(1)))
        model_files = tuple(name for name in MODEL_FILES if (out / name).is_file())
    if not steps:
        return Resume(output_dir=str(output_dir), model_files=model_files)
    step = max(steps)
    return Resume(output_dir=str(output_dir), checkpoint=f"checkpoint-{step}", step=step, model_files=model_files)


def zero_stage_of(cfg: Mapping[str, Any]) -> tuple[int | None, list[Problem]]:
    ref = cfg.get("deepspeed")
    if ref in (None, ""):
        return None, []
    path = Path(str(ref))
    if not path.is_file():
        return None, [Problem(f"deepspeed: {ref}: no such file (relative paths are read from {os.getcwd()}); "
                              "render the config again or fix the path", "deepspeed")]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stage = data.get("zero_optimization", {}).get("stage")
        return (int(stage) if stage is not None else None), []
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        return None, [Problem(f"deepspeed: {ref}: not a readable DeepSpeed JSON config ({exc})", "deepspeed")]


def model_facts(name: str) -> ModelFacts:
    """What the catalog and the model's own config.json say about a model."""
    from ..catalog import load_catalog

    catalog = load_catalog()
    known = catalog.find_model(name)
    local = Path(name).expanduser()
    if known is None and local.is_dir():
        base = local.resolve().name.lower()
        known = next((m for m in catalog.models if m.id.split("/")[-1].lower() == base), None)
    reason = None
    if local.is_dir():
        try:
            auto_map = json.loads((local / "config.json").read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):
            auto_map = None
        if auto_map:
            reason = "its config.json has auto_map"
    if reason is None and known is not None and known.trust_remote_code:
        reason = f"the catalog marks {known.id} trust_remote_code"
    return ModelFacts(name=name, catalog_id=known.id if known else None, needs_remote_code=reason,
                      requires_flash_attn=bool(known and known.requires_flash_attn))


def flash_attn_importable() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        return False


def gather_facts(cfg: Mapping[str, Any], *, world_size: int = 1) -> tuple[Facts, list[Problem]]:
    from ..lfspec import load_spec

    zero, problems = zero_stage_of(cfg)
    model = cfg.get("model_name_or_path")
    if model in (None, ""):
        problems.append(Problem("model_name_or_path is missing: add the hub id or local folder of the model",
                                "model_name_or_path"))
        model = ""
    facts = Facts(
        model=model_facts(str(model)) if model else ModelFacts(name=""),
        zero_stage=zero,
        flash_attn_available=flash_attn_importable(),
        templates=load_spec().templates,
        resume=find_checkpoints(cfg["output_dir"]) if cfg.get("output_dir") not in (None, "") else None,
        world_size=world_size,
    )
    if cfg.get("output_dir") in (None, ""):
        problems.append(Problem("output_dir is missing: add output_dir: FOLDER", "output_dir"))
    return facts, problems


# ---- datasets ---------------------------------------------------------------------------------------------

Validator = Callable[..., Any]


def default_validator() -> Validator | None:
    """`minicpm_recipes.data.validate.validate_dataset`, or None while it is not installed."""
    try:
        from ..data.validate import validate_dataset
    except ImportError:
        return None
    return validate_dataset


VALIDATOR_STAGES = ("sft", "rm", "dpo", "kto", "pt")  # the stages `validate_dataset` knows


def check_datasets(cfg: Mapping[str, Any], validate: Validator | None = None, *, max_problems: int = 3,
                   notes: list[str] | None = None) -> list[Problem]:
    """Every dataset the config names is registered in dataset_dir/dataset_info.json and passes `validate`.

    `validate(name, dataset_dir, stage=..., cutoff_len=...)` returns an object with `.ok` and `.problems`; a
    validator that crashes (a bug, not the user's data) does not block training: it adds a note instead.
    """
    from ..catalog import did_you_mean

    dataset_dir = str(cfg.get("dataset_dir") or "data")  # LLaMA-Factory's default
    wanted = [(key, name) for key in ("dataset", "eval_dataset") for name in names(cfg.get(key))]
    if not wanted or dataset_dir == "ONLINE":
        return []
    info_path = Path(dataset_dir) / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [Problem(f"dataset_dir: {dataset_dir} has no dataset_info.json (relative paths are read from "
                        f"{os.getcwd()}); point dataset_dir at the folder that registers "
                        f"{', '.join(n for _, n in wanted)}", "dataset_dir")]
    except (OSError, ValueError) as exc:
        return [Problem(f"{info_path}: not readable JSON ({exc})", "dataset_dir")]
    if not isinstance(info, dict):
        return [Problem(f"{info_path}: expected a JSON object of dataset entries", "dataset_dir")]
    problems: list[Problem] = []
    for key, name in wanted:
        if name not in info:
            problems.append(Problem(f"{key}: {name} is not registered in {info_path}{did_you_mean(name, info)}; "
                                    f"register it (minicpm-recipes register FILE --name {shlex.quote(name)} --dataset-dir "
                                    f"{shlex.quote(str(dataset_dir))}) or fix the name", key))
            continue
        entry = info[name] if isinstance(info[name], dict) else {}
        if validate is None or any(entry.get(k) for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")):
            continue  # hub datasets are downloaded by LLaMA-Factory itself
        stage = str(cfg.get("stage", "sft"))
        kwargs: dict[str, Any] = {"stage": stage if stage in VALIDATOR_STAGES else None}
        if isinstance(cfg.get("cutoff_len"), int):
            kwargs["cutoff_len"] = cfg["cutoff_len"]
        try:
            result = validate(name, dataset_dir, **kwargs)
        except UserError as exc:
            problems.append(Problem(f"{key}: {name}: {exc}", key))
            continue
        except Exception as exc:  # noqa: BLE001 - the validator's bug must not stop a training run
            if notes is not None:
                notes.append(f"could not validate dataset {name} ({type(exc).__name__}: {exc}); "
                             "LLaMA-Factory will still check it when it loads it")
            continue
        if not getattr(result, "ok", True):
            found = [p for p in (getattr(result, "problems", ()) or ())
                     if getattr(p, "severity", "error") == "error"]
            shown = "; ".join(_one_line(p.format() if hasattr(p, "format") else str(p), 300)
                              for p in found[:max_problems])
            more = f" (and {len(found) - max_problems} more)" if len(found) > max_problems else ""
            problems.append(Problem(f"{key}: {name} does not pass validation: {shown}{more}; "
                                    f"see `minicpm-recipes validate {name} --dataset-dir {dataset_dir}`", key))
    return problems


# ---- LLaMA-Factory's own parser -----------------------------------------------------------------------------

def lf_parser_problems(config_path: str | Path, overrides: Mapping[str, Any], *, accelerate_config: str | None = None,
                       cfg: Mapping[str, Any] | None = None) -> list[Problem]:
    """Run LLaMA-Factory's get_train_args (and DeepSpeed's / accelerate's loaders) on the config, in a child."""
    from .. import lfcheck

    items: list[tuple[str, str | Path]] = [("train", config_path)]
    if cfg is not None and cfg.get("deepspeed") not in (None, "") and Path(str(cfg["deepspeed"])).is_file():
        items.append(("deepspeed", str(cfg["deepspeed"])))
    if accelerate_config:
        items.append(("accelerate", accelerate_config))
    try:
        results = lfcheck.check_files(items, overrides=dict(overrides))
    except RuntimeError as exc:
        return [Problem(f"could not run LLaMA-Factory's parser: {str(exc).strip().splitlines()[0]}")]
    problems = []
    for r in results:
        if not r.ok:
            what = {"train": "LLaMA-Factory rejects", "deepspeed": "DeepSpeed rejects",
                    "accelerate": "accelerate rejects"}.get(r.kind, "rejects")
            hint = unused_keys_hint(r.error or "", installed_versions()) if r.kind == "train" else ""
            problems.append(Problem(f"{what} {r.path}: {_one_line(r.error or '')}{hint}"))
    return problems


UNUSED_KEYS_RE = re.compile(r"Some keys are not used by the HfArgumentParser: \[([^\]]*)\]")
# training arguments later transformers releases removed, and what replaces them
REMOVED_ARGUMENTS = {"warmup_ratio": "warmup_steps: 0.1 (in transformers 5 a float below 1 is a ratio)"}


@dataclass(frozen=True)
class Versions:
    llamafactory: str | None
    transformers: str | None
    transformers_supported: str | None  # the transformers requirement of the installed LLaMA-Factory
    version_check_disabled: bool


def installed_versions(env: Mapping[str, str] | None = None) -> Versions:
    """The installed LLaMA-Factory and transformers, and the transformers range LLaMA-Factory declares."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    supported = None
    try:
        for req in metadata.requires("llamafactory") or ():
            name, spec = re.match(r"\s*([A-Za-z0-9_.-]+)\s*([^;]*)", req).groups()
            if name.lower() == "transformers" and ";" not in req:
                supported = spec.strip() or None
    except metadata.PackageNotFoundError:
        pass
    env = os.environ if env is None else env
    return Versions(version("llamafactory"), version("transformers"), supported,
                    env.get("DISABLE_VERSION_CHECK", "0").lower() in TRUE_STRINGS)


def unused_keys_hint(error: str, versions: Versions) -> str:
    """Why LLaMA-Factory's parser found keys it does not use, and how to fix it ('' for other errors).

    Keys an installed transformers outside LLaMA-Factory's range no longer has (warmup_ratio after 5.6) are
    the usual cause: LLaMA-Factory's own version check stops that unless DISABLE_VERSION_CHECK=1 hides it."""
    match = UNUSED_KEYS_RE.search(error)
    if not match:
        return ""
    keys = re.findall(r"'([^']+)'", match.group(1))
    outside = False
    if versions.transformers and versions.transformers_supported:
        try:
            from packaging.specifiers import SpecifierSet

            outside = versions.transformers not in SpecifierSet(versions.transformers_supported)
        except Exception:  # noqa: BLE001 - an unparsable requirement: no verdict
            outside = False
    replaced = [f"{k} with {REMOVED_ARGUMENTS[k]}" for k in keys if k in REMOVED_ARGUMENTS]
    if outside:
        hidden = " (DISABLE_VERSION_CHECK=1 hides LLaMA-Factory's own check)" if versions.version_check_disabled else ""
        text = (f" -- transformers {versions.transformers} is outside the range LLaMA-Factory {versions.llamafactory} "
                f"supports (transformers{versions.transformers_supported}){hidden} and no longer has "
                f"{', '.join(keys)}; install a supported one: pip install 'transformers{versions.transformers_supported}'")
        if replaced:
            text += f", or replace {'; '.join(replaced)}"
        return text
    if replaced:
        return f" -- the installed transformers {versions.transformers} has no {', '.join(keys)}: replace {'; '.join(replaced)}"
    return (f" -- {', '.join(keys)}: not an argument of LLaMA-Factory {versions.llamafactory} with transformers "
            f"{versions.transformers}; remove it or fix its spelling (`llamafactory-cli train -h` lists them)")


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
