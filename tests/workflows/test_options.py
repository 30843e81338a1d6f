"""Bad options are ValueErrors in process; only a command line turns them into exit status 2."""

import sys
from types import SimpleNamespace

import pytest

from monai_protoshare.workflows.options import (
    BundleOptionError,
    exit_on_option_error,
    fold_split,
    option_error,
    raise_option_error,
)


def _wrapped(error: BaseException) -> RuntimeError:
    """``error`` inside two RuntimeErrors, as MONAI's config machinery raises it."""
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as middle:
        try:
            raise RuntimeError("Failed to instantiate component") from middle
        except RuntimeError as outer:
            return outer


def test_option_error_is_a_value_error_with_the_option_and_a_one_line_message():
    with pytest.raises(ValueError) as err:
        fold_split([], 7)
    assert isinstance(err.value, BundleOptionError) and err.value.option == "--fold"
    assert str(err.value) == "--fold: must be an integer in 0..4; got 7." and err.value.code == 2


def test_the_error_is_found_and_reraised_from_inside_monai_wrappers():
    error = BundleOptionError("--dataset_dir", "'/x' does not exist.")
    assert option_error(_wrapped(error)) is error and option_error(_wrapped(KeyError("k"))) is None
    with pytest.raises(BundleOptionError) as raised, raise_option_error():
        raise _wrapped(error)
    assert raised.value is error
    with pytest.raises(RuntimeError, match="instantiate"), raise_option_error():
        raise _wrapped(KeyError("k"))  # not an option error: left as it is


def test_the_command_line_exits_with_status_2_and_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_option_error(BundleOptionError("--fold", "bad."))
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: --fold: bad.\n"


def test_functions_bundle_configs_call_exit_only_under_the_monai_bundle_command(monkeypatch, capsys):
    with pytest.raises(BundleOptionError):
        fold_split([], -1)
    assert capsys.readouterr().err == ""
    bundle_cli = SimpleNamespace(__spec__=SimpleNamespace(name="monai.bundle.__main__"))
    monkeypatch.setitem(sys.modules, "__main__", bundle_cli)
    with pytest.raises(SystemExit) as exit_info:
        fold_split([], -1)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --fold: must be an integer in 0..4; got -1.\n"
