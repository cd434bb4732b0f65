"""Put rendered recipes and the demo data into an existing LLaMA-Factory checkout, safely.

Two steps, like `render`: `plan_install` reads the checkout and returns every action (pure: writes nothing);
`apply_install` carries a plan out. What goes where, relative to the checkout (the folder commands run from):

- `examples/minicpm_config/*.yaml|.json|.sh`: training YAMLs, DeepSpeed / accelerate configs, node scripts.
  A DeepSpeed or accelerate config the checkout already has (`examples/deepspeed/NAME`,
  `examples/accelerate/NAME`) with the same settings (parsed, compared as data) is referenced, not copied.
- `data/<demo files>` plus their entries in `data/dataset_info.json`, through `data.registry` (the same safe
  registration as `minicpm-recipes register`); every other entry stays as it is.
- `examples/minicpm_config/.minicpm-recipes.json`: the manifest, sha256 of each file as we wrote it.

A file that exists with other bytes is replaced only when the manifest proves we wrote it and nobody edited it
since; otherwise it is a conflict: refused (nothing at all is written), or with `force` backed up then replaced.
Unchanged files are never rewritten, so a second run with the same options changes no byte.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .catalog import load_catalog
from .errors import UserError
from .fsutil import atomic_write_bytes
from .render import DEFAULT_MASTER_PORT, Rendered, RenderOptions, render
from .resources import datasets_dir

CONFIG_DIR = "examples/minicpm_config"
DATA_DIR = "data"
DATASET_INFO = f"{DATA_DIR}/dataset_info.json"
MANIFEST = f"{CONFIG_DIR}/.minicpm-recipes.json"
MANIFEST_FORMAT = 1
CHECKOUT_DEEPSPEED = "examples/deepspeed"
CHECKOUT_ACCELERATE = "examples/accelerate"

DEFAULT_MODELS = ("minicpm-sala", "minicpm4.1")
DEFAULT_STAGES = ("sft", "dpo", "kto", "pretrain")
# variant -> (method, distributed set-up: None = --dist, multi-node?)
VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "lora": ("lora", "single", False),  # LoRA on one GPU
    "full": ("full", None, False),  # full fine-tuning, one node x --gpus-per-node, --dist (ZeRO-3)
    "multinode": ("full", None, True),  # the same on --nodes machines
}
DEFAULT_VARIANTS = tuple(VARIANTS)
DIFF_LINES = 40

_PACKAGE_NAME_RE = re.compile(r"""\bname\s*=\s*["']llamafactory["']""")


@dataclass(frozen=True)
class InstallOptions:
    into: Path
    models: tuple[str, ...] = DEFAULT_MODELS
    stages: tuple[str, ...] = DEFAULT_STAGES
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    template: str | None = None
    dist: str = "zero3"  # for the full / multinode variants
    gpus_per_node: int = 8
    nodes: int = 2  # for the multinode variant
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT
    sets: tuple[str, ...] = ()
    force: bool = False


@dataclass(frozen=True)
class FileAction:
    path: str  # relative to the checkout, POSIX
    action: str  # create | update | unchanged | conflict
    content: bytes
    role: str  # train | deepspeed | accelerate | launch | data | manifest
    executable: bool = False
    current: bytes | None = None  # what is on disk now
    reason: str = ""  # for conflicts: why it is not ours to replace

    def diff(self, limit: int = DIFF_LINES) -> str:
        """A unified diff from the file on disk to what install would write (at most `limit` lines)."""
        old = (self.current or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
        new = self.content.decode("utf-8", errors="replace").splitlines(keepends=True)
        lines = list(difflib.unified_diff(old, new, fromfile=f"{self.path} (on disk)",
                                          tofile=f"{self.path} (minicpm-recipes)", n=1))
        lines = [line if line.endswith("\n") else line + "\n" for line in lines]
        if len(lines) > limit:
            lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)\n"]
        return "".join(lines)


@dataclass(frozen=True)
class DatasetAction:
    name: str
    entry: dict[str, Any]
    outcome: str  # added | updated | unchanged (as the registry plans it)


@dataclass(frozen=True)
class Recipe:
    title: str
    train_file: str  # relative to the checkout
    nodes: int
    gpus_per_node: int
    commands: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstallPlan:
    root: Path
    files: tuple[FileAction, ...]  # the manifest last
    datasets: tuple[DatasetAction, ...]
    recipes: tuple[Recipe, ...]
    reused: tuple[str, ...]  # checkout files the recipes reference instead of a copy of ours
    force: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def conflicts(self) -> tuple[FileAction, ...]:
        return tuple(f for f in self.files if f.action == "conflict")

    @property
    def changes(self) -> tuple[FileAction, ...]:
        return tuple(f for f in self.files if f.action != "unchanged")

    @property
    def dataset_changes(self) -> tuple[DatasetAction, ...]:
        return tuple(d for d in self.datasets if d.outcome != "unchanged")


@dataclass(frozen=True)
class InstallResult:
    created: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    backups: tuple[tuple[str, str], ...]  # (file, its backup)
    datasets: tuple[DatasetAction, ...]


# ---- the checkout ----------------------------------------------------------------------------------------


def check_checkout(root: Path) -> None:
    """Raise UserError unless `root` is a LLaMA-Factory source checkout.

    A checkout has the package source `src/llamafactory/__init__.py`, a `pyproject.toml` or `setup.py` naming
    the project `llamafactory`, and the `data/` folder (where `dataset_info.json` lives).
    """
    hint = "pass the folder you cloned https://github.com/hiyouga/LLaMA-Factory into"
    if not root.exists():
        raise UserError(f"--into {root}: no such folder; {hint}")
    if not root.is_dir():
        raise UserError(f"--into {root}: not a folder; {hint}")
    problems = []
    if not (root / "src" / "llamafactory" / "__init__.py").is_file():
        problems.append("no src/llamafactory/__init__.py")
    packaging = [root / name for name in ("pyproject.toml", "setup.py") if (root / name).is_file()]
    if not any(_PACKAGE_NAME_RE.search(_read_text(p)) for p in packaging):
        problems.append("no pyproject.toml or setup.py naming the project llamafactory")
    if not (root / DATA_DIR).is_dir():
        problems.append("no data/ folder")
    if problems:
        parent = next((p for p in root.resolve().parents if _looks_like_checkout(p)), None)
        where = f" (did you mean {parent}?)" if parent else ""
        raise UserError(f"--into {root}: not a LLaMA-Factory checkout ({'; '.join(problems)}){where}; {hint}")


def _looks_like_checkout(path: Path) -> bool:
    return (path / "src" / "llamafactory" / "__init__.py").is_file() and (path / DATA_DIR).is_dir()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _read_bytes(root: Path, rel: str) -> bytes | None:
    path = root / rel
    if path.is_dir():
        raise UserError(f"{path}: is a folder where minicpm-recipes install writes a file; move it away")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); fix its permissions") from exc


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- manifest ---------------------------------------------------------------------------------------------


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of earlier installs: {"files": {path: sha256}, "datasets": [names]} (empty when none)."""
    raw = _read_bytes(root, MANIFEST)
    if raw is None:
        return {"files": {}, "datasets": []}
    try:
        data = json.loads(raw)
        files = data["files"]
        datasets = data.get("datasets", [])
        if not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
                and isinstance(datasets, list)):
            raise ValueError("unexpected shape")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{root / MANIFEST}: not a minicpm-recipes install manifest ({exc}); restore it, or delete it "
            "(then every existing file counts as yours and is only replaced with --force)"
        ) from exc
    return {"files": dict(files), "datasets": list(datasets)}


def manifest_bytes(files: dict[str, str], datasets: list[str]) -> bytes:
    doc = {
        "generator": "minicpm-recipes install",
        "format": MANIFEST_FORMAT,
        "note": "sha256 of each file as minicpm-recipes wrote it; an edited file is never overwritten "
                "without --force. Delete this file to make install treat every file as yours.",
        "files": dict(sorted(files.items())),
        "datasets": sorted(set(datasets)),
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---- planning ---------------------------------------------------------------------------------------------


def _same_config(ours: str, theirs: bytes | None, kind: str) -> bool:
    """True when the checkout's config parses to exactly the same data as ours."""
    if theirs is None:
        return False
    try:
        if kind == "json":
            return json.loads(ours) == json.loads(theirs)
        return yaml.safe_load(ours) == yaml.safe_load(theirs)
    except (ValueError, yaml.YAMLError):
        return False


def _model_arg(name: str) -> str:
    """A local model folder as an absolute path, so that the YAML works from the checkout."""
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def _split(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        for part in str(value).split(","):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
    return tuple(out)


def _demo_datasets() -> tuple[Path, dict[str, Any]]:
    folder = datasets_dir() / "demo"
    info_path = folder / "dataset_info.json"
    try:
        return folder, json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{info_path}: cannot read the bundled demo datasets ({exc}); reinstall minicpm-recipes") from exc


def plan_install(options: InstallOptions) -> InstallPlan:
    """Everything install would do in `options.into`, without writing anything."""
    root = Path(options.into).expanduser()
    check_checkout(root)
    root = root.resolve()
    catalog = load_catalog()
    models = _split(options.models)
    stages = []
    for name in _split(options.stages):
        stage = catalog.stage(name)
        if stage not in stages:
            stages.append(stage)
    variants = _split(options.variants)
    for variant in variants:
        if variant not in VARIANTS:
            raise UserError(f"--variants {variant}: unknown variant; choose from {', '.join(VARIANTS)}")
    if not models or not stages or not variants:
        raise UserError("--models, --stages and --variants each need at least one value")
    if "multinode" in variants and options.nodes < 2:
        raise UserError(f"--nodes {options.nodes}: the multinode variant needs 2 or more nodes "
                        "(or leave multinode out of --variants)")
    catalog.dist(options.dist)

    manifest = read_manifest(root)
    desired: dict[str, tuple[bytes, str, bool]] = {}  # path -> (content, role, executable)
    recipes: list[Recipe] = []
    reused: list[str] = []
    cache: dict[str, bytes | None] = {}

    def checkout_file(rel: str) -> bytes | None:
        if rel not in cache:
            cache[rel] = _read_bytes(root, rel) if (root / rel).is_file() else None
        return cache[rel]

    def want(path: str, content: bytes, role: str, executable: bool = False) -> None:
        if path in desired and desired[path][0] != content:  # two recipes, one file name: a bug of ours
            raise RuntimeError(f"install would write two different versions of {path}")
        desired[path] = (content, role, executable)

    for model_name in models:
        for stage in stages:
            for variant in variants:
                method, dist, multinode = VARIANTS[variant]
                dist = dist or options.dist
                nodes = options.nodes if multinode else 1
                gpus = 1 if variant == "lora" else options.gpus_per_node
                base = RenderOptions(
                    stage=stage.name, method=method, dist=dist, nodes=nodes, gpus_per_node=gpus,
                    model=_model_arg(model_name), template=options.template, dataset_dir=DATA_DIR,
                    sets=tuple(options.sets), master_addr=options.master_addr, master_port=options.master_port,
                    ref_dir=CONFIG_DIR,
                )
                rendered, refs = _with_config_refs(render(base, catalog), base, catalog, checkout_file, reused)
                for f in rendered.files:
                    target = refs.get(f.role, f"{CONFIG_DIR}/{f.name}")
                    if target.startswith(f"{CONFIG_DIR}/"):
                        want(target, f.content.encode("utf-8"), f.role, f.executable)
                label = "LoRA, 1 GPU" if variant == "lora" else (
                    f"full, {dist}, {nodes} nodes x {gpus} GPUs" if multinode else f"full, {dist}, {gpus} GPUs")
                model_id = rendered.params["model_name_or_path"]
                recipes.append(Recipe(
                    title=f"{model_id} {stage.name} ({label})",
                    train_file=f"{CONFIG_DIR}/{rendered.train_file}",
                    nodes=nodes, gpus_per_node=gpus, commands=rendered.commands, notes=rendered.notes,
                ))

    # the demo data each chosen stage trains on
    demo_dir, demo_info = _demo_datasets()
    dataset_names: list[str] = []
    for stage in stages:
        name = stage.default_dataset
        if name not in demo_info:
            raise UserError(f"{demo_dir / 'dataset_info.json'}: has no entry {name!r}; reinstall minicpm-recipes")
        if name in dataset_names:
            continue
        dataset_names.append(name)
        file_name = demo_info[name]["file_name"]
        try:
            content = (demo_dir / file_name).read_bytes()
        except OSError as exc:
            raise UserError(f"{demo_dir / file_name}: cannot read bundled demo data ({exc.strerror}); "
                            "reinstall minicpm-recipes") from exc
        want(f"{DATA_DIR}/{file_name}", content, "data")

    files: list[FileAction] = []
    for path, (content, role, executable) in desired.items():
        files.append(_file_action(root, path, content, role, executable, manifest["files"].get(path)))
    data_first = sorted(files, key=lambda f: (f.role != "data", f.path))

    datasets = tuple(
        DatasetAction(name, demo_info[name], _plan_registration(root, name, demo_info[name], demo_dir, options.force))
        for name in dataset_names
    )

    new_files = dict(manifest["files"])
    new_files.update({f.path: sha256(f.content) for f in files})
    new_manifest = manifest_bytes(new_files, list(manifest["datasets"]) + dataset_names)
    current = _read_bytes(root, MANIFEST)
    manifest_action = FileAction(
        MANIFEST, "unchanged" if current == new_manifest else ("create" if current is None else "update"),
        new_manifest, "manifest", current=current,
    )
    notes = []
    if any(r.nodes > 1 for r in recipes) and not options.master_addr:
        notes.append("multi-node: set MASTER_ADDR on every node to node 0's address (or install with --master-addr)")
    return InstallPlan(
        root=root, files=tuple(data_first) + (manifest_action,), datasets=datasets, recipes=tuple(recipes),
        reused=tuple(dict.fromkeys(reused)), force=options.force, notes=tuple(notes),
    )


def _with_config_refs(
    rendered: Rendered, base: RenderOptions, catalog, checkout_file, reused: list[str]
) -> tuple[Rendered, dict[str, str]]:
    """Point the recipe at the checkout's DeepSpeed / accelerate config when it is equivalent to ours.

    Our DeepSpeed config depends only on the ZeRO set-up, so it keeps its name; an accelerate config also
    holds the process counts, so ours gets a per-recipe name (two recipes never fight over one file).
    """
    ds = rendered.file("deepspeed")
    acc = rendered.file("accelerate")
    if ds is None and acc is None:
        return rendered, {}
    ds_ref = acc_ref = None
    if ds is not None:
        theirs = f"{CHECKOUT_DEEPSPEED}/{ds.name}"
        if _same_config(ds.content, checkout_file(theirs), "json"):
            ds_ref = theirs
            reused.append(theirs)
        else:
            ds_ref = f"{CONFIG_DIR}/{ds.name}"
    if acc is not None:
        theirs = f"{CHECKOUT_ACCELERATE}/{acc.name}"
        if _same_config(acc.content, checkout_file(theirs), "yaml"):
            acc_ref = theirs
            reused.append(theirs)
        else:
            acc_ref = f"{CONFIG_DIR}/{rendered.train_file[: -len('.yaml')]}_{acc.name}"
    refs = {role: ref for role, ref in (("deepspeed", ds_ref), ("accelerate", acc_ref)) if ref}
    return render(replace(base, deepspeed_ref=ds_ref, accelerate_ref=acc_ref), catalog), refs


def _file_action(root: Path, path: str, content: bytes, role: str, executable: bool, recorded: str | None) -> FileAction:
    current = _read_bytes(root, path)
    if current is None:
        return FileAction(path, "create", content, role, executable)
    if current == content:
        return FileAction(path, "unchanged", content, role, executable, current=current)
    if recorded is not None and sha256(current) == recorded:
        return FileAction(path, "update", content, role, executable, current=current)
    reason = ("edited since minicpm-recipes wrote it" if recorded is not None
              else "already exists and was not written by minicpm-recipes")
    return FileAction(path, "conflict", content, role, executable, current=current, reason=reason)


def _plan_registration(root: Path, name: str, entry: dict[str, Any], demo_dir: Path, force: bool) -> str:
    from .data.registry import NameTaken, plan_registration

    # validated against our copy of the data: the checkout's copy may not be written yet
    try:
        return plan_registration(root / DATASET_INFO, name, entry, force=force, validate=True,
                                 dataset_dir=demo_dir).action
    except NameTaken as taken:
        raise NameTaken(taken.path, name, taken.previous, taken.entry,
                        fix="nothing was written; rename your entry in that file, or rerun install with --force to "
                            f"replace it (the file is kept as {DATASET_INFO}.bak)") from None


# ---- applying ---------------------------------------------------------------------------------------------


def backup_path(path: Path) -> Path:
    """A free name beside `path` for the user's version: NAME.bak, NAME.bak1, NAME.bak2, ..."""
    candidate = path.with_name(path.name + ".bak")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak{n}")
        n += 1
    return candidate


def conflict_message(plan: InstallPlan) -> str:
    names = ", ".join(f"{plan.root / f.path} ({f.reason})" for f in plan.conflicts)
    return (f"{len(plan.conflicts)} file(s) would be overwritten: {names}; nothing was written. Keep your version "
            "(rename or move it, or install into another checkout), or rerun with --force to replace it "
            "(your version is kept as FILE.bak)")


def apply_install(plan: InstallPlan) -> InstallResult:
    """Carry out a plan: data files, dataset_info entries, configs, then the manifest. Refuses conflicts
    (writing nothing) unless the plan was made with force."""
    if plan.conflicts and not plan.force:
        raise UserError(conflict_message(plan))
    from .data.registry import register_entries

    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    backups: list[tuple[str, str]] = []

    def write(f: FileAction) -> None:
        path = plan.root / f.path
        if f.action == "unchanged":
            unchanged.append(f.path)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if f.action == "conflict":
                backup = backup_path(path)
                atomic_write_bytes(backup, f.current or b"")
                backups.append((f.path, backup.relative_to(plan.root).as_posix()))
            atomic_write_bytes(path, f.content, mode=0o755 if f.executable else None)
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror}); make {path.parent} writable") from exc
        (created if f.action == "create" else updated).append(f.path)

    data_files = [f for f in plan.files if f.role == "data"]
    other_files = [f for f in plan.files if f.role not in ("data", "manifest")]
    manifest = [f for f in plan.files if f.role == "manifest"]
    for f in data_files:
        write(f)
    # every entry in one locked write, so that dataset_info.json.bak is the file as it was before the install
    changing = [d for d in plan.datasets if d.outcome != "unchanged"]  # the others: not even the registry's lock
    done = {o.name: o.action for o in register_entries(plan.root / DATASET_INFO, [(d.name, d.entry) for d in changing],
                                                       force=plan.force, validate=True,
                                                       dataset_dir=plan.root / DATA_DIR)} if changing else {}
    outcomes = [DatasetAction(d.name, d.entry, done[d.name]) if d.name in done else d for d in plan.datasets]
    for f in other_files + manifest:
        write(f)
    return InstallResult(tuple(created), tuple(updated), tuple(unchanged), tuple(backups), tuple(outcomes))
