#!/bin/bash
# GPT-tiny grids on the shared Wikipedia text (helper E, issue 18). Run from /work/main.
set -u
cd /work/main
. .venv/bin/activate
G=/work/gptgrid
DATA="--extra=--config.data.source=shards --extra=--config.data.path=$G/shards_wiki_gpt_tiny"
METHODS=baseline,stacking,layer_drop,selective_backprop,rho_loss,lion,sophia
if [ ! -f $G/rst_table.json ]; then
  python -m launch.calibrate_rst --config=configs/gpt.py:size=tiny --output=$G/rst_table.json \
      --workdir=$G/calibration --config.data.source=shards \
      --config.data.path=$G/shards_wiki_gpt_tiny > $G/calibrate.log 2>&1
fi
UNIQUE=${UNIQUE:-100000}
python -m launch.sweep --config=configs/gpt.py:size=tiny --methods=$METHODS --budgets=0.005,0.01 \
    --seeds=0,1 --root=$G/full --rst_table=$G/rst_table.json $DATA > $G/full.log 2>&1 &
python -m launch.sweep --config=configs/gpt.py:size=tiny --methods=$METHODS --budgets=0.005,0.01 \
    --seeds=0,1 --root=$G/limited --rst_table=$G/rst_table.json $DATA \
    --extra=--config.data.unique_tokens=$UNIQUE > $G/limited.log 2>&1 &
wait
