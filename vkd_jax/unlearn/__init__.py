"""The unlearning engine: param partition, methods, saliency masks, the jitted train step, stages.

  partition.py   config rules -> trainable / frozen / LoRA and logical-axis sharding; make_mesh, merge_lora
  methods/       one pure loss per file, each declaring its config fields (SPEC), behind the registry METHODS
  masks.py       Fisher-ratio masks and the optax transform that multiplies updates by them
  step.py        build_step: make_optimizer, make_step (sharded jit step, grad accumulation, NaN guard)
  train.py       Trainer (the concrete state and the checkpointed fit loop)
  checkpoint.py  async keep-last-N orbax checkpoints of the full train state + data-iterator states
  metrics_log.py JSONL + TensorBoard event files + tqdm on process 0
  stages.py      run_stage(name, cfg, workdir, params, streams, ...) for each of config_base.STAGES
"""
