"""Individual (K=1) and joint (S-Net) training from the same engine, and the FLOPs accounting."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, random_masks, tiny_cnn
from keras_ast import compat, cost


def test_joint_step_equals_hand_computed_summed_loss_step(digits_batches):
    x, y = digits_batches[0][:32], digits_batches[1][:32]
    plain = tiny_cnn()
    joint = keras_ast.ASTModel.from_model(plain, [0.3, 0.7], gc="off", training="joint")
    manual = keras_ast.ASTModel.from_model(plain, [0.3, 0.7], gc="off")
    for m in (joint, manual):
        random_masks(m, seed=11)
    compile_ast(joint, lr=0.1, momentum=0.0)
    joint.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    # By hand: gradient of L_0 + L_1 (each sub-net with its masks and BN copy), one SGD step.
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = manual.trainable_variables
    kernels = {id(layer.shared_kernel): layer for layer in manual.sparse_layers}
    summed = [np.zeros(v.shape, "float32") for v in variables]
    for k in range(2):
        manual.active_subnet.assign(k)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, manual.network(x, training=True))
        for i, (v, g) in enumerate(zip(variables, tape.gradient(loss, variables))):
            g = np.asarray(tf.convert_to_tensor(g))
            if id(v) in kernels:
                g = g * np.asarray(kernels[id(v)].masks[k])
            summed[i] += g
    for v, g in zip(variables, summed):
        v.assign(np.asarray(v) - 0.1 * g)
    for a, b in zip(joint.network.weights, manual.network.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=a.path)


def test_joint_refuses_gc():
    with pytest.raises(ValueError, match="use gc='off'"):
        keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.9], training="joint")
    with pytest.raises(ValueError, match="unknown training 'both'"):
        keras_ast.ASTModel.from_model(tiny_cnn(), [0.5], training="both")


def test_individual_is_k1_of_either_strategy(digits):
    """Individual sparse training (K=1): alternating and joint engines give the same run."""
    x, y = digits.x_train[:320], digits.y_train[:320]
    plain = tiny_cnn()
    runs = []
    for training in ("alternating", "joint"):
        keras.utils.set_random_seed(3)
        model = compile_ast(keras_ast.ASTModel.from_model(plain, [0.8], training=training))
        prune = keras_ast.PruneRegrow(frequency=5, adjustment_period=0, end_step=20)
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, callbacks=[prune], verbose=0)
        runs.append(model)
    for a, b in zip(runs[0].weights, runs[1].weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=a.path)
    assert abs(runs[0].subnet_sparsity(0) - 0.8) < 1e-3


# ------------------------------------------------------------------------------------ FLOPs
def test_layer_macs_by_hand():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)            # 8*8*3*3*3*4
    b = keras.layers.Conv2D(6, 3, strides=2, padding="valid", name="b")(a)     # 3*3*3*3*4*6
    c = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="c")(b)
    d = keras.layers.Dense(5, name="d")(keras.layers.Flatten()(c))             # 108*5
    model = keras.Model(inputs, d)
    expected = {"a": 8 * 8 * 9 * 3 * 4, "b": 3 * 3 * 9 * 4 * 6, "c": 3 * 3 * 9 * 6 * 2,
                "d": 3 * 3 * 12 * 5}
    for name, macs in expected.items():
        assert cost.layer_macs(model.get_layer(name)) == macs
    assert cost.model_macs(model) == sum(expected.values())
    ast = keras_ast.ASTModel.from_model(model, [0.5])
    assert cost.model_macs(ast.network) == sum(expected.values())  # sparse layers count too


def test_macs_of_the_other_layer_types_by_hand():
    """Conv1D / Conv3D / transposed / separable / depthwise-1D / EinsumDense (cost.py)."""
    seq = keras.Input((10, 3))
    c1 = keras.layers.Conv1D(4, 3, padding="valid", name="c1")(seq)                 # 8 x 3*3*4
    d1 = keras.layers.DepthwiseConv1D(3, padding="same", name="d1")(c1)              # 8 x 3*4
    s1 = keras.layers.SeparableConv1D(5, 3, padding="same", depth_multiplier=2,
                                      name="s1")(d1)                                 # 8 x (24+40)
    e1 = keras.layers.EinsumDense("abc,cd->abd", output_shape=(8, 6), name="e1")(s1)  # 8*6 x 5
    vol = keras.Input((4, 4, 4, 2))
    c3 = keras.layers.Conv3D(3, 2, padding="valid", name="c3")(vol)                  # 27 x 8*2*3
    t2 = keras.layers.Conv2DTranspose(2, 3, strides=2, name="t2")(
        keras.Input((5, 5, 3)))                                                      # 25 x 9*2*3
    s2 = keras.layers.SeparableConv2D(4, 3, padding="same", name="s2")(
        keras.Input((6, 6, 2)))                                                      # 36 x (18+8)
    model = keras.Model([seq], [e1])
    expected = {"c1": 8 * 36, "d1": 8 * 12, "s1": 8 * (24 + 40), "e1": 8 * 6 * 5}
    for name, macs in expected.items():
        assert cost.layer_macs(model.get_layer(name)) == macs, name
    assert cost.model_macs(model) == sum(expected.values())
    for tensor, macs in ((c3, 27 * 48), (t2, 25 * 54), (s2, 36 * 26)):
        assert cost.layer_macs(compat.producer(tensor)) == macs


def test_layers_whose_macs_are_not_counted_are_named_in_a_warning():
    inputs = keras.Input((6, 4))
    x = keras.layers.LSTM(8, return_sequences=True, name="lstm")(inputs)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = keras.layers.Dense(16, name="dense")(keras.layers.Flatten()(x))
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    assert cost.uncounted_layers(model) == [
        "lstm (LSTM)", "mha (MultiHeadAttention)"]
    with pytest.warns(UserWarning, match=r"training FLOPs .* leave out the multiply-accumulates "
                                         r"of lstm \(LSTM\), mha \(MultiHeadAttention"):
        keras_ast.ASTModel.from_model(model, [0.5], prunable=["dense"])


def test_wrn32_macs_match_the_paper():
    from keras_ast.models import wide_resnet32

    assert abs(cost.model_macs(wide_resnet32()) - 275.6e6) / 275.6e6 < 0.005
    # 160 epochs x 50,000 images dense: ~1.3e16 FLOPs (docs/design.md section 8)
    dense = cost.dense_training_flops(wide_resnet32(), 160 * 50_000)
    assert abs(dense / 1.3e16 - 1) < 0.03


def test_wrn32_training_cost_with_the_dense_backward_of_mask_updates():
    """The paper's set-up: 160 epochs of 391 batches of 128, a mask update every 1000 steps.
    At a constant 90 % sparsity of the pruned layers (the stem and the classifier dense), the
    cost re-derived from cost.step_flops is 3 x 2 x (dense MACs + 0.1 x pruned MACs) per example
    per step, plus on 62 update steps the kernel gradient over the pruned layers' 0.9 x MACs:
    a 0.29 % share, so the paper's figures (which leave it out) hardly change."""
    from keras_ast.models import wide_resnet32

    model = keras_ast.ASTModel.from_model(wide_resnet32(), [0.9])
    sparse = [cost.layer_macs(layer) for layer in model.sparse_layers]
    dense = cost.model_macs(model.network) - sum(sparse)
    assert abs(dense + sum(sparse) - 275.6e6) / 275.6e6 < 0.005
    steps, batch, updates = 160 * 391, 128, 160 * 391 // 1000
    density = [0.1] * len(sparse)
    ordinary = cost.step_flops(batch, dense, sparse, density)
    update = cost.step_flops(batch, dense, sparse, density, dense_backward=True)
    assert ordinary == pytest.approx(batch * 6 * (dense + 0.1 * sum(sparse)))
    assert update - ordinary == pytest.approx(batch * 2 * 0.9 * sum(sparse))
    total = (steps - updates) * ordinary + updates * update
    assert updates == 62
    assert 0.0028 < total / (steps * ordinary) - 1 < 0.0030


def _trained_flops(digits, sparsities, training, epochs=4):
    keras.utils.set_random_seed(5)
    model = compile_ast(keras_ast.ASTModel.from_model(
        tiny_cnn(), sparsities, training=training, gc="off"))
    # The stagger delays sub-net k's schedule by k * adjustment_period steps: 200 of 62,500 in
    # the paper's CIFAR run, but a visible share of this 80-step one, so keep it at 1 step.
    # Regrowth by the masked gradient: no step pays for a dense kernel gradient. (With the
    # dense one, K sub-nets updating every 12 steps make AST pay for it K times as often as one
    # individual run: 8 % more FLOPs at this tiny scale; at the paper's 1000 steps 0.3 % for
    # one run, about 0.9 % for AST with K = 3; see
    # test_wrn32_training_cost_with_the_dense_backward_of_mask_updates.)
    prune = keras_ast.PruneRegrow(frequency=12, adjustment_period=1 if len(sparsities) > 1 else 0,
                                  end_step=60, regrow_gradient="masked")
    model.fit(digits.x_train[:640], digits.y_train[:640], batch_size=32, epochs=epochs,
              callbacks=[prune], verbose=0)
    return model


def test_flops_ast_is_mean_of_individuals_joint_is_sum(digits):
    sparsities = [0.5, 0.75, 0.9]
    ast = _trained_flops(digits, sparsities, "alternating").training_flops
    joint = _trained_flops(digits, sparsities, "joint").training_flops
    individual = [_trained_flops(digits, [s], "alternating").training_flops["total"]
                  for s in sparsities]
    print(f"FLOPs: AST {ast['total']:.4g}, individual {[f'{v:.4g}' for v in individual]}, "
          f"joint {joint['total']:.4g}")
    assert abs(ast["total"] / np.mean(individual) - 1) < 0.05
    assert abs(joint["total"] / np.sum(individual) - 1) < 0.05
    # Each step is counted from the active sub-net's real densities: sparser costs less.
    assert individual[0] > individual[1] > individual[2]
    steps, batch = 4 * 20, 32
    dense_total = steps * batch * ast["dense_example"]
    assert individual[2] < dense_total  # the stem stays dense, so not 10%
