"""keras_ast: Alternating Sparse Training with Gradient Correction (AST-GC) for Keras 3.

Train K sparse sub-nets of one model in a single run at the cost of training one::

    import keras_ast
    model = keras_ast.ASTModel.from_model(plain_model, sparsities=[0.5, 0.75, 0.9])
    model.compile(optimizer=keras_ast.SGD(0.05, momentum=0.9, l2=5e-4), loss=..., metrics=[...])
    model.fit(train_ds, epochs=30, callbacks=[keras_ast.PruneRegrow(frequency=60,
                                                                     adjustment_period=20)])
    model.evaluate_subnets(test_ds)
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_ast.agent import Agent, AgentPass  # noqa: E402
from keras_ast.batchnorm import recalibrate_batchnorm  # noqa: E402
from keras_ast.callbacks import PruneRegrow, ScheduleError  # noqa: E402
from keras_ast.checkpoint import BackupAndRestore, resume_fit  # noqa: E402
from keras_ast.layers import (  # noqa: E402
    SparseConv2D,
    SparseDense,
    SparseDepthwiseConv2D,
    SwitchableBatchNormalization,
)
from keras_ast.model import ASTModel  # noqa: E402
from keras_ast.monitor import RunRecorder, SubnetValidation  # noqa: E402
from keras_ast.nm import NMPattern, parse_nm, parse_nm_list  # noqa: E402
from keras_ast.optimizers import SGD  # noqa: E402
from keras_ast.schedules import CosineDecay, CubicGroupFraction, CubicSparsity  # noqa: E402
from keras_ast.sparsify import sparsify  # noqa: E402
from keras_ast.suptickets import SupTickets, SupTicketsSchedule  # noqa: E402
from keras_ast import fidelity, updaters  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ASTModel",
    "Agent",
    "AgentPass",
    "BackupAndRestore",
    "CosineDecay",
    "CubicGroupFraction",
    "CubicSparsity",
    "NMPattern",
    "PruneRegrow",
    "RunRecorder",
    "SGD",
    "ScheduleError",
    "SparseConv2D",
    "SparseDense",
    "SparseDepthwiseConv2D",
    "SubnetValidation",
    "SupTickets",
    "SupTicketsSchedule",
    "SwitchableBatchNormalization",
    "fidelity",
    "parse_nm",
    "parse_nm_list",
    "recalibrate_batchnorm",
    "resume_fit",
    "sparsify",
    "updaters",
]
