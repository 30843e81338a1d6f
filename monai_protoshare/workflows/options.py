"""Bundle-facing helpers that turn bad options into one-line errors naming the option.

The functions here raise :class:`BundleOptionError`, a :class:`ValueError`: a notebook, a test or a MONAI Label
server catches it like any other. Only the command line turns it into an exit: :func:`exit_on_option_error` for
this project's entry points, and :func:`command_line_edge` for the functions bundle configs call, which end a
``python -m monai.bundle run`` process with status 2 and the one line on stderr (MONAI's config machinery would
otherwise wrap the error in its own ``RuntimeError`` and print the whole chain). :func:`option_error` finds the
error inside MONAI's wrappers for in-process callers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
from monai.bundle import ConfigWorkflow
from torch import nn

from ..data.brats import NAME_MAPPING, BratsDatasetError, load_brats_datalist, validate_datalist
from ..data.cases import SEQUENCES, sequence_files
from ..data.splits import fold_datalists

__all__ = [
    "EXIT_STATUS",
    "BundleOptionError",
    "OptionCheckedWorkflow",
    "bad_cases",
    "checked_weights_path",
    "command_line_edge",
    "exit_on_option_error",
    "fold_split",
    "inference_datalist",
    "load_datalist",
    "load_network_weights",
    "option_error",
    "raise_option_error",
    "report_option_error",
    "without_bad_cases",
]

logger = logging.getLogger(__name__)

#: Exit status of a command line given a bad option (argparse's, for usage errors).
EXIT_STATUS = 2
_F = TypeVar("_F", bound=Callable[..., Any])


class BundleOptionError(ValueError):
    """A bad bundle or command-line option: ``str(err)`` is the one-line message, ``err.option`` the option's name.

    Example:
        >>> try:
        ...     fold_split([], 7)
        ... except BundleOptionError as err:
        ...     print(err.option, "|", err)
        --fold | --fold: must be an integer in 0..4; got 7.
    """

    #: the exit status a command line ends with for this error
    code = EXIT_STATUS

    def __init__(self, option: str, message: str) -> None:
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")

    def __reduce__(self):  # picklable (a parallel cross-validation worker sends it back to its parent)
        return type(self), (self.option, self.message)


def option_error(error: BaseException) -> BundleOptionError | None:
    """The :class:`BundleOptionError` of ``error`` or of the exceptions it was raised from (MONAI wraps an error
    raised while a config is evaluated in ``RuntimeError`` wrappers of its own), or ``None``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, BundleOptionError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def raise_option_error() -> Iterator[None]:
    """Re-raise a :class:`BundleOptionError` hidden in MONAI's wrappers as itself (in-process bundle runs)."""
    try:
        yield
    except Exception as err:
        found = option_error(err)
        if found is None or found is err:
            raise
        raise found from None


def report_option_error(error: BundleOptionError) -> int:
    """The command line's edge, for a ``main`` that returns its status: write ``error: <message>`` to stderr and
    return :data:`EXIT_STATUS`."""
    sys.stderr.write(f"error: {error}\n")
    return error.code


def exit_on_option_error(error: BundleOptionError) -> NoReturn:
    """The command line's edge: :func:`report_option_error`, then exit with its status (Python prints nothing
    more for a ``SystemExit`` with an integer code)."""
    raise SystemExit(report_option_error(error)) from error


def _monai_bundle_command_line() -> bool:
    """Whether this process is ``python -m monai.bundle ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle", "monai.bundle.__main__")


def command_line_edge(function: _F) -> _F:
    """Decorate a function that bundle configs call: under ``python -m monai.bundle`` its
    :class:`BundleOptionError` ends the process (:func:`exit_on_option_error`); anywhere else (``ConfigWorkflow``
    in a server, a notebook, a test) the error propagates as the ``ValueError`` it is."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BundleOptionError as err:
            if _monai_bundle_command_line():
                exit_on_option_error(err)
            raise

    return wrapper  # type: ignore[return-value]


class OptionCheckedWorkflow(ConfigWorkflow):
    """A ``monai.bundle.ConfigWorkflow`` whose steps raise a bad option's :class:`BundleOptionError` itself rather
    than the ``RuntimeError`` MONAI's config machinery wraps it in (in-process runs: demo, cross-validation, tests).
    """

    def initialize(self) -> Any:
        with raise_option_error():
            return super().initialize()

    def run(self) -> Any:
        with raise_option_error():
            return super().run()

    def finalize(self) -> Any:
        with raise_option_error():
            return super().finalize()

    def check_properties(self) -> list[str] | None:
        with raise_option_error():  # evaluates the required properties (the datasets among them)
            return super().check_properties()


@command_line_edge
def load_datalist(
    dataset_dir: str | os.PathLike, skip_bad: bool = False, mark_bad: bool = False
) -> list[dict[str, Any]]:
    """The BraTS datalist of ``dataset_dir`` (:func:`~monai_protoshare.data.brats.load_brats_datalist`).

    ``mark_bad`` keeps the bad cases, marked with their ``problems``, so that the folds are those of the whole
    dataset; :func:`without_bad_cases` and :func:`bad_cases` then separate them (evaluation's ``skip_bad_cases``).

    Raises:
        BundleOptionError: ``--dataset_dir`` missing, not a folder, empty or invalid (the reader's list of
            problems follows the first line).
    """
    path = Path(str(dataset_dir)).expanduser()
    if not path.exists():
        raise BundleOptionError("--dataset_dir", f"'{path}' does not exist (expected a BraTS-2020 training folder).")
    if not path.is_dir():
        raise BundleOptionError("--dataset_dir", f"'{path}' is not a folder.")
    if not any(path.iterdir()):
        raise BundleOptionError(
            "--dataset_dir", f"'{path}' is empty (expected BraTS20_Training_* folders and name_mapping.csv)."
        )
    try:
        datalist = load_brats_datalist(path, skip_bad=skip_bad, mark_bad=mark_bad)
    except (BratsDatasetError, FileNotFoundError, ValueError) as err:
        raise BundleOptionError("--dataset_dir", str(err)) from None
    if not datalist:
        raise BundleOptionError("--dataset_dir", f"'{path}' holds no usable case.")
    return datalist


def without_bad_cases(datalist: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items of ``datalist`` that :func:`load_datalist` did not mark with ``problems``."""
    return [item for item in datalist if not item.get("problems")]


def bad_cases(datalist: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"subject_id", "problems"}`` of each item marked with ``problems`` (the summary of the skipped cases)."""
    return [
        {"subject_id": item["subject_id"], "problems": item["problems"]} for item in datalist if item.get("problems")
    ]


@command_line_edge
def fold_split(
    datalist: list[dict[str, Any]], fold: int, n_folds: int = 5, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, held-out) cases of ``fold`` (:func:`~monai_protoshare.data.splits.fold_datalists`).

    Raises:
        BundleOptionError: ``--fold`` outside 0..n_folds-1 or not an integer.
    """
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise BundleOptionError("--fold", f"must be an integer in 0..{n_folds - 1}; got {fold!r}.")
    return fold_datalists(datalist, fold, n_splits=n_folds, seed=seed)


@command_line_edge
def load_network_weights(network: nn.Module, path: str | os.PathLike, option: str = "--ckpt_path") -> nn.Module:
    """Load a state dict (``model.pt``, or the ``network`` entry of a training checkpoint) into ``network``.

    Loaded with ``weights_only=True``: a file cannot execute code.

    Raises:
        BundleOptionError: missing/unreadable file, or weights of another model or configuration.
    """
    network.load_state_dict(_checked_state(network, path, option))
    logger.info("loaded weights from %s", path)
    return network


@command_line_edge
def checked_weights_path(network: nn.Module, path: str | os.PathLike, option: str = "--model_path") -> str:
    """``path`` once it is known to hold weights that fit ``network``: what a bundle hands MONAI's
    ``CheckpointLoader``, so a missing file, a file with code in it or the weights of another model fail before
    the run with the file and the option named (the loader itself reads it again, ``weights_only=True``).

    Raises:
        BundleOptionError: as :func:`load_network_weights`.
    """
    _checked_state(network, path, option)
    return str(path)


def _checked_state(network: nn.Module, path: str | os.PathLike, option: str) -> dict[str, torch.Tensor]:
    """The state dict at ``path`` (``weights_only``), checked to have exactly ``network``'s tensor names and shapes."""
    path = Path(str(path))
    if not path.is_file():
        raise BundleOptionError(
            option, f"weights file '{path}' not found (train first, e.g. configs/train.yaml, or pass its path)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, a pickle with code in it, not a torch file, ...
        raise BundleOptionError(
            option,
            f"cannot load '{path}' as weights (expected a state dict saved with torch.save, e.g. a run's model.pt): "
            f"{str(err).splitlines()[0] if str(err).strip() else type(err).__name__}",
        ) from None
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise BundleOptionError(option, f"'{path}' does not hold a state dict.")
    expected = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in network.state_dict().items()}
    got = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in state.items()}
    missing, unexpected = set(expected) - set(got), set(got) - set(expected)
    resized = [name for name in expected if name in got and got[name] != expected[name]]
    if missing or unexpected or resized:
        detail = (
            f"{len(missing)} tensors missing, {len(unexpected)} unexpected"
            if missing or unexpected
            else f"size mismatch for {resized[0]}: {got[resized[0]]} in the file, {expected[resized[0]]} in the network"
        )
        raise BundleOptionError(
            option,
            f"'{path}' holds weights of another model or configuration than '{type(network).__name__}' ({detail}).",
        )
    return state


@command_line_edge
def inference_datalist(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Cases to predict: a MONAI datalist JSON (key ``testing``, else ``validation``, else ``training``), a
    BraTS-layout folder with ``name_mapping.csv`` (grades and segmentations optional, e.g. the output of
    ``data_prep``), or any folder of case folders ``<case>/<case>_{t1,t1ce,t2,flair}.nii[.gz]``. Every case's
    files are validated (:func:`~monai_protoshare.data.brats.validate_datalist`) before anything runs.

    Raises:
        BundleOptionError: ``--dataset_dir`` missing, not valid JSON, holding no complete case, or holding
            bad files (every problem listed as subject | file | problem).
    """
    path = Path(str(source)).expanduser()
    if path.is_file() and path.suffix == ".json":
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleOptionError("--dataset_dir", f"datalist '{path}' is not a JSON file: {err}.") from None
        for key in ("testing", "validation", "training"):
            if isinstance(data, dict) and key in data:
                items = data[key]
                break
        else:
            raise BundleOptionError(
                "--dataset_dir", f"datalist '{path}' has no 'testing', 'validation' or 'training' list."
            )
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("image"), list) for i in items
        ):
            raise BundleOptionError(
                "--dataset_dir",
                f"datalist '{path}' '{key}' must be a list of items with an 'image' list of four paths.",
            )
        base = path.parent
        return _validated([
            {**item, "image": [str(base / p) if not os.path.isabs(p) else p for p in item["image"]],
             "subject_id": item.get("subject_id", Path(item["image"][0]).parent.name if item["image"] else "")}
            for item in items
        ], path)  # fmt: skip
    if not path.is_dir():
        raise BundleOptionError("--dataset_dir", f"'{path}' is neither a folder of cases nor a datalist .json.")
    if (path / NAME_MAPPING).is_file():  # BraTS layout (also data_prep's output): validated, labels optional
        try:
            items = load_brats_datalist(path, labelled=False)
        except (BratsDatasetError, FileNotFoundError) as err:
            raise BundleOptionError("--dataset_dir", str(err)) from None
        return [{k: v for k, v in item.items() if v is not None} for item in items]
    cases = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {sequence: str(paths[0]) for sequence, paths in sequence_files(folder).items() if paths}
        if len(files) == len(SEQUENCES):
            cases.append({"image": [files[s] for s in SEQUENCES], "subject_id": folder.name})
        elif files:
            missing = sorted(set(SEQUENCES) - set(files))
            logger.warning("skipping %s: no %s sequence file", folder, ", ".join(missing))
    if not cases:
        raise BundleOptionError(
            "--dataset_dir", f"'{path}' holds no case folder with *_t1, *_t1ce, *_t2 and *_flair NIfTI files."
        )
    return _validated(cases, path)


def _validated(cases: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    try:
        return validate_datalist(cases, source)
    except BratsDatasetError as err:
        raise BundleOptionError("--dataset_dir", str(err)) from None
