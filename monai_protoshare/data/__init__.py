"""Data: BraTS-2020 datalist reader, synthetic cohort, preprocessing/augmentation transforms, folds.

Import from the modules (kept apart so that ``python -m monai_protoshare.data.synthetic`` needs neither
torch nor MONAI):

* :mod:`monai_protoshare.data.cases`: ``CLASS_NAMES``, ``SEQUENCES``, ``sequence_files``, ``case_files`` (what a
  case is, defined once).
* :mod:`monai_protoshare.data.brats`: ``load_brats_datalist``, ``BratsDatasetError``.
* :mod:`monai_protoshare.data.synthetic`: ``generate_cohort``.
* :mod:`monai_protoshare.data.transforms`: ``preprocessing_transforms``, ``augmentation_transforms``,
  ``train_transforms``, ``eval_transforms``, ``inference_transforms``, ``to_native_space``.
* :mod:`monai_protoshare.data.splits`: ``make_folds``, ``fold_datalists``, ``write_fold_datalists``.
"""

from .._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
