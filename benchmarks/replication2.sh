#!/usr/bin/env bash
# Replication II (issue 20): the commands behind BENCHMARKS.md "Replication II", stage by stage.
#   benchmarks/replication2.sh data|table|lr|lr_large|il|grid|finetune|probe|t5|t5_lr|report
# Every stage skips what is finished (the sweep skips complete runs), so a stage can be stopped
# and re-run, on another machine too: the results (summaries, metrics, fine-tuning JSON, the RST
# table, the IL losses) live under benchmarks/results/replication/ and are committed; shards,
# checkpoints and logs are not (runs/replication/ and .gitignore).
# PAR=2 runs two sweeps side by side, each on one core (2 x 1 thread beats 1 x 2 threads by ~14 %
# for this model on the 2-core CPU); the RST clock does not depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate

OUT=benchmarks/results/replication
DATA=runs/replication
TABLE=$OUT/rst_table.json
PAR=${PAR:-2}
# The setting (BENCHMARKS.md explains the choice): 4-layer BERT of hidden 128 (2 heads of 64, FFN
# 512), 8,192 ids, 128-token sequences, batch 16, 20 % of the Wikipedia chunks held out,
# Shakespeare out of domain; each validation set scored on up to 2,048 sequences (128 batches).
BERT=(--config.model.num_layers=4 --config.model.hidden_size=128 --config.model.num_heads=2
  --config.model.head_dim=64 --config.model.intermediate_size=512 --config.model.vocab_size=8192
  --config.data.source=shards --config.data.path=$DATA/shards --config.data.seq_len=128
  --config.data.validation_fraction=0.2
  --config.data.validation.shakespeare=../shared/data/text/tinyshakespeare/validation.txt
  --config.train.batch_size=16 --config.train.micro_batch_size=16
  --config.train.log_every_steps=50 --config.train.validation_batches=128
  --config.train.eval_every_rst_minutes=1.8 --config.train.checkpoint_every_rst_minutes=1.8)
# T5 (item 6): the same setting, 4 layers each side, on its own shards of the same text.
T5=("${BERT[@]/#--config.data.path=*/--config.data.path=$DATA/t5_shards}")
T5_TABLE=$OUT/t5/rst_table.json
T5_BUDGET=${T5_BUDGET:-0.12}  # RST hours on $T5_TABLE
# t5_lr: each optimizer at the paper's LR (its config's) and at 2x steps from it, toward the better
# side until the best is inside the bracket (>= 3 values); the cell runs each at the best (AdamW's
# for stacking and layer dropping)
T5_LR_BASELINE=${T5_LR_BASELINE:-1e-2,2e-2,4e-2,8e-2}
T5_LR_LION=${T5_LR_LION:-7.5e-4,1.5e-3,3e-3,6e-3}
T5_LR_SOPHIA=${T5_LR_SOPHIA:-1e-3,2e-3,4e-3,8e-3}
GRID_BUDGETS=0.09,0.36,0.72  # RST hours on $TABLE; the LR sweep and the IL model use the smallest
SMALL=${GRID_BUDGETS%%,*}
LARGE=${GRID_BUDGETS##*,}
# A stretch of compute can run part of the grid (or of the T5 cell): BUDGETS, METHODS and SEEDS
# pick the cells.
BUDGETS=${BUDGETS:-$GRID_BUDGETS}
METHODS=${METHODS:-baseline,stacking,layer_drop,selective_backprop,lion,sophia,rho_loss}
# Three values each, plus one past the edge where the best of the three was on it (the names are
# the run directories' under $OUT/lr, so keep their spelling).
LR_BASELINE=${LR_BASELINE:-0.00075,1.5e-3,3e-3,6e-3}
LR_LION=${LR_LION:-1e-4,3e-4,1e-3}
LR_SOPHIA=${LR_SOPHIA:-9e-5,3e-4,1e-3,3e-3}
LR_LARGE=${LR_LARGE:-0.00075,3e-3}  # the baseline at the largest budget, either side of its pick
SEEDS=${SEEDS:-0,1}
IL_DIR=$OUT/il_model/budget-$SMALL/seed-0

best_lr() {  # best_lr M [SWEEP]: the peak LR an LR sweep (default lr) chose for an optimizer
  # (baseline = AdamW, all its methods)
  python -c "import json,os,sys; p, m = sys.argv[1:]; \
    b = json.load(open(p))['best_learning_rate'] if os.path.exists(p) else {}; \
    print(b[m]) if m in b else sys.exit(f'{p} holds no LR for {m}: run its LR stage first.')" \
    $OUT/${2:-lr}/summary.json "$1"
}
picked() {  # picked M1,M2...: those of the given methods that $METHODS names, comma-joined
  local m out=()
  for m in ${1//,/ }; do [[ ",$METHODS," != *",$m,"* ]] || out+=("$m"); done
  local IFS=,
  echo "${out[*]}"
}
lr_jobs() {  # lr_jobs PREFIX: one "METHOD:LR" per peak LR in $PREFIX_BASELINE/_LION/_SOPHIA
  local m v lr
  for m in $(picked baseline,lion,sophia | tr , ' '); do
    v=$1_${m^^}
    for lr in ${!v//,/ }; do echo "$m:$lr"; done
  done
}
extra_flags() { for f in "$@"; do printf -- '--extra=%s\n' "$f"; done; }
on_core() {  # on_core N CMD...: one core, one XLA thread (PAR=1: no pinning)
  local n=$1
  shift
  if [ "$PAR" -gt 1 ]; then
    XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false" taskset -c "$n" "$@"
  else "$@"; fi
}
failed=0 slot=0
reap() {  # waits for the background jobs; a failed one fails the stage (at its end)
  local p
  for p in $(jobs -p); do wait "$p" || failed=1; done
}
dispatch() {  # dispatch LOG CMD...: CMD in the background on the next core, PAR at a time
  local log=$1
  shift
  on_core $((slot % PAR)) "$@" > "$log" 2>&1 &
  slot=$((slot + 1))
  if [ $((slot % PAR)) -eq 0 ]; then reap; fi
}
sweep() {  # sweep ROOT EXTRA_SWEEP_FLAGS...: the BERT grid's sweep with the shared table
  local root=$1
  shift
  python -m launch.sweep --config=configs/bert.py:size=tiny --root="$root" \
    --rst_table="$TABLE" $(extra_flags "${BERT[@]}") "$@"
}

case "${1:-}" in
  data)  # ~1 min: the tokeniser is trained on the corpus, deterministically
    [ -f $DATA/shards/manifest.json ] || python -m launch.prepare_data --model=bert \
      --vocab_size=8192 --seq_len=128 --output=$DATA/shards \
      --input=../shared/data/text/wikipedia_en/train.txt
    [ -f $DATA/t5_shards/manifest.json ] || python -m launch.prepare_data --model=t5 \
      --vocab_size=8192 --seq_len=128 --output=$DATA/t5_shards \
      --input=../shared/data/text/wikipedia_en/train.txt ;;
  table)  # once, on a quiet machine; every run of every stage is priced by it
    [ -f $TABLE ] || python -m launch.calibrate_rst --config=configs/bert.py:size=tiny \
      --output=$TABLE --workdir=$DATA/calibration "${BERT[@]}" ;;
  lr)  # item 2: >= 3 peak learning rates per optimizer, seed 0, the smallest budget
    for job in $(lr_jobs LR); do
      set -- ${job/:/ }
      dispatch $DATA/lr-$1-$2.log bash -c "$(declare -f sweep extra_flags); \
        $(declare -p BERT TABLE); sweep $OUT/lr/$1-lr$2 --methods=$1 --budgets=$SMALL \
        --seeds=0 --extra=--config.optim.learning_rate=$2"
    done
    reap
    python benchmarks/replication_lr.py $OUT/lr ;;
  lr_large)  # the baseline's peak LR re-checked at the largest budget (seed 0): the sweep above
    # chose every LR at the smallest, and a method's lead at the largest reads differently if the
    # baseline's best LR moved there (the grid holds the chosen LR's run)
    for lr in ${LR_LARGE//,/ }; do
      dispatch $DATA/lr_large-$lr.log bash -c "$(declare -f sweep extra_flags); \
        $(declare -p BERT TABLE); sweep $OUT/lr_large/baseline-lr$lr --methods=baseline \
        --budgets=$LARGE --seeds=0 --extra=--config.optim.learning_rate=$lr"
    done
    reap ;;
  il)  # the irreducible-loss model of rho_loss (trained on the held-out split, a fifth of the
    # training split's size: the smallest budget is already ~6 epochs of it), then its losses
    [ -f $IL_DIR/summary.json ] || python -m launch.pretrain \
      --config=configs/bert.py:size=tiny,method=il_model,seed=0 \
      --config.train.budget_hours=$SMALL --config.rst.table=$TABLE --workdir=$IL_DIR \
      "${BERT[@]}" --config.optim.learning_rate=$(best_lr baseline)
    [ -e $IL_DIR/il_losses ] || python -m launch.extract_il --workdir=$IL_DIR ;;
  grid)  # items 1 and 4: one stream per seed (PAR at a time), the largest budget first
    run_seed() {  # a failed sweep fails the seed's stream, after the others have run
      local seed=$1 b ms m st=0 root=$OUT/grid/seed-$1
      for b in $(echo $BUDGETS | tr , '\n' | sort -gr); do
        ms=$(picked baseline,stacking,layer_drop,selective_backprop)
        [ -z "$ms" ] || sweep $root --budgets=$b --seeds=$seed --methods=$ms \
          --extra=--config.optim.learning_rate=$(best_lr baseline) || st=1
        for m in lion sophia; do
          [ -z "$(picked $m)" ] || sweep $root --budgets=$b --seeds=$seed --methods=$m \
            --extra=--config.optim.learning_rate=$(best_lr $m) || st=1
        done
        if [ -n "$(picked rho_loss)" ] && [ -e $IL_DIR/il_losses ]; then
          sweep $root --budgets=$b --seeds=$seed --methods=rho_loss --il_path=$IL_DIR/il_losses \
            --extra=--config.optim.learning_rate=$(best_lr baseline) || st=1
        fi
      done
      return $st
    }
    for seed in ${SEEDS//,/ }; do
      dispatch $DATA/grid-seed-$seed.log bash -c "$(declare -f run_seed sweep extra_flags \
        best_lr picked); $(declare -p BERT TABLE OUT BUDGETS METHODS IL_DIR); run_seed $seed"
    done
    reap ;;
  finetune)  # item 3: every complete run of the largest budget (of SEEDS and METHODS), the
    # paper's recipes shrunk
    for run in $(for s in ${SEEDS//,/ }; do for m in ${METHODS//,/ }; do
      echo $OUT/grid/seed-$s/$m/budget-$LARGE/seed-$s; done; done); do
      [ -f $run/summary.json ] || continue
      [ -f $run/finetune/glue.json ] || python -m launch.finetune --pretrained=$run --suite=glue \
        --tasks=cola,mrpc,rte,sst2,stsb,wnli --data_dir=../shared/data/glue --epochs=2 \
        --max_train_examples=8000 --max_length=128 --batch_size=32 --learning_rate=1e-3
      [ -f $run/finetune/superglue.json ] || python -m launch.finetune --pretrained=$run \
        --suite=superglue --tasks=cb,copa,rte --data_dir=../shared/data/superglue --epochs=5 \
        --max_length=128 --batch_size=16 --learning_rate=1e-3
    done ;;
  probe)  # item 8: each finished grid, T5 and T5-LR run's validation loss split into tokens it can
    # copy from its input and the rest, also on whole unseen articles, against the unigram
    # predictor; needs the run's checkpoints, so it runs where the run ran (<run>/loss_probe.json)
    for run in $(find $OUT/grid $OUT/t5 $OUT/t5_lr -name summary.json -printf '%h\n' | sort); do
      [ -f $run/loss_probe.json ] || [ ! -d $run/checkpoints ] || python -m benchmarks.loss_probe \
        --run=$run --validation=articles=../shared/data/text/wikipedia_en/validation.txt \
        --output=$run/loss_probe.json
    done ;;
  t5)  # item 6: T5 of the BERT grid's width (4 layers each side) on the same text, one budget,
    # its own table; each method at its optimizer's LR as chosen by t5_lr
    [ -f $T5_TABLE ] || python -m launch.calibrate_rst --config=configs/t5.py:size=tiny \
      --output=$T5_TABLE --workdir=$DATA/t5_calibration "${T5[@]}"
    t5_seed() {  # a finished run made at another LR fails its sweep (launch.sweep refuses it)
      local m opt lr st=0
      for m in $(picked baseline,stacking,layer_drop,lion,sophia | tr , ' '); do
        opt=$m
        [[ $m != stacking && $m != layer_drop ]] || opt=baseline
        lr=$(best_lr $opt t5_lr) || return 1
        python -m launch.sweep --config=configs/t5.py:size=tiny --root=$OUT/t5/seed-$1 \
          --rst_table=$T5_TABLE --seeds=$1 --methods=$m --budgets=$T5_BUDGET \
          $(extra_flags "${T5[@]}" --config.optim.learning_rate=$lr) || st=1
      done
      return $st
    }
    for seed in ${SEEDS//,/ }; do
      dispatch $DATA/t5-seed-$seed.log bash -c "$(declare -f t5_seed extra_flags best_lr picked); \
        $(declare -p T5 T5_TABLE T5_BUDGET OUT METHODS); t5_seed $seed"
    done
    reap ;;
  t5_lr)  # the T5 LR check (seed 0, the cell's budget): baseline, Lion and Sophia-G
    for job in $(lr_jobs T5_LR); do
      set -- ${job/:/ }
      dispatch $DATA/t5_lr-$1-$2.log python -m launch.sweep --config=configs/t5.py:size=tiny \
        --root=$OUT/t5_lr/$1-lr$2 --rst_table=$T5_TABLE --seeds=0 --methods=$1 \
        --budgets=$T5_BUDGET $(extra_flags "${T5[@]}" --config.optim.learning_rate=$2)
    done
    reap
    python benchmarks/replication_lr.py $OUT/t5_lr > $OUT/t5_lr/table.md ;;
  report)  # items 5 and 7: tables, paired differences and figures from the committed files
    python benchmarks/replication_lr.py $OUT/lr > $OUT/lr/table.md
    python -m launch.report --root=$OUT/grid
    [ ! -d $OUT/t5 ] || python -m launch.report --root=$OUT/t5 ;;
  *) echo "usage: $0 data|table|lr|lr_large|il|grid|finetune|probe|t5|t5_lr|report" >&2; exit 2 ;;
esac
exit $failed
