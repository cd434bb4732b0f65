"""`minicpm-recipes finetune`: fine-tune with transformers.Trainer (the native backend, no LLaMA-Factory)."""

from __future__ import annotations

import argparse

HELP = "fine-tune a chat model with transformers.Trainer on {\"messages\": [...]} data (LoRA or full)"
DESCRIPTION = """\
Fine-tune a chat model with the Hugging Face Trainer, without LLaMA-Factory. Data are JSON / JSONL files of
{"messages": [{"role": "system|user|assistant", "content": "..."}, ...]} conversations, checked before the
model is loaded. Tokens come from the model's own chat template; the loss covers every assistant reply of
a conversation in one forward pass, each reply up to and including its end-of-turn token (system and user
tokens and padding are masked with -100). A validation set is required: --eval-data FILE or --dev-ratio R.

LoRA (--use-lora) targets the modules the recipe catalog gives for the model; the adapter saved in
--output-dir loads with peft's AutoPeftModelForCausalLM, and --merge-lora also writes OUTPUT_DIR/merged, a
plain model for AutoModelForCausalLM. --resume latest|STEP continues a run from its checkpoint, global
step, optimizer and scheduler included.

Multi-GPU: launch the same command with torchrun (DDP, or DeepSpeed with --deepspeed zero2|zero3|FILE) or
with `accelerate launch --config_file fsdp.yaml` (FSDP). `minicpm-recipes render sft --backend trainer`
writes a launch script and the DeepSpeed/accelerate configs for you.

examples:
  minicpm-recipes finetune --model openbmb/MiniCPM4-0.5B --train-data train.json --eval-data dev.json --use-lora
  minicpm-recipes finetune --model minicpm4 --train-data train.json --dev-ratio 0.05 --max-steps 1000 --bf16
  torchrun --nproc_per_node 8 -m minicpm_recipes finetune --model minicpm4 --train-data train.json \\
      --eval-data dev.json --deepspeed zero2 --bf16 --output-dir output/minicpm4-full
  minicpm-recipes finetune ... --output-dir output/run1 --resume latest
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="hub id, catalog alias (minicpm4, qwen3, ...) or local folder")
    g.add_argument("--train-data", required=True, metavar="FILE", help="JSON/JSONL of {\"messages\": [...]} records")
    g.add_argument("--eval-data", metavar="FILE", default=None, help="validation file (same format)")
    g.add_argument("--dev-ratio", type=float, default=None, metavar="R",
                   help="instead of --eval-data: split this fraction of --train-data off as the validation set")
    g.add_argument("--max-length", type=int, default=2048,
                   help="truncate conversations to this many tokens (default 2048)")
    g.add_argument("--chat-template", metavar="FILE", default=None,
                   help="Jinja chat template replacing the tokenizer's own (for models without one)")
    g.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=None,
                   help="load the model's own modeling code (default: from the recipe catalog / model folder)")
    g.add_argument("--attn-implementation", default=None,
                   help="eager, sdpa or flash_attention_2 (default: the recipe catalog's; MiniCPM-SALA needs "
                        "flash_attention_2)")
    g.add_argument("--output-dir", default="output/finetune", help="checkpoints and the final model (default %(default)s)")

    g = p.add_argument_group("method")
    g.add_argument("--use-lora", action="store_true", help="train LoRA adapters instead of every weight")
    g.add_argument("--lora-target", default=None,
                   help="'all' or comma-separated module names (default: the recipe catalog's for the model)")
    g.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default: the catalog's)")
    g.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default: the catalog's)")
    g.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default %(default)s)")
    g.add_argument("--merge-lora", action="store_true",
                   help="after training also write OUTPUT_DIR/merged: base + adapter merged into a plain model")
    g.add_argument("--deepspeed", default=None, metavar="CONFIG",
                   help="DeepSpeed JSON config, or zero2 / zero3 / zero3-offload (written into --output-dir); "
                        "launch with torchrun")
    g.add_argument("--resume", default=None, metavar="yes|latest|STEP|DIR",
                   help="continue from the latest checkpoint in --output-dir, from checkpoint-STEP, or a folder")

    g = p.add_argument_group("Trainer arguments")
    g.add_argument("--learning-rate", type=float, default=None,
                   help="peak learning rate (default: 1e-4 with --use-lora, 1e-5 full, as the sft recipe)")
    g.add_argument("--per-device-train-batch-size", type=int, default=1, help="(default %(default)s)")
    g.add_argument("--per-device-eval-batch-size", type=int, default=1, help="(default %(default)s)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1, help="(default %(default)s)")
    g.add_argument("--num-train-epochs", type=float, default=3.0, help="used when --max-steps is -1 (default 3)")
    g.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; -1: --num-train-epochs (default)")
    g.add_argument("--warmup-steps", type=int, default=0, help="(default %(default)s)")
    g.add_argument("--lr-scheduler-type", default="cosine", help="(default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="(default %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="(default %(default)s)")
    g.add_argument("--eval-steps", type=int, default=500, help="evaluate every N steps (default %(default)s)")
    g.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (default %(default)s)")
    g.add_argument("--save-total-limit", type=int, default=None, help="keep at most N checkpoints")
    g.add_argument("--logging-steps", type=int, default=10, help="(default %(default)s)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 training (default: on when the GPU supports it)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    g.add_argument("--seed", type=int, default=42, help="(default %(default)s)")
    g.add_argument("--report-to", default="none", help="none (default), tensorboard, wandb, ...")
    g.add_argument("--dataloader-num-workers", type=int, default=0, help="(default %(default)s)")


def config_from_args(args: argparse.Namespace):
    from ..native.train import FinetuneConfig

    return FinetuneConfig(
        model=args.model, train_data=args.train_data, eval_data=args.eval_data, dev_ratio=args.dev_ratio,
        output_dir=args.output_dir, use_lora=args.use_lora, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_target=args.lora_target, merge_lora=args.merge_lora,
        deepspeed=args.deepspeed, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps, warmup_steps=args.warmup_steps, lr_scheduler_type=args.lr_scheduler_type,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, eval_steps=args.eval_steps,
        save_steps=args.save_steps, logging_steps=args.logging_steps, save_total_limit=args.save_total_limit,
        bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing, seed=args.seed,
        max_length=args.max_length, resume=args.resume, trust_remote_code=args.trust_remote_code,
        chat_template=args.chat_template, report_to=args.report_to, attn_implementation=args.attn_implementation,
        dataloader_num_workers=args.dataloader_num_workers,
    )


def run(args: argparse.Namespace) -> int:
    from ..native.train import run_finetune

    run_finetune(config_from_args(args))
    return 0
