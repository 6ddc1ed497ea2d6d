"""benchmarks/loss_probe.py: which target tokens count as copyable from their example's input."""

import numpy as np

from benchmarks.loss_probe import copyable


def test_a_masked_token_is_copyable_only_from_an_unmasked_position_of_its_own_row():
  # Row 0: id 7 is masked at 1 and visible at 3 (copyable); id 9 masked at 2, nowhere else.
  # Row 1: id 5 is masked at 0 and at 2 and kept unchanged at 0 (BERT's 10 %), never visible:
  # neither is copyable, though the padding slot (weight 0) also points at position 0.
  batch = {
    "input_ids": np.array([[1, 4, 4, 7, 8], [5, 6, 4, 7, 7]]),
    "mlm_positions": np.array([[1, 2, 0], [0, 2, 0]]),
    "mlm_labels": np.array([[7, 9, 0], [5, 5, 0]]),
    "mlm_weights": np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),
  }
  got = copyable(batch, batch["mlm_labels"]) & (batch["mlm_weights"] > 0)
  np.testing.assert_array_equal(got, [[True, False, False], [False, False, False]])


def test_a_t5_target_is_copyable_only_from_its_own_encoder_input():
  # Row 0 targets: sentinel 99, 7 (also in the input), 9 (not), EOS 1. Row 1: 7 is not in its
  # own input, only in row 0's.
  batch = {
    "encoder_input_ids": np.array([[4, 99, 7, 8, 1], [4, 99, 6, 8, 1]]),
    "targets": np.array([[99, 7, 9, 1], [99, 7, 6, 1]]),
  }
  got = copyable(batch, batch["targets"])
  np.testing.assert_array_equal(got, [[True, True, False, True], [True, False, True, True]])
