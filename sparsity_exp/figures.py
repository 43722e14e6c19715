"""Every figure of docs/paper.md §2 and §4.7 from a collected table (and the runs' saved arrays).

``sparsity-exp figures PATH... [--out DIR] [--only NAME,...]``: collects the run folders under the
paths (or reads a table written by ``sparsity-exp collect``), then makes every figure whose data
exist and says which it skipped and why. The scripts in ``scripts/`` are thin entry points that
make one kind each.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import pandas as pd

from .collect import collect, load_table, report, write_collection
from .errors import UserError
from .plots.common import Skip
from .plots.flatness import augmented_flatness, flatness_vs_sparsity
from .plots.gradients import gradient_density, gradient_density_histograms
from .plots.rmt import mp_anisotropy, mp_bound
from .plots.sparsity import flat_region, sparsity_vs_step
from .plots.spectrum import spectrum_histograms, spectrum_ratio

# name -> figure function(table, out_dir) -> written paths; raises Skip(reason) when its data are absent
FIGURES = {
    "sparsity": sparsity_vs_step,
    "flat_region": flat_region,
    "spectrum_histograms": spectrum_histograms,
    "spectrum_ratio": spectrum_ratio,
    "augmented_flatness": augmented_flatness,
    "gradient_density": gradient_density,
    "gradient_density_histograms": gradient_density_histograms,
    "mp_anisotropy": mp_anisotropy,
    "mp_bound": mp_bound,
    "flatness_vs_sparsity": flatness_vs_sparsity,
}
# figure kinds of docs/paper.md §2 / §4.7, one script each under scripts/
KINDS = {
    "sparsity": ["sparsity"],
    "flat_region": ["flat_region"],
    "spectrum": ["spectrum_histograms", "spectrum_ratio"],
    "augmented_flatness": ["augmented_flatness"],
    "gradient_density": ["gradient_density", "gradient_density_histograms"],
    "rmt": ["mp_anisotropy", "mp_bound"],
    "flatness_vs_sparsity": ["flatness_vs_sparsity"],
}


def make_figures(table: pd.DataFrame, out_dir: Path, names=None, hue=None):
    """Draw the named figures (all by default); return ({name: paths}, {name: why skipped}).
    ``hue``: the config key(s) that group runs into curves (default: every key that varies but the seed)."""
    made, skipped = {}, {}
    for name in names or FIGURES:
        fn = FIGURES[name]
        kwargs = {"hue": hue} if hue and "hue" in inspect.signature(fn).parameters else {}
        try:
            made[name] = fn(table, Path(out_dir), **kwargs)
        except Skip as why:
            skipped[name] = str(why)
    return made, skipped


def load_or_collect(paths, out_dir: Path) -> pd.DataFrame:
    """A collected table given as one .csv/.parquet file, or run folders collected now (the table is
    written into ``out_dir`` beside the figures, so the figures can be traced to their numbers)."""
    if len(paths) == 1 and Path(paths[0]).is_file():
        return load_table(Path(paths[0]))
    col = collect(paths)
    report(col)
    write_collection(col, Path(out_dir) / "collected.csv")
    return col.table


def _parse(argv, prog: str, names: list[str]):
    parser = argparse.ArgumentParser(
        prog=prog, description="Make figures from run folders (collected now) or from a table written by "
                               "`sparsity-exp collect`; figures whose data are absent are skipped with a reason.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folders, folders holding them, or one collected table")
    parser.add_argument("--out", default="figures", help="folder for the PNG and PDF files (default: figures)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(names)}")
    parser.add_argument("--hue", default=None, help="comma-separated config keys that group runs into curves "
                                                    "(default: every varying key except the seed)")
    args = parser.parse_args(argv)
    chosen = names
    if args.only:
        chosen = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise UserError(f"--only {','.join(unknown)}: unknown figure; choose from {', '.join(names)}")
    return args, chosen


def main(argv: list[str], prog: str = "sparsity-exp figures", names=None) -> int:
    args, chosen = _parse(argv, prog, list(names or FIGURES))
    out = Path(args.out)
    table = load_or_collect(args.paths, out)
    hue = [k.strip() for k in args.hue.split(",") if k.strip()] if args.hue else None
    unknown = [k for k in hue or [] if k not in table.columns]
    if unknown:  # every figure that groups would be skipped for it: said once, before any is drawn
        from .plots.common import config_columns

        raise UserError(f"--hue {','.join(unknown)}: not a config key that varies across these runs (a "
                        f"group needs one); choose from: {', '.join(config_columns(table)) or 'none (nothing varies)'}")
    made, skipped = make_figures(table, out, chosen, hue=hue)
    for name, paths in made.items():
        print(f"made    {name}: {', '.join(str(p) for p in paths if p.suffix == '.png')} (+ .pdf)")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if not made:
        print(f"no figure made: none of their data exist in {', '.join(args.paths)}", file=sys.stderr)
    return 0


def script_main(kind: str, argv=None) -> int:
    """Entry point of ``scripts/fig_<kind>.py``: the figures of one kind."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv, prog=f"scripts/fig_{kind}.py", names=KINDS[kind])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
