"""keras_ast.compat: the supported Keras range is checked at import, and no other module of
keras_ast uses a private Keras API (they all go through compat)."""

import glob
import os
import re

import keras
import pytest

from keras_ast import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_installed_keras_is_in_the_supported_range():
    assert compat.MINIMUM <= compat._version(keras.__version__) < compat.BELOW
    compat.check_keras()


@pytest.mark.parametrize("version", ["3.11.3", "3.16.0", "4.0.0", "2.15.0"])
def test_an_unsupported_keras_fails_at_import_with_the_range(version):
    with pytest.raises(ImportError, match=rf"keras_ast supports keras>=3\.12,<3\.16 \(tested: "
                                          rf"3\.12\.4, 3\.15\.1\); Keras {version} is installed"):
        compat.check_keras(version, environ={})
    compat.check_keras(version, environ={"KERAS_AST_ANY_KERAS": "1"})  # at the user's risk


@pytest.mark.parametrize("version", ["3.12.0", "3.12.4", "3.15.1", "3.15.2.dev2026"])
def test_supported_versions_pass(version):
    compat.check_keras(version, environ={})


def test_a_missing_private_api_is_named(monkeypatch):
    monkeypatch.setattr(compat, "_REQUIRED", compat._REQUIRED + ((keras.Model, "_gone"),))
    with pytest.raises(ImportError, match=r"Keras 3\.15\.1 lacks Model\._gone, which keras_ast "
                                          r"needs \(keras_ast/compat\.py\)"):
        compat.check_keras("3.15.1", environ={})


def _project_names(files):
    """Underscore names keras_ast defines itself (functions, classes, attributes)."""
    names = set()
    pattern = re.compile(r"def (_\w+)|self\.(_\w+)\s*=|^\s*(_\w+)\s*=|class (_\w+)", re.M)
    for path in files:
        for match in pattern.finditer(open(path).read()):
            names.add(next(g for g in match.groups() if g))
    return names


def test_private_keras_apis_are_used_in_compat_only():
    """Every ``x._name`` in keras_ast, the launchers and the benchmarks names something keras_ast
    defines, and nothing imports keras.src, except in keras_ast/compat.py."""
    files = [f for pattern in ("keras_ast/**/*.py", "launch/*.py", "bench/*.py")
             for f in glob.glob(os.path.join(ROOT, pattern), recursive=True)]
    assert len(files) > 20
    ours = _project_names(files)
    outside = []
    for path in files:
        if path.endswith(os.path.join("keras_ast", "compat.py")):
            continue
        for number, line in enumerate(open(path), 1):
            code = line.split("#")[0]
            names = [n for n in re.findall(r"\w\.(_[A-Za-z]\w*)", code) if n not in ours]
            if names or "keras.src" in code:
                outside.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not outside, "\n".join(outside)
