"""End to end on real data: the README's example trains 3 sub-nets (50/75/90 %) of the small CNN
on the digits, and each sub-net lands within 2 points of the same CNN trained dense."""

import re
import time
from pathlib import Path

import keras

import keras_ast
from keras_ast.data import load_digits
from keras_ast.models import small_cnn

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example():
    text = README.read_text()
    match = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its Python API example"
    return match.group(1)


def _dense_accuracy(epochs=30):
    train, test = load_digits(batch_size=32, drop_remainder=True)
    steps = int(train.cardinality())
    model = small_cnn()
    model.compile(
        optimizer=keras_ast.SGD(keras.optimizers.schedules.CosineDecay(0.05, steps * epochs),
                                momentum=0.9, l2=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs, verbose=0)
    return model.evaluate(test, return_dict=True, verbose=0)["accuracy"]


def test_readme_example_matches_dense_accuracy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example saves ast.keras
    code = _readme_example().replace("callbacks=[prune])", "callbacks=[prune], verbose=0)")
    scope = {}
    start = time.perf_counter()
    exec(compile(code, str(README), "exec"), scope)
    seconds = time.perf_counter() - start
    model = scope["model"]
    results = model.evaluate_subnets(scope["test"])
    keras.utils.set_random_seed(1234)
    dense = _dense_accuracy()
    print(f"AST-GC 3 sub-nets: {seconds:.1f} s; dense {100 * dense:.2f}%; "
          + ", ".join(f"{100 * s:.0f}%: {100 * r['accuracy']:.2f}%"
                      for s, r in zip(model.sparsities, results.values())))
    for k, target in enumerate(model.sparsities):
        assert abs(model.subnet_sparsity(k) - target) < 1e-3
        assert results[k]["accuracy"] >= dense - 0.02, (k, results[k], dense)
    assert (tmp_path / "ast.keras").exists()
