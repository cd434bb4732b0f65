"""Native backend: fine-tune with transformers.Trainer (no LLaMA-Factory).

`data` turns {"messages": [...]} conversations into token ids and multi-turn loss masks (pure);
`train` sets up and runs the Trainer; `finetune` is the `python -m` / torchrun entry point.
"""
