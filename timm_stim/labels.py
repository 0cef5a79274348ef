"""Class names of a run: read from its dataset, kept in its checkpoints, published with its weights.

The training program records the train dataset's class names in every checkpoint it saves
(``checkpoint_label_names`` reads them back), so that ``timm-stim push CHECKPOINT`` publishes
the same ``label_names`` as ``--push-to-hub`` at the end of training, which reads the dataset.
"""
from typing import Any, List, Optional

__all__ = ['LABEL_NAMES_KEY', 'dataset_label_names', 'checkpoint_label_names']

# Where a checkpoint keeps the class names: in timm's saver record (``checkpoint['saver']``), which
# timm's loaders ignore, so that the file stays a plain timm checkpoint.
LABEL_NAMES_KEY = 'timm_stim_label_names'


def dataset_label_names(dataset: Any, num_classes: Optional[int] = None) -> Optional[List[str]]:
    """Class names of a timm / torchvision dataset (or of one it wraps) in label order.

    Returns:
        The names, or None when unknown or when there are not ``num_classes`` of them.
    """
    for _ in range(5):  # a dataset wrapping a dataset wrapping ...
        for source in (getattr(dataset, 'reader', None), dataset):
            class_to_idx = getattr(source, 'class_to_idx', None)
            names = getattr(source, 'classes', None)
            if isinstance(class_to_idx, dict) and sorted(class_to_idx.values()) == list(range(len(class_to_idx))):
                names = sorted(class_to_idx, key=class_to_idx.get)
            if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                return list(names) if num_classes in (None, len(names)) else None
        dataset = getattr(dataset, 'dataset', None)
    return None


def checkpoint_label_names(checkpoint: Any) -> Optional[List[str]]:
    """The class names a training checkpoint recorded (``LABEL_NAMES_KEY``), or None."""
    saver = checkpoint.get('saver') if isinstance(checkpoint, dict) else None
    names = saver.get(LABEL_NAMES_KEY) if isinstance(saver, dict) else None
    return list(names) if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names) else None
