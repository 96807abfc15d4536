"""A library warning raised in every forward is printed once per command (issue 11)."""

from __future__ import annotations

import io
import warnings

from rich.console import Console

from interventions.progress import WarningsOnce, warnings_once


def _library_forward() -> None:
    """What transformers / pyvene do in every forward: a catch_warnings block (which invalidates the
    registry of warnings already shown) and a deprecation warning from the same line."""
    with warnings.catch_warnings():
        pass
    warnings.warn("`past_key_values` is deprecated; use `cache` instead.", FutureWarning, stacklevel=1)


def test_python_alone_repeats_the_warning_after_each_catch_warnings_block():
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda *args, **kwargs: shown.append(args[0])
        for _ in range(5):
            _library_forward()
    assert len(shown) == 5  # the problem the hook solves


def test_each_distinct_warning_is_printed_once():
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        with warnings_once(Console(file=buffer, width=200)) as hook:
            for _ in range(5):
                _library_forward()
            warnings.warn("another one", UserWarning, stacklevel=1)
            warnings.warn("another one", UserWarning, stacklevel=1)
    text = buffer.getvalue()
    assert text.count("past_key_values") == 1 and text.count("another one") == 1
    assert "FutureWarning" in text and "repeats not shown" in text and "test_warnings_once.py" in text
    assert text.startswith("library warning:")  # told apart from the tool's own "warning:" lines
    assert hook.repeats[("FutureWarning", "`past_key_values` is deprecated; use `cache` instead.")] == 4


def test_filters_still_decide_what_is_shown():
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with warnings_once(Console(file=buffer)):
            warnings.warn("hidden by the filter", DeprecationWarning, stacklevel=1)
    assert buffer.getvalue() == ""


def test_every_cli_command_installs_the_hook():
    from typer.testing import CliRunner

    from interventions.cli.main import app

    before = warnings.showwarning
    try:
        result = CliRunner().invoke(app, ["schema"])
        assert result.exit_code == 0, result.output
        assert isinstance(warnings.showwarning, WarningsOnce)
    finally:
        warnings.showwarning = before
