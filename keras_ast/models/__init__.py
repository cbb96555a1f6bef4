"""Model zoo: plain Keras models that `keras_ast.sparsify` turns into AST models."""
