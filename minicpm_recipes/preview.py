"""Preview what LLaMA-Factory will feed the model: the first sample as token / id / label, and the token
lengths of the dataset against `cutoff_len`.

Everything model- or template-specific is LLaMA-Factory's own code: `get_train_args` parses the config,
`load_tokenizer` + `get_template_and_fix_tokenizer` build the template and `get_dataset` runs the stage's
processor. This module only picks what to run (pure `preview_config`) and summarises the result (pure
`length_stats`, `sample_rows`, `format_report`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

IGNORE_INDEX = -100
NO_LIMIT = 1_000_000_000  # cutoff_len for the statistics pass: nothing is truncated

# LLaMA-Factory training stage -> the data stage its workflow passes to get_dataset
DATA_STAGE = {"pt": "pt", "sft": "sft", "rm": "rm", "dpo": "rm", "kto": "kto", "ppo": "ppo"}

# keys that only matter for running training, not for tokenizing: dropped so that any config previews on CPU
_RUNTIME_KEYS = ("deepspeed", "fsdp", "fsdp_config", "resume_from_checkpoint", "tokenized_path", "eval_dataset",
                 "load_best_model_at_end", "predict_with_generate", "do_eval", "do_predict")


@dataclass(frozen=True)
class TokenRow:
    index: int
    id: int
    label: int
    token: str


@dataclass(frozen=True)
class LengthStats:
    count: int
    cutoff_len: int
    min: int
    mean: float
    median: float
    p95: int
    max: int
    over_cutoff: int  # samples longer than cutoff_len: LLaMA-Factory truncates them
    longest: list[int] = field(default_factory=list)  # sample indices of the longest ones (up to 5)


@dataclass
class PreviewResult:
    config: str
    stage: str
    template: str | None
    cutoff_len: int
    packing: bool
    sample_field: str  # which part of the first sample the rows show (input_ids, chosen_input_ids, ...)
    rows: list[TokenRow]
    stats: LengthStats | None
    total_tokens: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [asdict(r) for r in self.rows]
        return data


# ---- pure core -------------------------------------------------------------------------------------------

def preview_config(config: dict[str, Any], *, max_samples: int | None = None) -> dict[str, Any]:
    """The training config as parsed for the preview: same model, template, data and cutoff; no distributed
    set-up, no mixed precision, CPU only, no eval split, so that any recipe previews on any machine."""
    if not isinstance(config, dict):
        raise UserError("the config is not a YAML mapping of LLaMA-Factory arguments")
    missing = [k for k in ("model_name_or_path", "dataset") if not config.get(k)]
    if missing:
        raise UserError(f"the config has no {' and no '.join(missing)}; preview needs a training config "
                        "(for example one written by `minicpm-recipes render`)")
    out = {k: v for k, v in config.items() if k not in _RUNTIME_KEYS}
    out.update(
        use_cpu=True, bf16=False, fp16=False, pure_bf16=False, val_size=0.0, eval_strategy="no",
        overwrite_output_dir=True, overwrite_cache=True, streaming=False, report_to="none", do_train=True,
        dataloader_num_workers=0,
    )
    workers = out.get("preprocessing_num_workers")
    if workers is not None:
        out["preprocessing_num_workers"] = max(1, min(int(workers), os.cpu_count() or 1))
    if max_samples is not None:
        out["max_samples"] = max_samples
    return out


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def length_stats(lengths: list[int], cutoff_len: int) -> LengthStats:
    """Summary of per-sample token lengths against cutoff_len."""
    if not lengths:
        return LengthStats(0, cutoff_len, 0, 0.0, 0.0, 0, 0, 0, [])
    s = sorted(lengths)
    n = len(s)
    median = float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    longest = sorted(range(n), key=lambda i: (-lengths[i], i))[:5]
    return LengthStats(
        count=n, cutoff_len=cutoff_len, min=s[0], mean=sum(s) / n, median=median, p95=_percentile(s, 0.95),
        max=s[-1], over_cutoff=sum(1 for x in lengths if x > cutoff_len), longest=longest,
    )


def sample_length(example: dict[str, Any], data_stage: str) -> int:
    """Token length of one processed example (pairwise: the longer of chosen and rejected)."""
    if data_stage == "rm":
        return max(len(example["chosen_input_ids"]), len(example["rejected_input_ids"]))
    return len(example["input_ids"])


def sample_fields(example: dict[str, Any], data_stage: str) -> tuple[str, list[int], list[int]]:
    """(name, input ids, labels) of the part of a processed example shown in the table."""
    if data_stage == "rm":
        return "chosen_input_ids", list(example["chosen_input_ids"]), list(example["chosen_labels"])
    ids = list(example["input_ids"])
    if "labels" in example:
        return "input_ids", ids, list(example["labels"])
    return "input_ids", ids, ids  # pre-training: every token is a target (the collator copies input_ids)


def sample_rows(ids: list[int], labels: list[int], tokens: list[str]) -> list[TokenRow]:
    if not (len(ids) == len(labels) == len(tokens)):
        raise ValueError("ids, labels and tokens must have the same length")
    return [TokenRow(i, int(t), int(lab), tok) for i, (t, lab, tok) in enumerate(zip(ids, labels, tokens, strict=True))]


def show_token(text: str) -> str:
    """A token's text on one line: escapes for control characters and surrounding spaces made visible."""
    shown = text.encode("unicode_escape").decode("ascii") if any(ord(c) < 32 for c in text) else text
    if shown != shown.strip() or shown == "":
        shown = repr(shown)
    return shown


def format_table(rows: list[TokenRow], max_rows: int = 0) -> list[str]:
    shown = rows if max_rows <= 0 or len(rows) <= max_rows else rows[:max_rows]
    width = max([len(str(len(rows)))] + [1])
    idw = max([2] + [len(str(r.id)) for r in shown])
    lines = [f"{'#':>{width}}  {'id':>{idw}}  {'label':>6}  token"]
    for r in shown:
        lines.append(f"{r.index:>{width}}  {r.id:>{idw}}  {r.label:>6}  {show_token(r.token)}")
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more tokens (--rows 0 shows all)")
    return lines


def format_report(result: PreviewResult, max_rows: int = 0) -> str:
    lines = [f"config: {result.config}",
             f"stage: {result.stage}   template: {result.template or '(none)'}   cutoff_len: {result.cutoff_len}"
             + ("   packing: on" if result.packing else "")]
    trained = sum(1 for r in result.rows if r.label != IGNORE_INDEX)
    lines.append("")
    lines.append(f"first sample ({result.sample_field}): {len(result.rows)} tokens, {trained} trained on, "
                 f"{len(result.rows) - trained} masked (label {IGNORE_INDEX})")
    lines.extend(format_table(result.rows, max_rows))
    st = result.stats
    if st is not None:
        lines.append("")
        lines.append(f"token lengths of {st.count} samples (as LLaMA-Factory tokenizes them, before truncation):")
        lines.append(f"  min {st.min}  mean {st.mean:.1f}  median {st.median:g}  p95 {st.p95}  max {st.max}")
        pct = 100.0 * st.over_cutoff / st.count if st.count else 0.0
        lines.append(f"  {st.over_cutoff} of {st.count} ({pct:.1f}%) longer than cutoff_len {st.cutoff_len}"
                     + (": they will be truncated" if st.over_cutoff else ""))
        if st.over_cutoff:
            lines.append("  longest samples (0-based, after max_samples): "
                         + ", ".join(f"#{i}" for i in st.longest))
        lines.append(f"total tokens: {result.total_tokens}")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


# ---- edges: read the config, run LLaMA-Factory -----------------------------------------------------------

def load_config(path: str | Path) -> dict[str, Any]:
    """Read a training YAML exactly as `llamafactory-cli train FILE` does (OmegaConf)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such config file; render one with `minicpm-recipes render STAGE`")
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(p.absolute()), resolve=True)
    except Exception as exc:  # noqa: BLE001 - YAML errors of several kinds
        raise UserError(f"{path}: not a readable YAML config ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _quiet():
    """LLaMA-Factory prints the processed example and logs progress; keep our report clean."""
    import logging

    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")
    sink = io.StringIO()
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:  # pragma: no cover - datasets comes with LLaMA-Factory
        pass
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sink):
            yield sink
    finally:
        logging.disable(previous)


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    raw = tokenizer.convert_ids_to_tokens(ids)
    texts = []
    for i, tok in zip(ids, raw, strict=True):
        text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        texts.append(text if "\ufffd" not in text else str(tok))  # a partial UTF-8 byte: show the raw token
    return texts


def run_preview(config_path: str | Path, *, max_samples: int | None = None, stats: bool = True) -> PreviewResult:
    """Tokenize the config's dataset with LLaMA-Factory's template and the model's tokenizer."""
    raw = load_config(config_path)
    config = preview_config(raw, max_samples=max_samples)
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")
    with _quiet():
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        try:
            model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(config))
        except (ValueError, SystemExit) as exc:
            raise UserError(f"{config_path}: LLaMA-Factory rejects the config: {exc}") from exc
        stage = finetuning_args.stage
        data_stage = DATA_STAGE.get(stage)
        if data_stage is None:
            raise UserError(f"{config_path}: stage {stage!r} is not previewable; use pt, sft, dpo, kto, rm or ppo")
        model = str(model_args.model_name_or_path)
        if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
            raise UserError(f"{config_path}: model_name_or_path {model}: no such folder")
        try:
            tokenizer_module = load_tokenizer(model_args)
        except (OSError, ValueError) as exc:
            cause = exc.__cause__ or exc
            raise UserError(f"{config_path}: cannot load the tokenizer of {model} "
                            f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})") from exc
        tokenizer = tokenizer_module["tokenizer"]
        try:
            template = get_template_and_fix_tokenizer(tokenizer, data_args)
        except ValueError as exc:  # e.g. "Template nosuch does not exist."
            raise UserError(f"{config_path}: template: {exc}; choose one of `minicpm-recipes list --templates`") \
                from exc

        cutoff_len = data_args.cutoff_len
        packing = bool(data_args.packing)
        notes: list[str] = []

        def dataset(cutoff: int, samples: int | None, pack: bool):
            data_args.cutoff_len = cutoff
            data_args.max_samples = samples
            data_args.packing = pack
            try:
                return get_dataset(template, model_args, data_args, training_args, data_stage,
                                   **tokenizer_module)["train_dataset"]
            except (ValueError, RuntimeError, FileNotFoundError) as exc:
                raise UserError(f"{config_path}: LLaMA-Factory cannot build the dataset: {exc}") from exc

        configured_samples = data_args.max_samples
        first = dataset(cutoff_len, 1, False)
        if len(first) == 0:
            raise UserError(f"{config_path}: the first record of {data_args.dataset} gives no sample "
                            "(LLaMA-Factory dropped it as invalid); check it with `minicpm-recipes validate`")
        example = first[0]
        name, ids, labels = sample_fields(example, data_stage)
        rows = sample_rows(ids, labels, _token_texts(tokenizer, ids))

        length_summary = None
        total = 0
        if stats:
            full = dataset(NO_LIMIT, configured_samples, False)
            lengths = [sample_length(ex, data_stage) for ex in full]
            length_summary = length_stats(lengths, cutoff_len)
            total = sum(lengths)
            if stage == "pt" and packing:
                blocks, dropped = divmod(total, cutoff_len)
                notes.append(f"pre-training packs all texts into blocks of cutoff_len: {blocks} block(s), the last "
                             f"{dropped} token(s) are dropped; nothing is truncated")
                if blocks == 0:
                    notes.append(f"the dataset has fewer tokens ({total}) than cutoff_len ({cutoff_len}): training "
                                 "would find no sample; lower cutoff_len or add data")
        if packing and stage != "pt":
            notes.append("packing is on: samples are concatenated into sequences of cutoff_len for training")
        if data_stage == "rm":
            notes.append("pairwise data: the table shows prompt + chosen; lengths are the longer of chosen/rejected")

    return PreviewResult(
        config=str(config_path), stage=stage, template=data_args.template, cutoff_len=cutoff_len, packing=packing,
        sample_field=name, rows=rows, stats=length_summary if stats else None, total_tokens=total, notes=notes,
    )
