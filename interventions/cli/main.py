"""The ``intervene`` command line: a thin layer over the Python API (one file per verb)."""

from __future__ import annotations

import typer

from . import testbed
from .analyze import report_command, stats_command
from .compare import compare_command
from .compare_runs import compare_runs_command
from .detect import detect_command
from .experiment import experiment_command
from .heads import heads_command
from .reproduce import reproduce_command
from .run import run_command, schema_command, validate_command

app = typer.Typer(
    name="intervene",
    help="Causal interventions on attention sinks in decoder-only transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        from interventions.store import package_versions

        v = package_versions()
        typer.echo(" ".join(f"{k} {v[k]}" for k in ("interventions", "torch", "transformers", "pyvene", "python")))
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print versions of this tool, torch, transformers and pyvene.")):
    """Causal interventions on attention sinks. Start with `intervene detect --help` or `intervene run --help`."""
    from interventions.progress import install_warnings_once

    install_warnings_once()  # a library warning repeated in every forward is printed once per command


app.command("detect")(detect_command)
app.command("run")(run_command)
app.command("validate")(validate_command)
app.command("schema")(schema_command)
app.command("stats")(stats_command)
app.command("report")(report_command)
app.command("experiment")(experiment_command)
app.command("compare")(compare_command)
app.command("compare-runs")(compare_runs_command)
app.command("heads")(heads_command)
app.command("reproduce")(reproduce_command)
app.add_typer(testbed.app, name="testbed")


if __name__ == "__main__":  # python -m interventions.cli.main (torchrun launches it this way)
    app()
