"""Read the recipe catalog in recipes/: model families, stage and method defaults, distributed set-ups."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .resources import recipes_dir


@dataclass(frozen=True)
class Model:
    id: str
    slug: str
    template: str | None
    trust_remote_code: bool
    flash_attn: str
    requires_flash_attn: bool
    lora_target: str
    lora_rank: int
    lora_alpha: int
    aliases: tuple[str, ...] = ()
    template_note: str | None = None
    notes: str | None = None
    path: str | None = None  # a local folder standing in for the hub id

    @property
    def name_or_path(self) -> str:
        return self.path or self.id


@dataclass(frozen=True)
class Stage:
    name: str
    llamafactory_stage: str
    description: str
    needs_template: bool
    default_dataset: str
    method_defaults: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    defaults: dict[str, Any]


@dataclass(frozen=True)
class Dist:
    name: str
    description: str
    engine: str  # llamafactory | torchrun | accelerate
    deepspeed: dict[str, Any] | None = None
    accelerate: dict[str, Any] | None = None


@dataclass(frozen=True)
class Catalog:
    models: tuple[Model, ...]
    stages: dict[str, Stage]
    methods: dict[str, Method]
    dists: dict[str, Dist]
    common: dict[str, Any] = field(default_factory=dict)

    # ---- lookups -------------------------------------------------------------------------------------
    def stage(self, name: str) -> Stage:
        key = name.strip().lower()
        for stage in self.stages.values():
            if key == stage.name or key in stage.aliases:
                return stage
        choices = sorted(self.stages) + sorted(a for s in self.stages.values() for a in s.aliases)
        raise UserError(f"unknown stage {name!r}{_did_you_mean(key, choices)}; choose one of: {', '.join(choices)}")

    def method(self, name: str) -> Method:
        if name in self.methods:
            return self.methods[name]
        raise UserError(
            f"unknown method {name!r}{_did_you_mean(name, self.methods)}; choose one of: {', '.join(self.methods)}"
        )

    def dist(self, name: str) -> Dist:
        if name in self.dists:
            return self.dists[name]
        raise UserError(
            f"unknown --dist {name!r}{_did_you_mean(name, self.dists)}; choose one of: {', '.join(self.dists)}"
        )

    def find_model(self, name: str) -> Model | None:
        """The catalog entry for a hub id, alias or slug (case-insensitive), else None."""
        key = name.strip().lower()
        for model in self.models:
            if key in (model.id.lower(), model.slug.lower(), *(a.lower() for a in model.aliases)):
                return model
        return None

    def resolve_model(self, name: str, template: str | None = None) -> Model:
        """Resolve --model (hub id, alias, or local folder) and --template into a Model.

        A local folder whose name matches a known model (e.g. ~/models/MiniCPM-SALA) is treated as that model.
        A local folder or unknown id needs an explicit --template.
        """
        known = self.find_model(name)
        local = Path(name).expanduser()
        is_local = local.is_dir()
        if known is None and is_local:
            base = local.resolve().name.lower()
            known = next((m for m in self.models if m.id.split("/")[-1].lower() == base), None)
        if known is not None:
            updates: dict[str, Any] = {}
            if is_local:
                updates["path"] = str(local)
            if template:
                updates["template"] = template
            if known.template is None and not template:
                raise UserError(
                    f"model {known.id} has no LLaMA-Factory template: {known.template_note} "
                    f"(pass --template NAME to choose one)"
                )
            return _replace(known, **updates)
        if not template:
            names = ", ".join(m.id for m in self.models)
            if not is_local and _looks_like_path(name):
                raise UserError(
                    f"--model {name}: no such folder here; if it exists on the training machine, pass --template NAME "
                    f"(a LLaMA-Factory chat template such as cpm4, qwen3, llama3) to render for it anyway"
                )
            where = "local folder" if is_local else "model id"
            raise UserError(
                f"unknown {where} {name!r}: pass --template NAME (a LLaMA-Factory chat template such as cpm4, qwen3, "
                f"llama3) to use it, or choose a known model: {names}{_did_you_mean(name, [m.id for m in self.models])}"
            )
        trust_remote_code = _needs_remote_code(local) if is_local else False
        slug = (local.resolve().name if is_local else name.split("/")[-1]).lower() or "model"
        return Model(
            id=name,
            slug=slug,
            template=template,
            trust_remote_code=trust_remote_code,
            flash_attn="auto",
            requires_flash_attn=False,
            lora_target="all",
            lora_rank=8,
            lora_alpha=16,
            path=str(local) if is_local else None,
        )


def _replace(model: Model, **changes: Any) -> Model:
    from dataclasses import replace

    return replace(model, **changes)


def _looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name in (".", "..")


def _needs_remote_code(folder: Path) -> bool:
    """A local model folder whose config.json maps auto classes to its own modeling code."""
    config = folder / "config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("auto_map"))
    except (OSError, ValueError):
        return False


def _did_you_mean(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def did_you_mean(word: str, choices: Any) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    return _did_you_mean(word, choices)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read recipe file: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def load_catalog(folder: Path | None = None) -> Catalog:
    folder = folder or recipes_dir()
    return _load_catalog_cached(str(folder))


@lru_cache(maxsize=4)
def _load_catalog_cached(folder: str) -> Catalog:
    root = Path(folder)
    models_doc = _read_yaml(root / "models.yaml")
    stages_doc = _read_yaml(root / "stages.yaml")
    dist_doc = _read_yaml(root / "distributed.yaml")

    models = tuple(
        Model(
            id=m["id"],
            slug=m["slug"],
            template=m.get("template"),
            trust_remote_code=bool(m.get("trust_remote_code", False)),
            flash_attn=m.get("flash_attn", "auto"),
            requires_flash_attn=bool(m.get("requires_flash_attn", False)),
            lora_target=str(m.get("lora_target", "all")),
            lora_rank=int(m.get("lora_rank", 8)),
            lora_alpha=int(m.get("lora_alpha", 16)),
            aliases=tuple(m.get("aliases", ())),
            template_note=m.get("template_note"),
            notes=m.get("notes"),
        )
        for m in models_doc["models"]
    )
    stages = {
        name: Stage(
            name=name,
            llamafactory_stage=s["llamafactory_stage"],
            description=s["description"],
            needs_template=bool(s["needs_template"]),
            default_dataset=s["default_dataset"],
            method_defaults=dict(s.get("method", {})),
            defaults=dict(s.get("defaults", {})),
            aliases=tuple(s.get("aliases", ())),
        )
        for name, s in stages_doc["stages"].items()
    }
    methods = {
        name: Method(name=name, description=m["description"], defaults=dict(m.get("defaults", {})))
        for name, m in stages_doc["methods"].items()
    }
    dists = {
        name: Dist(
            name=name,
            description=d["description"],
            engine=d["engine"],
            deepspeed=d.get("deepspeed"),
            accelerate=d.get("accelerate"),
        )
        for name, d in dist_doc["distributed"].items()
    }
    return Catalog(models=models, stages=stages, methods=methods, dists=dists, common=dict(stages_doc["common"]))
