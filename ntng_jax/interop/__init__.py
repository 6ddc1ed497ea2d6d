"""Moving trained models in and out: the original PyTorch codebases' parameter layouts.

- `layout`: ntng_jax params <-> cramming `ScriptableLMForPreTraining` (BERT) / nanoT5 `MyT5` (T5)
  state dicts, and those codebases' config fields;
- `safetensors`: the safetensors file format, read and written with numpy only;
- `transfer`: `export_run(workdir, output)` and `import_weights(input, workdir)`.
"""
