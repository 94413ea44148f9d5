"""Data: MLLMU-Bench TFDS builder, the embedded benchmark, tokenizers, prompts, input pipeline.

    python -m vkd_jax.data.synthetic --out M --seed 0          # embedded benchmark parquet + M/tokenizer
    python -m vkd_jax.data.prepare --manual_dir M --data_dir D # prepare TFDS (also done on first use)

    from vkd_jax.data import mllmu_bench, pipeline, prompts, tokenizer
    tok = tokenizer.load_tokenizer(M + "/tokenizer")           # or a LLaVA HF folder
    src = mllmu_bench.load("ft_Data", D, M)                    # tfds.data_source, random access
    p = pipeline.InputPipeline(src, tok, pipeline.PipelineConfig(tasks=("ft",), image_seq_length=16,
                                                                 image=pipeline.image_config(32)))
    for batch in p: ...                                        # dict of numpy arrays, static shapes

Submodules are imported explicitly: `mllmu_bench` imports tensorflow_datasets (registering the builder).
"""
