"""Load a pre-training workdir for downstream fine-tuning.

A workdir written by ``python -m launch.pretrain`` holds ``config.json`` (the run's
ml_collections config as JSON), ``tokenizer/<key>/`` (or the config's ``data.tokenizer_dir``)
and ``checkpoints/<step>/`` (orbax; a ``state`` item with the ``TrainState`` and a ``loop``
JSON item whose ``depth`` is the model depth at that step, which stacking changes).

:func:`load_pretrained` restores only the parameters of the newest *intact* checkpoint (the
optimizer state is never read), at the depth recorded next to them::

    config, model_cfg, params, tokenizer = load_pretrained(workdir, suite="glue")

Every user-fixable problem raises one sentence: :class:`FileNotFoundError` (no workdir, no
config, no checkpoint, no tokenizer) or :class:`PretrainedError` (a ``ValueError``: wrong model
family for the suite, unreadable checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections

from ntng_jax.data.tokenizers import Tokenizer
from ntng_jax.errors import UserError
from ntng_jax.train import programs
from ntng_jax.train.checkpoint import Checkpointer, CheckpointError, restore_params
from ntng_jax.train.programs import abstract_params

__all__ = [
  "Pretrained",
  "PretrainedError",
  "SUITE_FAMILY",
  "load_pretrained",
  "read_config",
  "find_tokenizer",
  "check_family",
  "abstract_params",
]

# The model family each downstream suite fine-tunes.
SUITE_FAMILY = {"glue": "bert", "superglue": "bert", "sni": "t5"}
_FAMILY_NAME = {"bert": "BERT", "t5": "T5", "gpt": "GPT"}


class PretrainedError(UserError, ValueError):
  """A pre-training workdir cannot be used as asked (one sentence)."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """What :func:`load_pretrained` returns; unpacks as ``(config, model_cfg, params,
  tokenizer)``.

  config: the pre-training ConfigDict; model_cfg: ``config.model`` with ``num_layers`` set to
  the checkpoint's depth; params: the model's ``'params'`` collection (plain arrays, float32,
  placed with the model's logical shardings on ``mesh`` or on the default device);
  tokenizer: :class:`ntng_jax.data.tokenizers.Tokenizer`; step: the restored optimizer step;
  workdir: absolute path.
  """

  config: ml_collections.ConfigDict
  model_cfg: ml_collections.ConfigDict
  params: Any
  tokenizer: Any
  step: int
  workdir: str

  def __iter__(self):
    return iter((self.config, self.model_cfg, self.params, self.tokenizer))

  @property
  def family(self) -> str:
    return self.model_cfg.family


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """``workdir/config.json`` as a ConfigDict."""
  work = Path(workdir)
  if not work.is_dir():
    raise FileNotFoundError(
      f"pre-training workdir '{work}' does not exist; pass the "
      f"--workdir of a finished launch.pretrain run."
    )
  path = work / "config.json"
  if not path.is_file():
    raise FileNotFoundError(
      f"'{work}' is not a pre-training workdir (it has no "
      f"config.json); pass the --workdir of a launch.pretrain run."
    )
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise PretrainedError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}).") from None


def check_family(family: str, suite: str, workdir: str | os.PathLike = "") -> None:
  """Raises :class:`PretrainedError` unless ``family`` is the one ``suite`` fine-tunes."""
  if suite not in SUITE_FAMILY:
    raise PretrainedError(
      f"Unknown suite {suite!r}; valid suites are: " + ", ".join(SUITE_FAMILY) + "."
    )
  want = SUITE_FAMILY[suite]
  if family != want:
    where = f" in '{workdir}'" if workdir else ""
    raise PretrainedError(
      f"the checkpoint{where} is a {_FAMILY_NAME.get(family, family)} model, but {suite} "
      f"fine-tuning needs a {_FAMILY_NAME[want]} checkpoint; pretrain with "
      f"--config=configs/{want}.py or pick another suite."
    )


def find_tokenizer(config, workdir: str | os.PathLike):
  """The run's tokenizer, looked for in this order: ``workdir/tokenizer/`` itself (where
  ``data.source='shards'`` installs it), the run's ``data.tokenizer_dir``, then the entries
  that ``build_dataset`` trained and cached under ``workdir/tokenizer/<key>/`` (newest
  first). A candidate must be of the model's family and emit at most ``model.vocab_size``
  ids."""
  kind, vocab = config.model.family, int(config.model.vocab_size)
  root = Path(workdir) / "tokenizer"
  candidates = [root]
  tok_dir = config.data.get("tokenizer_dir", "") if "data" in config else ""
  if tok_dir:
    candidates.append(Path(tok_dir))
  if root.is_dir():
    candidates += sorted(
      (p.parent for p in root.glob("*/tokenizer.json")),
      key=lambda p: p.stat().st_mtime,
      reverse=True,
    )
  for d in candidates:
    try:
      meta = json.loads((d / "tokenizer.json").read_text())
    except (OSError, json.JSONDecodeError):
      continue
    if meta.get("kind") == kind and int(meta.get("vocab_size", 1 << 62)) <= vocab:
      return Tokenizer.load(d)
  raise FileNotFoundError(
    f"no {kind} tokenizer of at most {vocab} ids under '{root}'"
    + (f" or in '{tok_dir}'" if tok_dir else "")
    + "; the pre-training run did not finish building its data."
  )


def load_pretrained(
  workdir: str | os.PathLike, suite: str | None = None, mesh=None, step: int | None = None
) -> Pretrained:
  """``(config, model_cfg_at_saved_depth, params, tokenizer)`` of a pre-training workdir.

  suite: 'glue' | 'superglue' (need BERT) | 'sni' (needs T5) | None (no check).
  mesh: a ``jax.sharding.Mesh`` to place the params on with their logical shardings
    (``ntng_jax.partitioning``); None puts them on the default device.
  step: the checkpoint to read (it must pass its manifest); None: the newest one whose files
    match their manifest and that can be read, skipping and naming unusable newer ones (never
    moved or deleted: the workdir may belong to a running job).
  The checkpoint used is named on stderr. If it is unusable: :class:`PretrainedError` naming
  why.
  """
  work = Path(workdir).resolve()
  config = read_config(work)
  family = config.model.family
  if suite is not None:
    check_family(family, suite, work)
  ckpt_dir = work / "checkpoints"
  if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise FileNotFoundError(
      f"'{work}' has no checkpoint; let its launch.pretrain run "
      f"finish (or resume it) before fine-tuning."
    )
  tokenizer = find_tokenizer(config, work)

  def read(step, loop):
    depth = int(loop["depth"]) if "depth" in loop else int(config.model.num_layers)
    model = programs.model_at_depth(config, depth)
    return depth, restore_params(ckpt.step_dir(step), abstract_params(model, mesh))

  asked = step is not None
  ckpt = Checkpointer(str(work))
  try:
    if asked:
      got, skipped = ckpt.read_step(int(step), read), []
    else:
      step, got, skipped = ckpt.newest_usable(read)
  except CheckpointError as e:
    raise PretrainedError(str(e)) from None
  finally:
    ckpt.close()
  if step is None:
    raise FileNotFoundError(
      f"'{work}' has no finished checkpoint; let its launch.pretrain "
      f"run finish (or resume it) before fine-tuning."
    )
  depth, params = got
  model_cfg = config.model.copy_and_resolve_references()
  model_cfg.num_layers = depth
  finished = (work / "summary.json").is_file()
  note = "" if finished else " (the run has not finished: no summary.json)"
  if skipped:
    note += "; skipped newer unusable ones: " + "; ".join(f"step {s} ({r})" for s, r in skipped)
  which = "as asked" if asked else "the newest intact one"
  print(f"Using the checkpoint of step {step} in {ckpt_dir}, {which}{note}.", file=sys.stderr)
  return Pretrained(
    config=config,
    model_cfg=model_cfg,
    params=params,
    tokenizer=tokenizer,
    step=int(step),
    workdir=str(work),
  )
