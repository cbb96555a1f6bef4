"""Input pipelines: the embedded digits set, CIFAR-10/100 and ImageNet."""

from keras_ast.data.digits import load_digits, load_digits_arrays
