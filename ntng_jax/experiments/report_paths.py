"""Paths as a sweep report names them: relative to the sweep root (the report's own directory),
so a report committed or moved reads the same on any machine."""

from __future__ import annotations

import os
import re


def portable(path: str | None, collected: dict) -> str | None:
  """`path` as a report names it: relative to the sweep root when it lies inside the root (as the
  sweep named it, `collected['run_root']`, or as the report is given it) or is absolute, else as
  the user typed it."""
  if not path:
    return path
  path, root, run_root = str(path), collected["root"], collected.get("run_root")
  if run_root and (path == run_root or path.startswith(run_root.rstrip(os.sep) + os.sep)):
    return os.path.relpath(path, run_root)
  abs_root, abs_path = os.path.abspath(root), os.path.abspath(path)
  if abs_path == abs_root or abs_path.startswith(abs_root + os.sep) or os.path.isabs(path):
    return os.path.relpath(abs_path, abs_root)
  return path


def locate(path: str, collected: dict) -> str:
  """A file the sweep status names, found under the root where it now is (a sweep moved or
  committed elsewhere), else at `path` as written."""
  rel = portable(path, collected)
  inside = os.path.join(collected["root"], rel)
  return inside if not rel.startswith("..") and os.path.exists(inside) else path


_ABSOLUTE = re.compile(r"(?<![\w.~:/-])/[\w.~-][^\s'\"`|,;()<>\[\]]*")


def portable_text(text: str, collected: dict) -> str:
  """`text` with every absolute path in it (error lines quote some) made relative to the root."""
  return _ABSOLUTE.sub(lambda m: portable(m.group(0), collected), text)
