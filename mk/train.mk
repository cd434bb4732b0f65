# Training targets: make {sft,dpo,kto,pretrain}-{lora,full} [MODEL=...] [DIST=...] [NODES=...] [DATASET=...]
#
# Each target renders a recipe (`minicpm-recipes render`), then `minicpm-recipes train` checks it (LLaMA-Factory's
# parser, dataset registration + validation, cross-field rules) and launches it.
#   make sft-lora MODEL=openbmb/MiniCPM-SALA                    the product's entry point (GPU machine)
#   make dpo-full MODEL=minicpm4 DIST=zero3 GPUS=8
#   make sft-lora MODEL=minicpm-sala NODES=2 GPUS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=0   (same on node 1 with NODE_RANK=1)
#   make kto-lora                                              no MODEL: the locally built tiny model on CPU, a few steps
# Options: TEMPLATE (local folder or unknown model), DATASET, DATASET_DIR, GPUS (per node), SET="k=v k=v"
# (extra --set overrides), CONFIGS (where configs are written, default ./configs), DRY_RUN=1 (check only).

MR ?= $(VENV)/bin/minicpm-recipes
MODEL ?=
TEMPLATE ?=
DIST ?= single
NODES ?= 1
GPUS ?= 1
DATASET ?=
DATASET_DIR ?=
SET ?=
CONFIGS ?= configs
DRY_RUN ?=
MASTER_ADDR ?=
MASTER_PORT ?= 29500

# the locally built tiny model and its CPU-friendly overrides: used only when MODEL is empty
TINY_MODEL ?= .cache/models/tiny
TINY_RUNS ?= .cache/runs
TINY_CONFIGS ?= .cache/configs
TINY_STEPS ?= 3
TINY_SET = bf16=false use_cpu=true max_steps=$(TINY_STEPS) logging_steps=1 save_steps=$(TINY_STEPS) \
  eval_steps=$(TINY_STEPS) max_samples=40 cutoff_len=512 preprocessing_num_workers=null dataloader_num_workers=0 \
  gradient_accumulation_steps=1

TRAIN_STAGES := sft dpo kto pretrain
TRAIN_METHODS := lora full
TRAIN_TARGETS := $(foreach s,$(TRAIN_STAGES),$(foreach m,$(TRAIN_METHODS),$(s)-$(m)))

.PHONY: $(TRAIN_TARGETS) tiny-model train-help

$(TINY_MODEL)/config.json:
	$(MR) tiny-model $(TINY_MODEL)

tiny-model: $(TINY_MODEL)/config.json

# render_and_train STAGE METHOD: render into the configs folder, then train the training YAML render wrote
define render_and_train
set -eo pipefail; \
if [ -z "$(MODEL)" ]; then \
  out="$(TINY_CONFIGS)"; run_dir="$(TINY_RUNS)/tiny/$(2)/$(1)"; rm -rf "$$run_dir"; \
  model_args=(--model "$(TINY_MODEL)" --template cpm4 --output-dir "$$run_dir"); \
  for kv in $(TINY_SET); do model_args+=(--set "$$kv"); done; \
else \
  out="$(CONFIGS)"; model_args=(--model "$(MODEL)"); \
  if [ -n "$(TEMPLATE)" ]; then model_args+=(--template "$(TEMPLATE)"); fi; \
fi; \
args=("$(1)" --method "$(2)" --dist "$(DIST)" --nodes "$(NODES)" --gpus-per-node "$(GPUS)" "$${model_args[@]}" -o "$$out"); \
if [ -n "$(DATASET)" ]; then args+=(--dataset "$(DATASET)"); fi; \
if [ -n "$(DATASET_DIR)" ]; then args+=(--dataset-dir "$(DATASET_DIR)"); fi; \
if [ -n "$(MASTER_ADDR)" ]; then args+=(--master-addr "$(MASTER_ADDR)" --master-port "$(MASTER_PORT)"); fi; \
for kv in $(SET); do args+=(--set "$$kv"); done; \
echo "+ $(MR) render $${args[*]}"; \
rendered="$$($(MR) render "$${args[@]}")"; \
echo "$$rendered"; \
config="$$(printf '%s\n' "$$rendered" | sed -n 's/^wrote \(.*\.yaml\)$$/\1/p' | head -n 1)"; \
train=(--nnodes "$(NODES)"); \
if [ -n "$(DRY_RUN)" ]; then train+=(--dry-run); fi; \
echo "+ $(MR) train $$config $${train[*]}"; \
$(MR) train "$$config" "$${train[@]}"
endef

$(TRAIN_TARGETS): $(if $(MODEL),,$(TINY_MODEL)/config.json)
	@$(call render_and_train,$(word 1,$(subst -, ,$@)),$(word 2,$(subst -, ,$@)))

train-help:
	@echo "make {$(subst $() ,$(comma),$(TRAIN_STAGES))}-{$(subst $() ,$(comma),$(TRAIN_METHODS))} [MODEL=hub-id|alias|folder] [DIST=single|zero2|zero3|zero3-offload|fsdp|fsdp2]"
	@echo "     [NODES=N GPUS=G MASTER_ADDR=host] [DATASET=name DATASET_DIR=dir] [TEMPLATE=name] [SET='k=v ...'] [DRY_RUN=1]"
	@echo "  no MODEL: train the locally built tiny model ($(TINY_MODEL)) on the demo data on CPU for $(TINY_STEPS) steps"

comma := ,
