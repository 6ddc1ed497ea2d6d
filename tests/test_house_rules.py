"""House rules the reviewer would otherwise check by hand: file length, private names, jit sites.

The layer and no-cycle contracts are import-linter's (pyproject.toml, `lint-imports` in .ci/run);
formatting and lint are ruff's (`ruff format --check`, `ruff check`).
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 450
MAX_JIT_SITES = 5  # outside ntng_jax/train/programs.py
PROGRAMS = "ntng_jax/train/programs.py"
TOP_LEVEL = ("ntng_jax", "launch", "configs", "benchmarks", "examples", "tests")


def _python_files() -> list[str]:
  return sorted(
    str(f.relative_to(REPO))
    for top in TOP_LEVEL
    for f in (REPO / top).rglob("*.py")
    if "__pycache__" not in f.parts
  )


def _module_name(path: str) -> str:
  parts = pathlib.PurePath(path).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_file_over_the_line_limit():
  long = {
    f: n for f in _python_files() if (n := len((REPO / f).read_text().splitlines())) > MAX_LINES
  }
  assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"


def test_no_private_name_imported_from_another_module():
  offenders = []
  for f in _python_files():
    importer = _module_name(f)
    for node in ast.walk(ast.parse((REPO / f).read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module.split(".")[0] not in ("ntng_jax", "launch", "configs"):
          continue
        if node.module == importer:
          continue
        private = [
          a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
        ]
        offenders += [f"{f}:{node.lineno} {node.module}.{name}" for name in private]
  assert not offenders, (
    "private names imported across modules (make them public or move them): "
    + ("; ".join(offenders))
  )


def _jit_sites(path: str) -> list[int]:
  lines = []
  for node in ast.walk(ast.parse((REPO / path).read_text())):
    if isinstance(node, ast.Attribute) and node.attr == "jit":
      if isinstance(node.value, ast.Name) and node.value.id == "jax":
        lines.append(node.lineno)
  return lines


def test_programs_are_jitted_in_one_place():
  sites = {
    f: s
    for f in _python_files()
    if f != PROGRAMS and not f.startswith("tests/") and (s := _jit_sites(f))
  }
  count = sum(len(s) for s in sites.values())
  assert count <= MAX_JIT_SITES, (
    f"{count} jax.jit sites outside {PROGRAMS} (at most {MAX_JIT_SITES}): {sites}"
  )
