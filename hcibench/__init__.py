"""hcibench: a plugin-based benchmark for domain adaptation in High Content Imaging."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hcibench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

try:  # torch takes seconds to load: a Ctrl-C then ends with one line and status 130
    from hcibench.data import META_COLUMNS, UNLABELLED, Dataset, Domain, TensorImages  # noqa: E402
    from hcibench.errors import UsageError  # noqa: E402
    from hcibench.evaluator import Evaluator  # noqa: E402
    from hcibench.hookspecs import hookimpl  # noqa: E402
    from hcibench.method import Method, Prediction  # noqa: E402
    from hcibench.run.stages import Context, StageSpec  # noqa: E402
except KeyboardInterrupt:
    import sys

    sys.stderr.write("interrupted while loading hcibench\n")
    raise SystemExit(130) from None

__all__ = [
    "META_COLUMNS",
    "UNLABELLED",
    "Context",
    "Dataset",
    "Domain",
    "Evaluator",
    "Method",
    "Prediction",
    "StageSpec",
    "TensorImages",
    "UsageError",
    "hookimpl",
]
