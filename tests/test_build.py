"""BUILD stays in sync with the Python files of the repository."""

import fnmatch
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.split() if (ROOT / p).exists())


def _covered(path, build):
    listed = set(re.findall(r'"([\w/.]+\.py)"', build))
    globs = re.findall(r'glob\(\["([^"]+)"\]\)', build)
    return path in listed or any(
        fnmatch.fnmatch(path, g.replace("**/", "*")) or fnmatch.fnmatch(path, g) for g in globs
    )


def test_every_python_file_is_in_a_bazel_target():
    build = (ROOT / "BUILD").read_text()
    missing = [p for p in _python_files() if not _covered(p, build)]
    assert not missing, f"add these to BUILD: {missing}"


def test_build_lists_only_existing_files():
    build = (ROOT / "BUILD").read_text()
    for path in re.findall(r'"([\w/.]+\.py)"', build):
        assert (ROOT / path).exists(), f"BUILD names {path}, which does not exist"
