"""Fine-tune a chat model with transformers.Trainer: data checks, tokenization, LoRA/full, DeepSpeed, resume.

Heavy libraries (torch, transformers, peft) are imported inside the functions. Run through
`minicpm-recipes finetune ...` (one process), `torchrun --nproc_per_node N -m minicpm_recipes finetune ...`
(DDP / DeepSpeed) or `accelerate launch --config_file fsdp.yaml -m minicpm_recipes finetune ...` (FSDP).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import data as nd

SUMMARY_FILE = "finetune_summary.json"
# the catalog's flash_attn (LLaMA-Factory's names) -> transformers' attn_implementation; auto: the default
ATTN_IMPLEMENTATIONS = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": None}
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class FinetuneConfig:
    model: str
    train_data: str
    output_dir: str
    eval_data: str | None = None
    dev_ratio: float | None = None
    use_lora: bool = False
    lora_rank: int | None = None  # None: the recipe catalog's value for the model
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lora_target: str | None = None  # None: the catalog's; "all" = every linear layer except the output head
    merge_lora: bool = False
    deepspeed: str | None = None  # a JSON file, or zero2 / zero3 / zero3-offload
    learning_rate: float | None = None  # None: the catalog's sft default for the method
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1
    warmup_steps: int = 0
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_steps: int = 500
    save_steps: int = 500
    logging_steps: int = 10
    save_total_limit: int | None = None
    bf16: bool | None = None  # None: on when the GPU supports it
    gradient_checkpointing: bool = False
    seed: int = 42
    max_length: int = 2048
    resume: str | None = None  # None/"no", "yes"/"latest", a step number, or a checkpoint folder
    trust_remote_code: bool | None = None  # None: from the catalog / the model folder
    attn_implementation: str | None = None  # None: from the catalog (MiniCPM-SALA: flash_attention_2)
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's chat template
    report_to: str = "none"
    dataloader_num_workers: int = 0
    extra_callbacks: list[Any] = field(default_factory=list, repr=False)


# ---- small pure helpers --------------------------------------------------------------------------------
def model_defaults(model: str) -> dict[str, Any]:
    """LoRA target/rank/alpha and trust_remote_code for --model from the recipe catalog (generic otherwise)."""
    from ..catalog import load_catalog

    catalog = load_catalog()
    known = catalog.find_model(model)
    local = Path(model).expanduser()
    if known is None and local.is_dir():
        base = local.resolve().name.lower()
        known = next((m for m in catalog.models if m.id.split("/")[-1].lower() == base), None)
    if known is not None:
        return {"lora_target": known.lora_target, "lora_rank": known.lora_rank, "lora_alpha": known.lora_alpha,
                "trust_remote_code": known.trust_remote_code, "name_or_path": str(local) if local.is_dir() else known.id,
                "attn_implementation": ATTN_IMPLEMENTATIONS.get(known.flash_attn)}
    trust = False
    if local.is_dir():
        try:
            trust = bool(json.loads((local / "config.json").read_text(encoding="utf-8")).get("auto_map"))
        except (OSError, ValueError):
            trust = False
    return {"lora_target": "all", "lora_rank": 8, "lora_alpha": 16, "trust_remote_code": trust, "name_or_path": model,
            "attn_implementation": None}


def default_learning_rate(use_lora: bool) -> float:
    from ..catalog import load_catalog

    stage = load_catalog().stage("sft")
    return float(stage.method_defaults["lora" if use_lora else "full"]["learning_rate"])


def peft_target_modules(target: str) -> str | list[str]:
    """The catalog's lora_target ("all" or "q_proj,v_proj") in peft's terms."""
    target = target.strip()
    if target == "all":
        return "all-linear"
    modules = [t.strip() for t in target.split(",") if t.strip()]
    if not modules:
        raise UserError("--lora-target is empty; give 'all' or comma-separated module names such as q_proj,v_proj")
    return modules


def load_in_bf16(bf16: bool, *, use_lora: bool, deepspeed: str | None) -> bool:
    """The dtype the weights are loaded in. Trainer's --bf16 is autocast: the weights it updates must stay fp32,
    or updates smaller than bf16's precision (lr 1e-5 x a gradient) are rounded away and full fine-tuning
    stands still. So: LoRA loads the frozen base in bf16 (peft keeps the adapter in fp32); DeepSpeed keeps its
    own fp32 master weights, so bf16 is fine there; plain full fine-tuning (single, DDP, FSDP) loads fp32."""
    return bool(bf16 and (use_lora or deepspeed))


def checkpoints(output_dir: str | Path) -> dict[int, Path]:
    out = Path(output_dir)
    if not out.is_dir():
        return {}
    found = {}
    for child in out.iterdir():
        m = _CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            found[int(m.group(1))] = child
    return dict(sorted(found.items()))


def resolve_resume(resume: str | None, output_dir: str | Path) -> str | None:
    """--resume no|yes|latest|STEP|PATH -> the checkpoint folder to resume from (None: start fresh)."""
    if resume is None or resume.strip().lower() in ("", "no", "false", "none"):
        return None
    value = resume.strip()
    found = checkpoints(output_dir)
    listing = ", ".join(str(s) for s in found) or "none"
    if value.lower() in ("yes", "latest", "true", "last"):
        if not found:
            raise UserError(f"--resume {value}: {output_dir} has no checkpoint-* folder to resume from; "
                            "drop --resume to start fresh")
        return str(found[max(found)])
    if value.isdigit():
        step = int(value)
        if step not in found:
            raise UserError(f"--resume {value}: {output_dir}/checkpoint-{step} does not exist "
                            f"(checkpoints there: {listing})")
        return str(found[step])
    path = Path(value)
    if path.is_dir() and (path / "trainer_state.json").is_file():
        return str(path)
    raise UserError(f"--resume {value}: expected yes, latest, a step number (checkpoints in {output_dir}: {listing}) "
                    "or a checkpoint folder with trainer_state.json")


def validate_data_file(path: str) -> None:
    """Run the project's data validator on a training/validation file, when this installation has it."""
    try:
        from ..data.validate import validate_file  # type: ignore[import-not-found]
    except ImportError:
        return  # the validator module is not part of this installation; read_records' checks still apply
    result = validate_file(path, format="messages", stage="sft")
    if not result.ok:
        errors = [p for p in result.problems if getattr(p, "severity", "error") == "error"] or list(result.problems)
        first = errors[0].format() if errors and hasattr(errors[0], "format") else (str(errors[0]) if errors else "")
        count = int(getattr(result, "errors", len(errors)) or len(errors))
        more = f" (and {count - 1} more problems)" if count > 1 else ""
        raise UserError(f"{first or path + ': invalid data'}{more}; see `minicpm-recipes validate {path} "
                        "--format messages` for the full report")


def resolve_deepspeed(value: str | None, output_dir: str | Path) -> str | None:
    """--deepspeed FILE, or a set-up name (zero2, zero3, zero3-offload) rendered into output_dir."""
    if not value:
        return None
    from ..catalog import load_catalog

    dists = {name: d for name, d in load_catalog().dists.items() if d.deepspeed}
    if value in dists:
        from ..fsutil import atomic_write_text
        from ..render import jinja_env

        ds = dists[value].deepspeed
        text = jinja_env().get_template("deepspeed/ds_config.json.j2").render(
            zero_stage=ds["zero_stage"], offload=ds["offload"])
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / ds["file"]
        if _rank() == 0 or not path.exists():
            atomic_write_text(path, text)
        return str(path)
    path = Path(value)
    if not path.is_file():
        raise UserError(f"--deepspeed {value}: no such file; pass a DeepSpeed JSON config or one of "
                        f"{', '.join(dists)}")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--deepspeed {value}: not a readable JSON file ({exc})") from exc
    return str(path)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(message: str) -> None:
    if _rank() == 0:
        print(f"[minicpm-recipes finetune] {message}", flush=True)


# ---- the run -------------------------------------------------------------------------------------------
def check_config(cfg: FinetuneConfig) -> None:
    """Everything that can be checked before loading a model."""
    positive = {"--per-device-train-batch-size": cfg.per_device_train_batch_size,
                "--per-device-eval-batch-size": cfg.per_device_eval_batch_size,
                "--gradient-accumulation-steps": cfg.gradient_accumulation_steps,
                "--eval-steps": cfg.eval_steps, "--save-steps": cfg.save_steps,
                "--logging-steps": cfg.logging_steps, "--max-length": cfg.max_length}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be 1 or more, got {value}")
    if cfg.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be 0 or more, got {cfg.warmup_steps}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise UserError(f"--max-steps must be a positive number of steps (or -1 for --num-train-epochs), got {cfg.max_steps}")
    if cfg.learning_rate is not None and not cfg.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {cfg.learning_rate}")
    if cfg.eval_data and cfg.dev_ratio:
        raise UserError("give either --eval-data FILE or --dev-ratio R, not both")
    if not cfg.eval_data and not cfg.dev_ratio:
        raise UserError("a validation set is required: pass --eval-data dev.json, or --dev-ratio 0.1 to split one "
                        "off --train-data")
    if cfg.merge_lora and not cfg.use_lora:
        raise UserError("--merge-lora only applies with --use-lora")
    if cfg.chat_template and not Path(cfg.chat_template).is_file():
        raise UserError(f"--chat-template {cfg.chat_template}: no such file; pass a Jinja chat template file")


def _load_data(cfg: FinetuneConfig) -> tuple[list[dict], list[dict]]:
    validate_data_file(cfg.train_data)
    train = nd.read_records(cfg.train_data)
    if cfg.eval_data:
        validate_data_file(cfg.eval_data)
        dev = nd.read_records(cfg.eval_data)
    else:
        train, dev = nd.split_records(train, float(cfg.dev_ratio or 0), cfg.seed)
    return train, dev


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool, chat_template: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {name_or_path}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from exc
    if chat_template:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"--model {name_or_path}: the tokenizer has no chat template; pass --chat-template FILE "
                        "with a Jinja template (for MiniCPM-2B, the '<用户>...<AI>' format)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _Dataset:
    """A list of Encoded samples as a torch-style map dataset."""

    def __init__(self, items: list[nd.Encoded]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = self.items[i]
        return {"input_ids": item.input_ids, "labels": item.labels}


def _make_collator(pad_token_id: int):
    import torch

    def collator(batch):
        padded = nd.collate(batch, pad_token_id)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in padded.items()}

    return collator


def _progress_callback():
    from transformers import TrainerCallback

    class RunLog(TrainerCallback):
        """Records the global step a run started at and how many optimizer steps it took."""

        def __init__(self):
            self.start_step: int | None = None
            self.steps_run = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_run += 1

    return RunLog()


def _training_arguments(training_arguments, cfg: FinetuneConfig, *, bf16: bool, deepspeed: str | None,
                        pin_memory: bool):
    """transformers.TrainingArguments for the run (its own checks raise ValueError)."""
    return training_arguments(
        output_dir=cfg.output_dir,
        learning_rate=cfg.learning_rate or default_learning_rate(cfg.use_lora),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        bf16=bf16,
        seed=cfg.seed,
        deepspeed=deepspeed,
        gradient_checkpointing=cfg.gradient_checkpointing,
        report_to=cfg.report_to,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=pin_memory,
        disable_tqdm=True,
    )


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train; return (and write to OUTPUT_DIR/finetune_summary.json) a summary of the run."""
    check_config(cfg)
    resume_from = resolve_resume(cfg.resume, cfg.output_dir)
    if resume_from is None and checkpoints(cfg.output_dir):
        raise UserError(f"--output-dir {cfg.output_dir} already has checkpoints "
                        f"({', '.join(f'checkpoint-{s}' for s in checkpoints(cfg.output_dir))}); pass --resume latest "
                        "to continue that run, or choose another --output-dir")
    train_records, dev_records = _load_data(cfg)
    defaults = model_defaults(cfg.model)
    trust = defaults["trust_remote_code"] if cfg.trust_remote_code is None else cfg.trust_remote_code
    name_or_path = defaults["name_or_path"]
    deepspeed = resolve_deepspeed(cfg.deepspeed, cfg.output_dir)
    attn = cfg.attn_implementation or defaults["attn_implementation"]
    if attn == "flash_attention_2":
        from ..launch.preflight import flash_attn_importable

        if not flash_attn_importable():
            raise UserError("attention flash_attention_2 (the default of this model, or --attn-implementation) needs "
                            "the flash-attn package, not importable here; install it on the GPU machine (pip install "
                            "flash-attn --no-build-isolation), or pass --attn-implementation sdpa where the model "
                            "supports it")
    if deepspeed and not any(k in os.environ for k in ("WORLD_SIZE", "LOCAL_RANK", "RANK")):
        # started without torchrun: a world of one, as the launcher would set it (DeepSpeed needs these to
        # initialise; without them it tries MPI discovery)
        from ..lfcheck import single_process_env

        for key, value in single_process_env().items():
            os.environ.setdefault(key, value)

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Trainer, TrainingArguments, set_seed

    set_seed(cfg.seed)  # before the model and LoRA weights are created, so that a run is reproducible
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust, chat_template=cfg.chat_template)
    generation_eos = None
    try:
        generation_eos = GenerationConfig.from_pretrained(name_or_path, trust_remote_code=trust).eos_token_id
    except (OSError, ValueError):
        pass
    eot = nd.end_of_turn_ids(tokenizer, generation_eos)
    train_set, dropped_train = nd.encode_records(tokenizer, train_records, eot_ids=eot, max_length=cfg.max_length,
                                                 where=cfg.train_data)
    dev_set, dropped_dev = nd.encode_records(tokenizer, dev_records, eot_ids=eot, max_length=cfg.max_length,
                                             where=cfg.eval_data or f"{cfg.train_data} (dev split)")
    _say(f"{len(train_set)} training and {len(dev_set)} validation conversations"
         + (f"; dropped {dropped_train + dropped_dev} with no reply within --max-length {cfg.max_length}"
            if dropped_train + dropped_dev else ""))

    bf16 = cfg.bf16
    if bf16 is None:
        bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    dtype = torch.float32 if not load_in_bf16(bf16, use_lora=cfg.use_lora, deepspeed=deepspeed) else torch.bfloat16
    # before the model: the Trainer's own checks fail fast, and with ZeRO-3 the model then loads partitioned
    try:
        args = _training_arguments(TrainingArguments, cfg, bf16=bf16, deepspeed=deepspeed,
                                   pin_memory=torch.cuda.is_available())
    except ValueError as exc:  # the Trainer's own checks, e.g. bf16 on a machine without bf16
        hint = "; on a CPU pass --no-bf16" if bf16 and "bf16" in str(exc) else ""
        raise UserError(f"transformers refuses the training arguments: {str(exc).splitlines()[0]}{hint}") from exc
    load_kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust, dtype=dtype,
                                                     **load_kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {name_or_path}: cannot load the model ({str(exc).splitlines()[0]})") from exc
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    lora = None
    if cfg.use_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=cfg.lora_rank or defaults["lora_rank"],
            lora_alpha=cfg.lora_alpha or defaults["lora_alpha"],
            lora_dropout=cfg.lora_dropout,
            target_modules=peft_target_modules(cfg.lora_target or defaults["lora_target"]),
        )
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise UserError(f"--lora-target {lora.target_modules}: {str(exc).splitlines()[0]}") from exc

    run_log = _progress_callback()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Dataset(train_set),
        eval_dataset=_Dataset(dev_set),
        data_collator=_make_collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[run_log, *cfg.extra_callbacks],
    )
    if resume_from:
        _say(f"resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    last_eval = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        eval_metrics = {"eval_loss": last_eval["eval_loss"]}  # the Trainer just evaluated this step
    else:
        eval_metrics = trainer.evaluate()
    trainer.save_model(cfg.output_dir)
    trainer.save_state()

    summary: dict[str, Any] = {
        "model": name_or_path,
        "method": "lora" if cfg.use_lora else "full",
        "output_dir": cfg.output_dir,
        "resumed_from": resume_from,
        "start_step": run_log.start_step,
        "steps_run": run_log.steps_run,
        "global_step": trainer.state.global_step,
        "train_loss": (_run_train_loss(trainer.state.log_history, run_log.start_step or 0, result.training_loss)
                       if run_log.steps_run else None),  # None: the checkpoint was already at --max-steps
        "eval_loss": eval_metrics.get("eval_loss"),
        "train_conversations": len(train_set),
        "eval_conversations": len(dev_set),
        "dropped_conversations": dropped_train + dropped_dev,
        "world_size": args.world_size,
        "distributed_type": getattr(trainer.accelerator.distributed_type, "value",
                                    str(trainer.accelerator.distributed_type)),
        "deepspeed": deepspeed,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra_callbacks"},
    }
    if trainer.is_world_process_zero():
        if cfg.use_lora and cfg.merge_lora:
            summary["merged_dir"] = merge_adapter(cfg.output_dir, trust_remote_code=trust)
        from ..fsutil import atomic_write_text

        atomic_write_text(Path(cfg.output_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
        kind = "LoRA adapter" if cfg.use_lora else "model"
        train_loss = "n/a" if summary["train_loss"] is None else f"{summary['train_loss']:.4f}"
        _say(f"step {summary['global_step']}: train loss {train_loss}, "
             f"eval loss {summary['eval_loss']:.4f}; {kind} saved to {cfg.output_dir}"
             + (f", merged model to {summary['merged_dir']}" if summary.get("merged_dir") else ""))
    if args.world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    return summary


def _run_train_loss(log_history: list[dict], start_step: int, fallback: float) -> float | None:
    """Mean logged training loss of this run's steps (Trainer's own average divides by the global step)."""
    losses = [e["loss"] for e in log_history if "loss" in e and e.get("step", 0) > start_step]
    return float(sum(losses) / len(losses)) if losses else fallback


def merge_adapter(adapter_dir: str | Path, *, out_dir: str | Path | None = None, trust_remote_code: bool = False) -> str:
    """Load base + saved adapter fresh (works after ZeRO-3 too), merge, save a plain model + tokenizer."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out = Path(out_dir) if out_dir else Path(adapter_dir) / "merged"
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code).save_pretrained(str(out))
    return str(out)
