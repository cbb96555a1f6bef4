"""What every input pipeline returns beside its data sets."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Shape facts of a data set: classes, split sizes, image shape (H, W, C)."""

    name: str
    num_classes: int
    num_train: int
    num_test: int
    image_shape: tuple


class DataNotFoundError(FileNotFoundError):
    """A data set is not on disk where it was looked for; the message says what to put where."""
