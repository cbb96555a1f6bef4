"""The launcher end to end: default run, summary, exports, bad flags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from keras_ast import export
from keras_ast.data import load_digits_arrays

ROOT = Path(__file__).resolve().parents[1]


def _launch(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(result):
    """The `error:` lines a launcher run printed to stderr."""
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    result = _launch(f"--output_dir={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_default_run_summary(default_run):
    out, result = default_run
    summary = json.loads((out / "summary.json").read_text())
    entries = summary["subnets"]
    assert [e["target_sparsity"] for e in entries] == [0.5, 0.75, 0.9]
    model = keras.models.load_model(out / "model.keras")
    names = [layer.name for layer in model.sparse_layers]
    for e in entries:
        # Recomputed here from the exported SavedModel's kernels.
        measured = export.saved_model_sparsity(e["export_path"], names)
        assert measured == pytest.approx(e["measured_sparsity"])
        assert abs(measured - e["target_sparsity"]) < 0.005
        assert e["accuracy"] > 0.9  # chance is 0.1
    assert "sub-net" in result.stdout and "90.00%" in result.stdout  # the table


def test_saved_models_predict_like_the_in_memory_subnets(default_run):
    out, _ = default_run
    x = load_digits_arrays(seed=0).x_test[:100]
    model = keras.models.load_model(out / "model.keras")
    for k in range(model.num_subnets):
        loaded = tf.saved_model.load(str(out / "export" / f"subnet_{k}"))
        model.set_subnet(k)
        np.testing.assert_allclose(np.asarray(loaded.serve(x)), model.predict(x, verbose=0),
                                   atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--model=vgg99"], "unknown --model='vgg99'"),
    (["--sparsities=0.9,0.5"], "strictly increasing"),
    (["--sparsities=0.5,1.2"], "[0, 1)"),
    (["--dataset=cifar10"], "needs --data_dir"),
    (["--dataset=cifar10", "--data_dir=/nonexistent/x"], "does not exist"),
    (["--gc=sometimes"], "unknown --gc"),
    (["--dataset=image_folder"], "needs --data_dir"),
    (["--dataset=image_folder", "--data_dir=.", "--augment=maybe"], "unknown --augment"),
    (["--dataset=image_folder", "--data_dir=.", "--image_size=32"], "two positive integers"),
    (["--dataset=image_folder", "--data_dir=.", "--train_subset=0"], "--train_subset must"),
    (["--train_subset=100"], "--train_subset applies to --dataset=image_folder"),
    (["--dataset=fashion_mnist", "--data_dir=.", "--image_size=8,8"],
     "--image_size applies to --dataset=image_folder only"),
    (["--width_multiplier=0.5"], "--width_multiplier applies to --model=resnet20, mobilenet"),
    (["--prunable=1x1"], "unknown --prunable='1x1'"),
    (["--model=resnet20", "--width_multiplier=0"], "--width_multiplier must be > 0"),
    (["--mode=dense", "--gc=global"], "--mode=dense has no alternation"),
    (["--preset=paper"], "unknown --preset='paper'"),
    (["--updater=rigl", "--preset=authors_code"], "does not apply to --updater=rigl"),
])
def test_bad_flags_fail_with_one_line(args, message, tmp_path):
    result = _launch(*args, f"--output_dir={tmp_path}/out", timeout=120)
    assert result.returncode != 0
    lines = _error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # nothing was built


def test_schedule_that_cannot_fit_the_run_fails_with_one_line(tmp_path):
    """Two epochs of 42 steps: the default schedule (an update every epoch, pruning until
    68.75 %) cannot reach the final sparsity; the run stops before any step, with one line."""
    result = _launch("--epochs=2", f"--output_dir={tmp_path}/out", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = _error_lines(result)
    assert len(lines) == 1 and "would reach its final sparsity" in lines[0]
    assert "--update_frequency" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_missing_cifar_data_names_the_file(tmp_path):
    result = _launch("--dataset=cifar10", f"--data_dir={tmp_path}", "--model=wrn32",
                     f"--output_dir={tmp_path}/out", timeout=120)
    assert result.returncode == 2
    assert "cifar-10-python.tar.gz" in result.stderr


def test_image_folder_errors_are_one_line(tmp_path):
    """A bad image folder stops the launcher with one error line naming the path."""
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "test" / "a").mkdir(parents=True)
    result = _launch("--dataset=image_folder", f"--data_dir={tmp_path}/data",
                     f"--output_dir={tmp_path}/out", timeout=120)
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and f"{tmp_path}/data/train/a holds no image" in lines[0]
    assert "Traceback" not in result.stderr


def test_export_sparsity_rejects_unknown_layers(default_run):
    out, _ = default_run
    with pytest.raises(ValueError, match="lacks some kernels"):
        export.saved_model_sparsity(str(out / "export" / "subnet_0"), ["no_such_layer"])


def test_flagfiles_parse():
    for name in ("cifar10_wrn32", "cifar100_wrn32", "imagenet_resnet50"):
        result = subprocess.run(
            [sys.executable, "-c",
             "import sys; from absl import flags; import launch.train as t; "
             f"flags.FLAGS(['x', '--flagfile=launch/configs/{name}.flags']); "
             "print(flags.FLAGS.model, flags.FLAGS.sparsities)"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    assert keras_ast.__version__


# Every flag of the launcher with a bad value: FlagError naming it, before anything is built
# (checked in-process; the subprocess tests below show the one `error:` line and exit status 2).
# {DATA} is a directory the test creates, {FILE} a file.
BAD_FLAGS = [
    (["--dataset=mnist"], "unknown --dataset='mnist'"),
    (["--dataset=image_folder", "--data_dir={DATA}/none"], "--data_dir={DATA}/none does not exist"),
    (["--dataset=image_folder", "--data_dir={DATA}", "--image_size=0,8"],
     "--image_size=0,8: give two positive integers H,W"),
    (["--dataset=image_folder", "--data_dir={DATA}", "--augment=maybe"],
     "unknown --augment='maybe'"),
    (["--dataset=image_folder", "--data_dir={DATA}", "--train_subset=0"],
     "--train_subset must be >= 1"),
    (["--model=vgg"], "unknown --model='vgg'"),
    (["--model=resnet20", "--width_multiplier=0"], "--width_multiplier must be > 0"),
    (["--prunable=all"], "unknown --prunable='all'"),
    (["--sparsities=0.5,1.5"], "every sparsity must be in [0, 1)"),
    (["--initial_sparsity=0.6"], "--initial_sparsity must be in [0, the smallest --sparsities "
                                 "value 0.5]"),
    (["--mode=both"], "unknown --mode='both'"),
    (["--prune_mode=random"], "unknown --prune_mode='random'"),
    (["--updater=snip"], "unknown --updater='snip'"),
    (["--updater=rigl", "--density=normal"], "unknown --density='normal'"),
    (["--gc=all"], "unknown --gc='all'"),
    (["--gc_reference=applied"], "unknown --gc_reference='applied'"),
    (["--preset=paper"], "unknown --preset='paper'"),
    (["--epochs=0"], "--epochs must be >= 1"),
    (["--batch_size=0"], "--batch_size must be >= 1"),
    (["--lr=-1"], "--lr must be > 0"),
    (["--lr=nan"], "--lr must be > 0"),
    (["--lr_schedule=linear"], "unknown --lr_schedule='linear'"),
    (["--warmup_epochs=30"], "--warmup_epochs must be in [0, --epochs=30)"),
    (["--momentum=1"], "--momentum must be in [0, 1)"),
    (["--weight_decay=-0.1"], "--weight_decay must be >= 0"),
    (["--label_smoothing=1"], "--label_smoothing must be in [0, 1)"),
    (["--update_frequency=0"], "--update_frequency must be >= 1"),
    (["--adjustment_period=-2"], "--adjustment_period must be >= 0"),
    (["--prune_start_epoch=-1"], "--prune_start_epoch must be in [0, --epochs=30)"),
    (["--prune_end_epoch=31"], "--prune_end_epoch must be in (--prune_start_epoch=0.0, "
                               "--epochs=30]"),
    (["--seed=-1"], "--seed must be in [0, 2**32)"),
    (["--output_dir="], "--output_dir must not be empty"),
    (["--output_dir={FILE}"], "--output_dir={FILE} is a file, not a directory"),
    (["--verbose=3"], "--verbose must be 0, 1 or 2"),
    (["--nm_counts=zeros", "--nm=2:4,9:8"], "--nm=2:4,9:8 --nm_counts=zeros:"),
    (["--nm=2:4", "--nm_counts=ones"], "unknown --nm_counts='ones'"),
    (["--eval_every=-1"], "--eval_every must be >= 0"),
    (["--distribution=tpu"], "unknown --distribution='tpu'"),
    (["--mode=dense", "--agent"], "--agent corrects the sub-nets' gradients"),
    (["--agent", "--agent_alpha=0"], "--agent_alpha must be in (0, 1]"),
    (["--agent", "--agent_gamma=-1"], "--agent_gamma must be >= 0"),
    (["--agent", "--agent_tau0=inf"], "--agent_tau0 must be finite"),
    (["--mode=dense", "--sup_tickets"], "--sup_tickets superposes the sub-nets' tickets"),
    (["--cycle_epochs=2"], "--cycle_epochs applies with --sup_tickets only"),
    (["--sup_tickets", "--cycle_epochs=0"], "--cycle_epochs must be >= 1"),
    (["--sup_tickets", "--cycle_rate=1"], "--cycle_rate must be in (0, 1)"),
    (["--sup_tickets", "--epochs=5"], "--epochs=5 x --cycle_rate=0.1 is less than one cycle"),
    (["--sup_tickets", "--cycle_lr=0.1"], "--cycle_lr=0.1: give two positive rates"),
    (["--sup_tickets", "--superpose=swa"], "unknown --superpose='swa'"),
    (["--sup_tickets", "--cima_factor=0"], "--cima_factor must be in (0, 1]"),
    (["--sup_tickets", "--reexplore=1"], "--reexplore must be in [0, 1)"),
    (["--sup_tickets", "--bn_batches=-1"], "--bn_batches must be >= 0"),
    (["--sup_tickets", "--prune_end_epoch=29"], "--prune_end_epoch=29.0 is after the first "
                                                "phase (27 epochs"),
    (["--backup_dir={FILE}"], "--backup_dir={FILE} is a file, not a directory"),
    (["--checkpoint_every=0"], "--checkpoint_every must be >= 1"),
    (["--keep_checkpoints=0"], "--keep_checkpoints must be >= 1"),
]
# Flags whose every value is valid once absl has parsed it (booleans; absl's own parse errors
# are one `error:` line too: test_a_value_absl_cannot_parse_is_one_error_line).
ANY_PARSED_VALUE = {"jit_compile", "export", "tensorboard", "sync_batchnorm", "resume",
                    "data_dir"}


def _fill(args, tmp_path):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "file").write_text("x")
    return [a.replace("{DATA}", str(tmp_path / "data")).replace("{FILE}", str(tmp_path / "file"))
            for a in args]


@pytest.mark.parametrize("args, message", BAD_FLAGS)
def test_every_flag_is_checked_up_front(args, message, tmp_path):
    from launch import train

    train.FLAGS(["launch.train", f"--output_dir={tmp_path}/out", *_fill(args, tmp_path)])
    try:
        with pytest.raises(train.FlagError) as caught:
            train.check_flags()
        assert _fill([message], tmp_path)[0] in str(caught.value)
    finally:
        train.FLAGS.unparse_flags()


def test_the_table_of_bad_flags_covers_every_flag():
    from launch import train

    defined = {f.name for f in train.FLAGS.get_key_flags_for_module(train)}
    covered = {a.split("=")[0][2:] for args, _ in BAD_FLAGS for a in args[-1:]}
    assert defined - covered - ANY_PARSED_VALUE == set()


def test_a_value_absl_cannot_parse_is_one_error_line(tmp_path):
    for arg, message in (("--epochs=abc", "error: flag --epochs=abc: invalid literal"),
                         ("--resume=maybe", "error: flag --resume=maybe: "),
                         ("--steps=3", "error: Unknown command line flag 'steps'")):
        result = _launch(arg, f"--output_dir={tmp_path}/out", timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = _error_lines(result)
        assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
        assert "Traceback" not in result.stderr


def test_bad_lr_prints_one_error_line_and_exits_2(tmp_path):
    result = _launch("--lr=-1", f"--output_dir={tmp_path}/out", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = _error_lines(result)
    assert lines == ["error: --lr must be > 0, got -1.0"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
