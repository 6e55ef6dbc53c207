# Sweeps (include from the top Makefile: `include sweeps/sweeps.mk`).
#
#   make sweep-quick                 the 6-trial digits sweep (<= 10 min on 2 cores)
#   make sweep SWEEP=sweeps/digits_full.yaml [SWEEP_ARGS="--resume --store s3://bucket/prefix"]
#
# Results: <store>/sweeps/<name>/ (trials.csv/json, best.json, pareto.json, pareto.png, summary.md);
# TensorBoard: tensorboard --logdir ~/.cache/cl_platform/tune/<store hash>/<name> (or --tune-dir; the sweep's summary names it)
# On the local head (make ray-up): RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
#   python sweeps/sweep.py --config sweeps/digits_quick.yaml
#
# Studies (task orders x seeds, mean ± std of every metric):
#   make study-quick                 mode and moe_lora, 2 orders x 1 seed, --quick
#   make study STUDY_ARGS="--methods mode,moe_lora,seq_lora --orders 3 --seeds 2"
# Results: <store>/studies/<name>/ (study.json, summary.md, tables.csv, plot_<metric>.png)

SWEEP ?= sweeps/digits_quick.yaml
SWEEP_ARGS ?=
STUDY_ARGS ?= --methods mode,moe_lora --orders 3 --seeds 2

.PHONY: sweep sweep-quick study study-quick

sweep: $(STAMP)
	$(PY) sweeps/sweep.py --config $(SWEEP) $(SWEEP_ARGS)

sweep-quick: $(STAMP)
	$(PY) sweeps/sweep.py --config sweeps/digits_quick.yaml $(SWEEP_ARGS)

study: $(STAMP)
	$(PY) jobs/study.py --suite digits $(STUDY_ARGS)

study-quick: $(STAMP)
	$(PY) jobs/study.py --suite digits --methods mode,moe_lora --orders 2 --seeds 1 --quick --name digits-study-quick
