"""Data machinery every benchmark shares: tokenizers (`tokenizer`), LLaVA's conversation and its tokenization
(`chat`), the input pipeline (`pipeline`: grain, static-shape batches), views over sources for training mixes
(`sources`) and the parquet -> TFDS reading helpers (`rows`). The benchmarks themselves (readers, generators,
prompts, protocols) are packages of their own: vkd_jax.benchmarks.<name>.

    from vkd_jax.benchmarks.mllmu import reader, prompts
    from vkd_jax.data import pipeline, tokenizer
    tok = tokenizer.load_tokenizer(M + "/tokenizer")           # or a LLaVA HF folder
    src = reader.load("ft_Data", D, M)                         # tfds.data_source, random access
    p = pipeline.InputPipeline(src, tok, pipeline.PipelineConfig(tasks=("ft",), image_seq_length=16,
                                                                 image=pipeline.image_config(32)),
                               examples=prompts.profile_examples)
    for batch in p: ...                                        # dict of numpy arrays, static shapes
"""
