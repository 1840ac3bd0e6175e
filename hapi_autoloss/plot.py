"""``hapi-autoloss plot LOGDIR -o curves.png``: σ, weights, k and raw losses in one PNG.

Reads what ``TensorBoardExport`` or ``VisualDLExport`` wrote, with TensorBoard's
``EventAccumulator`` or VisualDL's ``LogReader``, and draws four panels against the
global train step: σ per task, the task weights, the raw (unweighted) loss per
task and the top-k ratio k. Needs ``pip install "hapi-autoloss[plot]"``.

Usage::

    hapi-autoloss plot runs/quickstart -o curves.png
    python -m hapi_autoloss.plot runs/quickstart -o curves.png

From Python::

    from hapi_autoloss.plot import plot_curves
    plot_curves("runs/quickstart", "curves.png")
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._plot_logs import (
    INSTALL_HINT,
    PANELS,
    READERS,
    LogDirNotFoundError,
    MissingDependencyError,
    NoKnownTagsError,
    NoLogsError,
    PlotError,
    Series,
    read_scalars,
)

__all__ = [
    "DPI",
    "FIGSIZE",
    "INSTALL_HINT",
    "PANELS",
    "READERS",
    "LogDirNotFoundError",
    "MissingDependencyError",
    "NoKnownTagsError",
    "NoLogsError",
    "PlotError",
    "Series",
    "main",
    "plot_curves",
    "read_scalars",
]

FIGSIZE = (11.0, 7.5)  # inches; the PNG is FIGSIZE × DPI pixels
DPI = 120


def plot_curves(
    log_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    reader: str = "auto",
    title: str | None = None,
) -> str:
    """Draw σ, the weights, the raw losses and k against the step into a PNG.

    Args:
        log_dir: a folder written by ``TensorBoardExport`` or ``VisualDLExport``.
        output: the PNG to write; default ``<log_dir>/curves.png``.
        reader: ``"auto"``, ``"tensorboard"`` or ``"visualdl"``.
        title: the figure's title; default the folder name.

    Returns the PNG's path. Raises a :class:`PlotError` subclass when the folder
    is missing, holds no logs, or none of the exporters' tags.

    Example::

        plot_curves("runs/quickstart", "runs/quickstart/curves.png")
    """
    series = read_scalars(log_dir, reader)
    log_dir = os.fspath(log_dir)
    panels = [(name, {t: series[t] for t in sorted(series) if t.startswith(prefix)}) for name, prefix in PANELS]
    if not any(lines for _, lines in panels):
        found = ", ".join(sorted(series)[:8]) or "no scalar tags at all"
        raise NoKnownTagsError(
            f"The logs in {log_dir!r} hold none of the tags hapi-autoloss writes "
            f"(autoloss/sigma/<task>, autoloss/weight/<task>, autoloss/loss/<task>, "
            f"topk/ratio); found: {found}. Fix: log with TensorBoardExport or "
            "VisualDLExport and a loss built with AutoWeight or TopKLoss."
        )
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError(f"Plotting needs matplotlib ({err}). Fix: {INSTALL_HINT}.") from err

    output = os.fspath(output) if output is not None else os.path.join(log_dir, "curves.png")
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    fig.suptitle(title if title is not None else os.path.basename(os.path.normpath(log_dir)) or log_dir)
    for ax, (name, prefix), (_, lines) in zip(fig.subplots(2, 2).flat, PANELS, panels):
        _draw(ax, name, prefix, lines)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(output)}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, output)  # never leave a half-written PNG under the real name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return output


def _draw(ax: Any, name: str, prefix: str, lines: Series) -> None:
    ax.set_title(name)
    ax.set_xlabel("train step")
    ax.grid(True, alpha=0.3)
    if not lines:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    for tag, (steps, values) in lines.items():
        label = tag[len(prefix):].lstrip("/") or tag.rsplit("/", 1)[-1]  # the task name, or "ratio"
        ax.plot(steps, values, label=label, linewidth=1.2)
    every = [v for _, values in lines.values() for v in values]
    if name.startswith("raw loss") and every and min(every) > 0 and max(every) / min(every) > 50:
        ax.set_yscale("log")  # losses of different tasks span decades
    ax.legend(fontsize="small", loc="best")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hapi-autoloss", description="hapi-autoloss command line tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    plot = sub.add_parser(
        "plot",
        help="draw σ, the task weights, the raw losses and k from a log folder into a PNG",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    plot.add_argument("logdir", metavar="LOGDIR", help="folder written by TensorBoardExport or VisualDLExport")
    plot.add_argument("-o", "--output", metavar="FILE", help="PNG to write (default: LOGDIR/curves.png)")
    plot.add_argument("--reader", choices=READERS, default="auto", help="which logs to read (default: auto)")
    plot.add_argument("--title", help="figure title (default: the folder name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``hapi-autoloss plot LOGDIR -o FILE``; the word ``plot`` may be left out.

    Returns 0, or 2 with the error on stderr.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("plot", "-h", "--help"):
        args.insert(0, "plot")  # python -m hapi_autoloss.plot LOGDIR -o FILE
    try:
        parsed = _parser().parse_args(args)
    except SystemExit as exit_:  # argparse printed usage; hand back its code (2, or 0 for --help)
        return int(exit_.code or 0)
    try:
        path = plot_curves(parsed.logdir, parsed.output, reader=parsed.reader, title=parsed.title)
    except PlotError as err:
        print(f"hapi-autoloss plot: error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
