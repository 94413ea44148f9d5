#!/bin/bash
# same.sh CODE OUT: micro runs (MLLMU vkd/npo/mmunlearner, CLEAR vkd) with CODE's vkd_jax, for the before/after check
CODE=$1; OUT=$2
cd $CODE
export PYTHONPATH=$CODE XLA_FLAGS=--xla_force_host_platform_device_count=1
PY=${PY:-python}
MICRO="--config.data.world.num_people=20 --config.data.world.num_celebrities=8 --config.data.world.num_facts=3 --config.data.world.ft_poses=2 --config.data.batch_size=8 --config.stages.pretrain.num_steps=3 --config.stages.vanilla.num_steps=3 --config.stages.unlearn.num_steps=3 --config.stages.relearn.num_steps=2 --config.stages.relearn.fractions=(0.5,) --config.eval.max_questions=3 --config.eval.batch_size=4 --config.eval.max_new_tokens=6 --config.mask.num_batches=2 --config.checkpoint.every_steps=2 --config.splits=2 --config.export_hf=True"
CMICRO="--config.data.clear_world.num_people=20 --config.data.clear_world.num_real_faces=6 --config.data.clear_world.num_real_world=6 --config.data.clear_world.num_generic=10 --config.data.batch_size=8 --config.stages.pretrain.num_steps=3 --config.stages.vanilla.num_steps=3 --config.stages.unlearn.num_steps=3 --config.stages.relearn.num_steps=2 --config.stages.relearn.fractions=(0.5,) --config.eval.max_questions=3 --config.eval.batch_size=4 --config.eval.max_new_tokens=6 --config.checkpoint.every_steps=2 --config.splits=1 --config.data.clear_world.eval_images=2 --config.export_hf=True"
mkdir -p $OUT
$PY -m vkd_jax.main --config configs/tiny.py --workdir $OUT/mllmu_vkd $MICRO > $OUT/mllmu_vkd.log 2>&1; echo "mllmu_vkd rc=$?"
for m in npo mmunlearner; do
$PY -m vkd_jax.main --config configs/tiny.py --workdir $OUT/mllmu_$m $MICRO --config.method=$m > $OUT/mllmu_$m.log 2>&1; echo "mllmu_$m rc=$?"
done
$PY -m vkd_jax.main --config configs/tiny.py:benchmark=clear --workdir $OUT/clear_vkd $CMICRO --config.eval.clear_reading=official > $OUT/clear_vkd.log 2>&1; echo "clear_vkd rc=$?"
