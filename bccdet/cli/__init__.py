"""The bccdet command line (typer). ``python cli.py ...``, ``python -m bccdet.cli ...`` and the installed
``bccdet`` run this app.

Each command group is a module of this package (``analyze``, ``classify``, ``batch``, ``curate``,
``convert``, ``train``, ``evaluate``, ``rbc``); what they share (the error wrapper, option callbacks, help
texts) is ``common``. The commands parse their options, call one library function and print; this module
only builds the app and registers them, in the order ``--help`` lists them.

Errors the user can fix are printed as one line (``error: ...``) with exit status 2 (usage / unusable
input) or 1 (some inputs failed); set ``BCCDET_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import sys

import typer

from . import analyze, batch, classify, convert, curate, evaluate, rbc, train
from .common import _err

__all__ = ["app", "main"]

app = typer.Typer(
    name="bccdet",
    help="Find, outline and type every cell in peripheral blood smears (research use, not a diagnosis).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
convert_app = typer.Typer(help="Convert data sets into YOLO detect / segment / classify layouts.", no_args_is_help=True)
train_app = typer.Typer(help="Train the models.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate the models.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")

app.command()(analyze.analyze)
app.command()(classify.classify)
app.command("batch")(batch.batch)
app.command("curate")(curate.curate)
app.command("curate-cls")(curate.curate_cls)
app.command("curate-export")(curate.curate_export)
app.command("install-plugin")(curate.install_plugin_cmd)

convert_app.command("bccd")(convert.convert_bccd)
convert_app.command("txl-pbc")(convert.convert_txl)
convert_app.command("roboflow")(convert.convert_roboflow)
convert_app.command("merge")(convert.convert_merge)
convert_app.command("fix")(convert.convert_fix)
convert_app.command("pbc")(convert.convert_pbc)
convert_app.command("deepapl")(convert.convert_deepapl)
convert_app.command("folder")(convert.convert_folder)
convert_app.command("chula")(rbc.convert_chula)

train_app.command("detector")(train.train_detector)
train_app.command("classifier")(train.train_classifier)
train_app.command("rbc-morphology")(rbc.train_rbc_morphology)

evaluate_app.command("classifier")(evaluate.evaluate_classifier)
evaluate_app.command("detector")(evaluate.evaluate_detector)
evaluate_app.command("rbc-morphology")(rbc.evaluate_rbc_morphology)


def main() -> None:
    """Run the app; a usage error (bad option value, unknown option, missing argument) is one line on
    stderr with exit status 2, like every other error a user can fix, instead of click's framed box."""
    import click

    try:
        rv = app(standalone_mode=False)
    except click.exceptions.UsageError as e:
        msg = " ".join(e.format_message().split())
        if msg:  # empty: no arguments at all, the help is already shown
            _err(msg + (f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""))
        sys.exit(2)
    except click.exceptions.Abort:
        _err("interrupted")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        _err(" ".join(e.format_message().split()))
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
