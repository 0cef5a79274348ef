"""A training run's ``summary.csv`` (timm's per-epoch log): reading it, picking an epoch, drawing its curves."""
import csv
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

__all__ = ['SUMMARY_FILE', 'CURVES_FILE', 'read_summary', 'metric_row', 'plot_training_curves']

_logger = logging.getLogger(__name__)

SUMMARY_FILE = 'summary.csv'
CURVES_FILE = 'training_curves.png'


def read_summary(path: Optional[str]) -> List[Dict[str, float]]:
    """Rows of timm's ``summary.csv`` as {column: float}; [] when missing or unreadable.

    Args:
        path: the file (None or a missing file give []).

    Returns:
        One dict per row that has an ``epoch``; columns that are not numbers are left out.
    """
    if not path or not os.path.isfile(path):
        return []
    rows = []
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: a spreadsheet's byte-order mark
            for row in csv.DictReader(f):
                parsed = {}
                for key, value in row.items():
                    try:
                        parsed[key] = float(value)
                    except (TypeError, ValueError):
                        pass
                if 'epoch' in parsed:
                    rows.append(parsed)
    except (OSError, csv.Error) as e:
        _logger.warning(f'Could not read {path}: {e}')
        return []
    return rows


def metric_row(rows: Sequence[Dict[str, float]], epoch: Optional[int] = None, pick_best: bool = False,
               eval_metric: str = 'top1') -> Optional[Dict[str, float]]:
    """The row of the published weights: the one of ``epoch``, else the best (``pick_best``), else the last.

    Args:
        rows: ``read_summary`` rows.
        epoch: the epoch stored in the published checkpoint, if known.
        pick_best: without ``epoch``, take the best row by ``eval_<eval_metric>`` (a ``model_best`` file).
        eval_metric: timm's ``--eval-metric`` (``loss`` is minimized, others maximized).

    Returns:
        The row, or None without rows.
    """
    if not rows:
        return None
    if epoch is not None:
        for row in rows:
            if int(row['epoch']) == int(epoch):
                return row
    if pick_best:
        key = f'eval_{eval_metric}'
        scored = [r for r in rows if key in r]
        if scored:
            return (min if eval_metric == 'loss' else max)(scored, key=lambda r: r[key])
    return rows[-1]


def plot_training_curves(rows: Sequence[Dict[str, float]], path: str, title: Optional[str] = None) -> bool:
    """Draw the curves of ``summary.csv`` rows (loss, accuracy, stimulative KL, learning rate) as a PNG.

    Uses matplotlib's Agg canvas directly, so the global backend is never changed.

    Args:
        rows: ``read_summary`` rows.
        path: the PNG to write.
        title: figure title.

    Returns:
        Whether an image was written (False without rows or plottable columns).
    """
    panels = [
        ('Loss', [('train_loss', 'train'), ('eval_loss', 'validation')]),
        ('Validation accuracy (%)', [('eval_top1', 'top-1'), ('eval_top5', 'top-5')]),
        ('Stimulative KL (mean per subnetwork)', [('train_stim_kl', 'KL')]),
        ('Learning rate', [('lr', 'lr')]),
    ]
    panels = [(name, [(k, label) for k, label in series if any(k in r for r in rows)]) for name, series in panels]
    panels = [(name, series) for name, series in panels if series]
    if not rows or not panels:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.0 * len(panels), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, label in series:
            points = [(r['epoch'], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker='o', markersize=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format='png')
    return True
