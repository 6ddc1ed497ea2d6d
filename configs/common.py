"""Defaults shared by `bert.py` and `t5.py`: one place for the fields every run has.

Sizes scale the run: `tiny` is a CPU smoke run of about a minute (tests, the default job), `small`
a longer CPU/GPU run, `base` the paper's setting (docs/paper.md §3).
"""

import ml_collections

from ntng_jax.config import ConfigError, check_method_name, parse_arg
from ntng_jax.methods.base import method_defaults
from ntng_jax.models.sizes import model_config
from ntng_jax.optim.build import PAPER_RECIPES


def base_config(family: str, arg: str | None, per_size: dict) -> ml_collections.ConfigDict:
  """Builds the config for `family` from `arg` ('size=tiny,method=baseline,seed=0')."""
  args = parse_arg(arg, size="tiny", method="baseline", seed=0)
  if args.size not in per_size:
    raise ConfigError(
      f"config argument size must be one of {', '.join(per_size)}; got {args.size!r}."
    )
  check_method_name(args.method, "config argument method")
  s = per_size[args.size]
  try:
    model = model_config(family, args.size)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  c = ml_collections.ConfigDict()
  c.model = model
  c.seed = args.seed

  c.data = ml_collections.ConfigDict(
    dict(
      source="synthetic",  # synthetic | text | shards | tfds
      path="",  # file or directory for source=text/shards, tfds name for source=tfds
      seq_len=s["seq_len"],  # BERT sequence length / T5 encoder input length (tokens)
      num_lines=s.get("num_lines", 40_000),  # size of the synthetic corpus (lines)
      corpus_seed=0,
      validation_fraction=0.02,  # held-out fraction of chunks for validation_loss
      unique_tokens=0,  # > 0: train on only this many tokens (a fixed prefix), repeated
      # {name: source}: 'heldout', a text/jsonl path, a shards dir or 'tfds:NAME[:SPLIT]'; add
      # sets from the command line with --config.data.validation.NAME=SOURCE.
      validation=ml_collections.ConfigDict({"heldout": "heldout"}),
      max_predictions=0,  # BERT masked positions per sequence (0 = round(0.15 * seq_len))
      noise_density=0.15,  # T5 span corruption
      mean_noise_span_length=3.0,
      tokenizer_dir="",  # '' = train on the corpus and cache in the workdir
      tfds_data_dir="",  # source=tfds: '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      tfds_split="train",
      tfds_text_key="text",
    )
  )

  c.train = ml_collections.ConfigDict(
    dict(
      budget_hours=s["budget_hours"],  # RST hours
      batch_size=s["batch_size"],  # sequences per optimizer step
      micro_batch_size=s["micro_batch_size"],
      compute_dtype=s.get("compute_dtype", "float32"),  # float32 | bfloat16 (params stay float32)
      log_every_steps=s.get("log_every_steps", 10),
      eval_every_rst_minutes=s["eval_every_rst_minutes"],
      checkpoint_every_rst_minutes=s["checkpoint_every_rst_minutes"],
      keep_checkpoints=3,
      validation_batches=s.get("validation_batches", 8),
      max_steps=0,  # 0 = run until the RST budget is spent
    )
  )

  c.method = ml_collections.ConfigDict(dict(name=args.method))

  c.rst = ml_collections.ConfigDict(
    dict(
      table="auto",  # auto | paper | PATH.json (auto: the paper's table if it matches, else calibrate)
      repeats=5,  # timed repeats per kind when calibrating (median)
      warmup=2,
    )
  )

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: all remaining devices
  return c


def finalize(c: ml_collections.ConfigDict, per_size: dict) -> ml_collections.ConfigDict:
  """Applies what the chosen method brings: the paper's optimizer recipe for `lion`/`sophia`
  (peak LR per size from `per_size[size]['lr_<method>']` where the paper's is for base), and the
  method class's own `default_config(family, size)` overrides (stacking stages, drop schedule...)."""
  family, size, name = c.model.family, c.model.size, c.method.name
  if name in ("lion", "sophia"):
    recipe = dict(PAPER_RECIPES[family][name])
    recipe["learning_rate"] = per_size[size].get(f"lr_{name}", recipe["learning_rate"])
    recipe["schedule"] = c.optim.schedule
    c.optim = recipe
  for section, values in method_defaults(name, family, size).items():
    c[section].update(values)
  return c
