"""Compares RST tables across machines: step-kind ratios, drift and per-method cost per step.

  python -m launch.compare_rst paper:bert benchmarks/results/rst_bert_base_h100.json \
      --output=benchmarks/results/rst_compare

Arguments: tables written by `launch.calibrate_rst` (JSON) or `paper:bert` / `paper:t5`; the first
is the reference. Prints a markdown report; writes compare_rst.{json,md,png} under --output.
"""

from absl import flags

from launch import common

_OUTPUT = flags.DEFINE_string("output", "", "Directory for compare_rst.{json,md,png} ('' = none).")


def main(argv):
  specs = argv[1:]

  def run():
    from ntng_jax.experiments import rst_compare

    report = rst_compare.compare(specs)
    print(rst_compare.markdown(report), end="")
    if _OUTPUT.value:
      paths = rst_compare.write(report, _OUTPUT.value)
      print(f"\nWrote {', '.join(paths.values())}.")

  common.run_cleanly(run)


if __name__ == "__main__":
  common.main(main, check_config=False)
