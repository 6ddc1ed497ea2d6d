"""The typed data config: DataSpec is read once from config.data, its defaults are the config's
(one table), and the builders accept a spec or a hand-built mapping alike."""

import numpy as np
import pytest
from conftest import tiny_config

from ntng_jax.data import DataError, DataSpec, build_dataset, config_defaults, make_objective
from ntng_jax.data import spec as spec_lib


@pytest.mark.parametrize("family", ["bert", "t5", "gpt"])
def test_config_data_is_the_spec_table(family):
  """configs/common.py builds config.data from the spec's table: a mapping with only seq_len
  reads into the same spec as the full config, and the config has no field the spec lacks."""
  data = tiny_config(family).data
  assert DataSpec.from_config(data) == DataSpec.from_config({"seq_len": data.seq_len})
  assert set(data.keys()) == set(config_defaults(seq_len=1))
  assert data.num_lines == spec_lib.default("num_lines") == 40_000


def test_spec_reads_types_and_refuses_bad_input():
  s = DataSpec.from_config(dict(seq_len="32", noise_density="0.3", validation="a=/x.txt,heldout"))
  assert s.seq_len == 32 and s.noise_density == 0.3 and isinstance(s.noise_density, float)
  assert list(s.validation) == ["heldout", "a"]  # heldout first
  assert DataSpec.from_config(s) is s
  assert DataSpec.from_config(dict(seq_len=32, num_lines=None)).num_lines == 40_000
  with pytest.raises(DataError, match="data.seq_len is missing"):
    DataSpec.from_config({"source": "synthetic"})
  with pytest.raises(DataError, match="data.source must be one of"):
    DataSpec.from_config(dict(seq_len=32, source="web"))
  with pytest.raises(DataError, match="no field"):
    config_defaults(seq_len=32, num_line=5)
  with pytest.raises(DataError, match="seq_len has no default"):
    spec_lib.default("seq_len")


def test_builders_take_a_spec_or_a_mapping(tmp_path):
  cfg = dict(source="synthetic", seq_len=32, num_lines=300, validation_fraction=0.05)
  a = build_dataset(cfg, "bert", 512, tmp_path)
  b = build_dataset(DataSpec.from_config(cfg), "bert", 512, tmp_path)
  np.testing.assert_array_equal(a.train_chunks, b.train_chunks)
  assert a.meta == b.meta and a.meta["num_lines"] == 300
  _, layout = make_objective(DataSpec.from_config(cfg), "bert", a.tokenizer)
  assert layout["chunk_len"] == 32 and layout["max_predictions"] == 5  # round(0.15 * 32)
