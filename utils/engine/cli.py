"""Command line shared by the three homework scripts: one parser, one error policy.

Every user-facing failure (missing data, bad arguments, a file that cannot be written, a results
folder another run is writing to, no CUDA) ends in one line on stderr and exit code 2; Ctrl-C /
SIGTERM ends with code 130 after the finished results and the checkpoint of the run in progress are
on disk.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from utils.engine.data import MAX_SEED, DataError, DatasetSplits
from utils.engine.data_files import DATA_DIR_ENV, load_dataset, resolve_data_dir
from utils.engine.errors import OutputError, UsageError
from utils.engine.executors import EXECUTORS
from utils.engine.files import open_log_file
from utils.engine.lock import acquire_results_lock, release_results_locks
from utils.engine.runtime import RuntimeUnavailable, threads_from_env

PROFILES = ("quick", "standard", "full")
CACHE_DIR_ENV = "HOMEWORK_CACHE_DIR"
DEFAULT_CACHE_DIR = "data/cache"
log = logging.getLogger(__name__)


def cache_dir_from(cli_value: str | None) -> Path:
    """``--cache-dir``, else ``$HOMEWORK_CACHE_DIR``, else ./data/cache; it may be absent (it is created
    when first written) but must not be an existing file."""
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    origin = "--cache-dir" if cli_value else f"${CACHE_DIR_ENV}" if env else "the default cache folder"
    path = Path(cli_value or env or DEFAULT_CACHE_DIR).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{origin} {path} is a file, not a folder; point it at a folder (or remove the file)")
    return path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def batch_size(text: str) -> int:
    value = positive_int(text)
    if value < 2:  # batch normalisation in training mode needs two values per channel
        raise argparse.ArgumentTypeError("expected at least 2 (batch normalisation needs 2 images per batch)")
    return value


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED} (2**31 - 1), got {text!r}")
    return value


class _StoreUnique(argparse.Action):
    """``nargs="+"`` without repeats: ``--only a a`` runs ``a`` once."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(dict.fromkeys(values)))


def build_parser(description: str, experiments: Sequence[str], default_plots: str) -> argparse.ArgumentParser:
    """The arguments every script takes; ``experiments`` are the names ``--only`` accepts."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help=f"folder with the data sets, which must exist (default: ${DATA_DIR_ENV}, else ./data); "
                        f"data sets absent from it are downloaded into it")
    # Other profiles write next to, never over, the committed standard results and figures.
    p.add_argument("--results-dir", default=None,
                   help="where result JSON/CSV/MD files go (default: results, or results/<profile> for quick/full)")
    p.add_argument("--plots-dir", default=None,
                   help=f"where figures (PNG) go (default: {default_plots}, or plots/<profile>/... for quick/full; "
                        f"with a --results-dir of your own: <results-dir>/{default_plots})")
    p.set_defaults(default_plots=default_plots)
    p.add_argument("--cache-dir", default=None,
                   help=f"cache for decoded image folders (default: ${CACHE_DIR_ENV}, else ./data/cache)")
    p.add_argument("--profile", choices=PROFILES, default="standard",
                   help="quick: every experiment end to end in ~2 min on tiny subsets; standard: the committed "
                        "results; full: longer training")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the profile's epochs")
    p.add_argument("--batch-size", type=batch_size, default=None, help="override the profile's batch size (>= 2)")
    p.add_argument("--lr", type=positive_float, default=None, help="override the profile's peak learning rate")
    p.add_argument("--seed", type=seed_value, default=0,
                   help=f"seed for data subsets and order, initialisation and augmentation (0 .. {MAX_SEED})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto = bf16 autocast where the hardware has bf16 instructions (GPU, AVX512_BF16, AMX), "
                        "else fp32; bf16 also runs oneDNN's slower emulation on other AVX-512 CPUs")
    p.add_argument("--train-subset", type=positive_int, default=None, help="stratified training subset size")
    p.add_argument("--test-subset", type=positive_int, default=None, help="stratified test subset size")
    p.add_argument("--val-size", type=positive_int, default=None,
                   help="validation images held out of the training set (default: the profile's)")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=list(experiments), default=None, action=_StoreUnique,
                   help=f"run only these experiments: {', '.join(experiments)}")
    p.add_argument("--force", action="store_true", help="retrain models whose finished results exist")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: train the runs one after the other in this process (resumable from checkpoints); "
                        "ray: as Ray tasks, in parallel, each with $HOMEWORK_THREADS CPUs (and one GPU with "
                        "--device cuda); needs pip install .[ray]")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: the cluster to use, as `ray start --head` prints it (default: start "
                        "a local Ray instance)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@dataclass(frozen=True)
class OutputDirs:
    results: Path
    plots: Path
    cache: Path
    data: Path


def profile_output_dir(standard: str | Path, profile: str) -> Path:
    """Default output folder of ``profile``: ``standard`` itself for the standard profile, else the
    profile's name inserted after its first part (``plots/x`` -> ``plots/quick/x``)."""
    path = Path(standard)
    return path if profile == "standard" else Path(path.parts[0], profile, *path.parts[1:])


def prepare_output_dirs(args: argparse.Namespace) -> OutputDirs:
    """The first step of every script, before any work: check the environment variables and the
    data and cache folders, then create and check the output folders, and take the results
    folder's lock (:mod:`utils.engine.lock`; released by :func:`run_cli`). Bad input raises
    :class:`UsageError` / :class:`DataError` (one line, exit code 2 under :func:`run_cli`)."""
    threads_from_env()
    results = Path(args.results_dir or profile_output_dir("results", args.profile))
    dirs = OutputDirs(results, Path(args.plots_dir) if args.plots_dir else default_plots_dir(results, args),
                      cache_dir_from(args.cache_dir), resolve_data_dir(args.data_dir))
    check_writable("results", dirs.results)
    acquire_results_lock(dirs.results)        # before anything else is written
    check_writable("plots", dirs.plots)
    return dirs


def default_plots_dir(results: Path, args: argparse.Namespace) -> Path:
    """Figures go with their results: the profile's plots folder beside the profile's results
    folder, else ``<results>/plots/...``, so a run with its own --results-dir never overwrites the
    figures of another run."""
    if results.resolve() == profile_output_dir("results", args.profile).resolve():
        return profile_output_dir(args.default_plots, args.profile)
    return results / args.default_plots


def check_writable(label: str, path: Path) -> None:
    """Create ``path`` (and parents) and make sure a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(path, exc, f"the {label} folder") from None


def setup_logging(log_file: Path | None, verbose: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_file is not None:
        fh = open_log_file(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: finished work stays on disk
    raise KeyboardInterrupt


INTERRUPTED = ("interrupted: finished results are saved; the run in progress resumes from its last checkpoint "
               "next time")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
            interrupted_message: str = INTERRUPTED) -> int:
    """Run a script's ``main`` with the package's error policy; returns the exit code.

    UsageError (OutputError included: any failed write) / DataError / RuntimeUnavailable ->
    ``error: <message>`` on stderr, 2; Ctrl-C or SIGTERM -> ``interrupted_message``, 130. The signal
    handlers are restored and the results-folder locks released afterwards.
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return main(argv)
    except (DataError, UsageError, RuntimeUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ignore_interrupts()   # a second Ctrl-C must not turn the report into a traceback
        print(interrupted_message, file=sys.stderr)
        return 130
    finally:
        release_results_locks()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_interrupts() -> None:
    """Ignore further Ctrl-C / SIGTERM (while the last words of an interrupted run are written)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


VAL_SEED = 0   # the same validation images for every model and every seed of a study


def load_data(args: argparse.Namespace, dirs: OutputDirs, name: str, train_subset: int | None = None,
              test_subset: int | None = None, val_size: int | None = None) -> DatasetSplits:
    """Load a data set the way every script does: ``--data-dir`` / env / ./data; hold the validation
    split out of the training set (``--val-size`` or the profile's); then the profile's (or
    ``--train-subset``/``--test-subset``) stratified subsets of what is left."""
    data = load_dataset(name, dirs.data, cache_dir=dirs.cache)
    n_val = args.val_size or val_size
    if args.val_size is not None and not args.val_size <= len(data.train) // 2:
        raise UsageError(f"--val-size {n_val} leaves too few of the {len(data.train)} training images of "
                         f"{data.display_name} in {dirs.data}; use at most {len(data.train) // 2}")
    if n_val is not None and n_val > len(data.train) // 2:
        # the profile's size on a small copy of the data (a test set-up): a fifth of it instead
        n_val = max(data.num_classes, len(data.train) // 5)
        log.warning("%s has only %d training images: holding out %d for validation", data.display_name,
                    len(data.train), n_val)
    if n_val:
        data = data.with_validation(n_val, seed=VAL_SEED)
    # The sizes are known only now; the profile's own subsets may exceed a small copy (kept whole).
    _check_subset_size("--train-subset", args.train_subset, data, len(data.train), "training", dirs.data)
    _check_subset_size("--test-subset", args.test_subset, data, len(data.test), "test", dirs.data)
    data = data.subsample(args.train_subset or train_subset, args.test_subset or test_subset, seed=args.seed)
    log.info("%s: %s, %d train / %d validation / %d test samples", name, data.source, len(data.train),
             len(data.val) if data.val is not None else 0, len(data.test))
    return data


def _check_subset_size(option: str, size: int | None, data: DatasetSplits, available: int, split: str,
                       where: Path) -> None:
    if size is None:
        return
    if size < data.num_classes:
        raise UsageError(f"{option} {size} is smaller than the {data.num_classes} classes of {data.display_name}: "
                         f"a class-balanced subset needs at least one image per class; use {data.num_classes} or more")
    if size > available:
        raise UsageError(f"{option} {size} is larger than the {available} {split} images of {data.display_name} "
                         f"in {where}; use at most {available}, or leave it out to use them all")


def apply_cli_overrides(cfg, args: argparse.Namespace):
    """The profile's ExperimentConfig with ``--epochs/--batch-size/--lr/--seed``.

    ``--device/--precision`` are not config fields: they go to ``resolve_runtime`` (the Runtime is
    the one place that says where and in which precision a run ran).
    """
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
               if v is not None}
    return cfg.replace(**changes, seed=args.seed)
