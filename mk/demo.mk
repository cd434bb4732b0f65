# make demo: the whole pipeline on CPU in a few minutes, with the locally built tiny model and the demo data:
#   validate -> register -> render + train sft, dpo, kto, pretrain (LoRA, a few steps each, loss plot kept)
#   -> preview the SFT tokens and labels
#   -> merge the SFT adapter (render-export + llamafactory-cli export) -> one chat answer from the merged model (LLaMA-Factory's ChatModel, as `llamafactory-cli chat`).
# Everything lands in $(DEMO_DIR); each heavy step's full output is in $(DEMO_DIR)/logs/.

DEMO_DIR ?= .cache/demo
DEMO_STEPS ?= 4
DEMO_STAGES ?= sft dpo kto pretrain
DEMO_PROMPT ?= 请为一条宽松的阔腿裤写一句广告语。
LFCLI ?= $(VENV)/bin/llamafactory-cli

.PHONY: demo demo-clean

# demo_step NAME COMMAND...: run a command with its output in logs/NAME.log; show the log's end if it fails
define demo_shell_functions
step() { local name="$$1"; shift; local log="$(DEMO_DIR)/logs/$$name.log"; local t0=$$SECONDS; \
  if "$$@" >"$$log" 2>&1; then echo "   ok ($$((SECONDS - t0)) s, log $$log)"; \
  else local rc=$$?; tail -n 30 "$$log"; echo "demo: step '$$name' failed (exit $$rc); full log: $$log" >&2; exit $$rc; fi; }
endef

demo: tiny-model
	@set -eo pipefail; $(demo_shell_functions); \
	data="$(DEMO_DIR)/data"; configs="$(DEMO_DIR)/configs"; runs="$(DEMO_DIR)/runs"; \
	rm -rf "$(DEMO_DIR)"; mkdir -p "$$data" "$(DEMO_DIR)/logs"; \
	cp datasets/demo/minicpm_demo_sft_zh.json datasets/demo/minicpm_demo_dpo.json \
	   datasets/demo/minicpm_demo_kto.json datasets/demo/minicpm_demo_pretrain.jsonl "$$data/"; \
	echo "== 1. validate the demo data"; \
	$(MR) validate "$$data"/minicpm_demo_*; \
	echo "== 2. register it in $$data/dataset_info.json"; \
	for spec in sft_zh:sft dpo:dpo kto:kto pretrain:pt; do \
	  name="minicpm_demo_$${spec%%:*}"; file=$$(ls "$$data/$$name".json*); \
	  $(MR) register "$$file" --name "$$name" --stage "$${spec##*:}" --dataset-dir "$$data" | head -n 1; \
	done; \
	for stage in $(DEMO_STAGES); do \
	  echo "== 3. render + train $$stage (LoRA, $(DEMO_STEPS) steps on CPU)"; \
	  step "train-$$stage" $(MAKE) --no-print-directory "$$stage-lora" MODEL= DATASET= DATASET_DIR="$$data" \
	    TINY_CONFIGS="$$configs" TINY_RUNS="$$runs" TINY_STEPS=$(DEMO_STEPS); \
	  out="$$runs/tiny/lora/$$stage"; \
	  $(PY) -c 'import json, sys; d = sys.argv[1]; r = [json.loads(x) for x in open(d + "/trainer_log.jsonl")]; r = [x for x in r if "loss" in x]; print("   loss %.3f -> %.3f over %d logged steps; plot %s/training_loss.png" % (r[0]["loss"], r[-1]["loss"], len(r), d))' "$$out"; \
	  test -s "$$out/training_loss.png"; \
	done; \
	echo "== 4. preview: how LLaMA-Factory tokenizes and masks the SFT data (first tokens)"; \
	$(MR) preview "$$configs/tiny_lora_sft.yaml" --rows 12 | sed 's/^/   /'; \
	echo "== 5. merge the SFT LoRA adapter into the base model"; \
	$(MR) render-export "$$configs/tiny_lora_sft.yaml" --export-dir "$(DEMO_DIR)/merged" -o "$$configs" | sed 's/^/   /'; \
	step export $(LFCLI) export "$$configs/tiny_lora_sft_export.yaml"; \
	test -f "$(DEMO_DIR)/merged/config.json"; \
	echo "== 6. one chat answer from the merged model"; \
	step chat $(PY) -m minicpm_recipes.chat_once "$$configs/tiny_lora_sft_merged_infer.yaml" "$(DEMO_PROMPT)" \
	  max_new_tokens=24 do_sample=false; \
	answer=$$(sed -n 's/^.*Assistant: //p' "$(DEMO_DIR)/logs/chat.log" | head -n 1); \
	echo "   User: $(DEMO_PROMPT)"; echo "   Assistant: $$answer"; \
	echo "   (a tiny random-weight model trained for $(DEMO_STEPS) steps: expect noise, not an advert)"; \
	test -n "$$answer"; \
	echo "demo: done. configs in $$configs, runs and loss plots in $$runs, merged model in $(DEMO_DIR)/merged"

demo-clean:
	rm -rf $(DEMO_DIR)
