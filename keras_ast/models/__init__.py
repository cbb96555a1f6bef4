"""Model zoo: plain Keras models that `keras_ast.sparsify` turns into AST models."""

from keras_ast.models.small_cnn import small_cnn
