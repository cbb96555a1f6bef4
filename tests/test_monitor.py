"""Per-sub-net training metrics, per-sub-net validation and the run records, checked by hand."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, random_masks, tiny_cnn
from keras_ast import monitor, report


def _twin_models(sparsities, training="alternating", gc="layerwise"):
    plain = tiny_cnn()
    models = []
    for _ in range(2):
        model = keras_ast.ASTModel.from_model(plain, sparsities, gc=gc, training=training)
        random_masks(model, seed=3)
        compile_ast(model, lr=0.1, momentum=0.9)
        models.append(model)
    return models


def _hand_metrics(model, batches, training):
    """Each step's loss and accuracy of the sub-net(s) it trains, from a forward pass before
    the step (training mode, like the step's own), then the step itself (train_on_batch)."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    K = model.num_subnets
    per_subnet = {k: {"loss": [], "correct": [], "count": []} for k in range(K)}
    for t, (x, y) in enumerate(batches):
        for k in (range(K) if training == "joint" else [t % K]):
            model.active_subnet.assign(k)
            logits = model.network(x, training=True)
            per_subnet[k]["loss"].append(float(loss_fn(y, logits)) * len(x))
            per_subnet[k]["correct"].append(int(np.sum(np.argmax(logits, -1) == y)))
            per_subnet[k]["count"].append(len(x))
        model.train_on_batch(x, y)
    return {k: {"loss": sum(v["loss"]) / sum(v["count"]),
                "accuracy": sum(v["correct"]) / sum(v["count"])}
            for k, v in per_subnet.items()}


@pytest.mark.parametrize("training", ["alternating", "joint"])
def test_subnet_metrics_equal_hand_computed_ones(digits, training):
    """loss_k / accuracy_k over an epoch are sub-net k's own steps only (every step in joint
    training); Keras' mixed loss / accuracy stay as they are."""
    x, y = digits.x_train[:640], digits.y_train[:640]  # 20 batches of 32
    gc = "off" if training == "joint" else "layerwise"
    fitted, manual = _twin_models([0.5, 0.8], training=training, gc=gc)
    history = fitted.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    expected = _hand_metrics(manual, batches, training)
    for k in range(2):
        assert history[f"loss_{k}"][0] == pytest.approx(expected[k]["loss"], rel=1e-4)
        assert history[f"accuracy_{k}"][0] == pytest.approx(expected[k]["accuracy"], abs=1e-6)
    if training == "alternating":  # the mixed figures are the mean over both sub-nets' steps
        mixed = (expected[0]["accuracy"] + expected[1]["accuracy"]) / 2
        assert history["accuracy"][0] == pytest.approx(mixed, abs=1e-6)
        assert expected[0]["accuracy"] != expected[1]["accuracy"]
    # The test can tell the sub-nets apart (and a mixed figure from a per-sub-net one).
    assert abs(expected[0]["loss"] - expected[1]["loss"]) > 1e-2
    # Evaluation reports the selected sub-net only, without training-only figures.
    assert set(fitted.evaluate(x, y, return_dict=True, verbose=0)) == {"loss", "accuracy"}
    assert fitted.training_examples == ([640.0, 640.0] if training == "joint"
                                        else [320.0, 320.0])


def test_subnet_metrics_copy_metric_objects_and_survive_save_load(digits, tmp_path):
    """A metric object passed to compile gets a fresh copy per sub-net (no shared state)."""
    x, y = digits.x_train[:128], digits.y_train[:128]
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8])
    random_masks(model)
    model.compile(optimizer=keras_ast.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")])
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
    assert {"top3_0", "top3_1", "loss_0", "loss_1"} <= set(history)
    assert history["top3"][0] == pytest.approx((history["top3_0"][0] + history["top3_1"][0]) / 2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    # The cumulative counts are model state: saved, loaded, and counted on from there.
    np.testing.assert_array_equal(loaded.gc_statistics.numpy(), model.gc_statistics.numpy())
    assert loaded.training_examples == model.training_examples == [64.0, 64.0]
    assert "top3_1" in loaded.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert loaded.training_examples == [128.0, 128.0]


def test_subnet_validation_and_run_recorder(digits, tmp_path):
    x, y = digits.x_train[:192], digits.y_train[:192]
    val = (digits.x_test[:100], digits.y_test[:100])
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8], gc="global")
    compile_ast(model)
    prune = keras_ast.PruneRegrow(frequency=6, adjustment_period=3, total_steps=18, end_step=12)
    callbacks = [prune, keras_ast.SubnetValidation(val, frequency=2),
                 keras_ast.RunRecorder(tmp_path / "run", log_dir=tmp_path / "logs")]
    history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0,
                        callbacks=callbacks).history
    # Validation after epochs 2 and 3 (the last), equal to evaluating each sub-net by hand.
    assert len(history["val_accuracy_0"]) == 2
    for k in range(2):
        model.set_subnet(k)
        result = model.evaluate(*val, return_dict=True, verbose=0)
        assert history[f"val_accuracy_{k}"][-1] == pytest.approx(result["accuracy"])
        assert history[f"val_loss_{k}"][-1] == pytest.approx(result["loss"], rel=1e-5)
    model.set_subnet(0)
    lines = [json.loads(line) for line in open(tmp_path / "run" / monitor.HISTORY)]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and lines[-1]["iteration"] == 18
    assert "val_accuracy_1" not in lines[0]["logs"] and "val_accuracy_1" in lines[1]["logs"]
    assert lines[-1]["logs"]["regrow_ratio"] == pytest.approx(
        float(prune.ratio_schedule(17)))
    # Per-epoch GC counts add up to the model's totals; epoch e has 3 steps of sub-net 1.
    totals = model.gradient_statistics()[1]
    for name, value in totals.items():
        assert sum(r["gc"]["1"][name] for r in lines) == pytest.approx(value)
    assert [r["gc"]["1"]["steps"] for r in lines] == [3.0, 3.0, 3.0]
    # Masks and layer sparsities are the model's.
    run = report.load_run(tmp_path / "run")
    for k in range(2):
        for name, mask in model.masks(k).items():
            np.testing.assert_array_equal(run.masks[k][name], mask.astype(bool))
        assert lines[-1]["layer_sparsity"][k] == pytest.approx(model.layer_sparsities(k))
    assert lines[-1]["train_flops"] == pytest.approx(
        [model.training_flops[k] for k in range(2)])
    # A resumed fit appends; a new run (iteration 0) starts a new history.
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[
        keras_ast.RunRecorder(tmp_path / "run")])
    assert len(open(tmp_path / "run" / monitor.HISTORY).readlines()) == 4
    fresh = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8])
    compile_ast(fresh)
    fresh.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[
        keras_ast.RunRecorder(tmp_path / "run")])
    assert len(open(tmp_path / "run" / monitor.HISTORY).readlines()) == 1
    # The TensorBoard run of the recorder has the per-layer sparsities of every epoch.
    tags = {}
    for path in (tmp_path / "logs" / monitor.SUMMARY_RUN).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    name = model.sparse_layers[0].name
    assert [s for s, _ in tags[f"epoch_sparsity_1/{name}"]] == [0, 1, 2]
    assert tags[f"epoch_sparsity_1/{name}"][-1][1] == pytest.approx(
        lines[2]["layer_sparsity"][1][name])
    assert tags["epoch_gc_corrected"][-1][1] == pytest.approx(
        lines[2]["gc"]["1"]["corrected_steps"] / 3)


def test_callbacks_need_an_ast_model():
    plain = tiny_cnn()
    for callback in (keras_ast.RunRecorder("/tmp/unused"), keras_ast.SubnetValidation(None)):
        with pytest.raises(TypeError, match="needs a keras_ast.ASTModel"):
            callback.set_model(plain)
    with pytest.raises(ValueError, match="frequency must be an integer >= 1, got 0"):
        keras_ast.SubnetValidation(None, frequency=0)


def test_report_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.load_run(tmp_path / "nowhere")
    (tmp_path / monitor.RUN_INFO).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl: file not found.*RunRecorder"):
        report.load_run(tmp_path)
