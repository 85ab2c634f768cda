"""The CODA paper's headline claims, checked on a run: ``hcibench report RUN --compare paper``.

The paper's central result is an ordering of off-domain means, not any single cell: CODA beats
ODA, which beats Supervised; CODA at least doubles Supervised; and the dual models without
adaptation are no better than Supervised. Each claim is checked on the off-diagonal
(source ≠ target) cells that the run and the paper's table share, so that both sides average
the same cells, and is reported with the run's numbers beside the paper's. The claims are data,
``reference/claims.toml``, beside the paper's tables.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources

import pandas as pd


def _claim_specs() -> list[dict]:
    path = resources.files("hcibench.paper") / "reference" / "claims.toml"
    return tomllib.loads(path.read_text(encoding="utf-8"))["claim"]


def _test(spec: dict, methods: tuple[str, ...]):
    """The claim's test on per-method means."""
    kind = spec["kind"]
    if kind == "order":
        return lambda m: all(m[a] > m[b] for a, b in zip(methods, methods[1:]))
    if kind == "ratio":
        return lambda m: m[methods[0]] >= float(spec["at_least"]) * m[methods[1]]
    if kind == "not_above":
        return lambda m: all(m[d] <= m[methods[-1]] for d in methods[:-1])
    raise ValueError(f"unknown claim kind {kind!r}")


@dataclass(frozen=True)
class Claim:
    text: str
    holds: bool | None  # None: the run lacks a method the claim needs
    ours: dict[str, float]  # off-diagonal mean per method (fraction), over the shared cells
    paper: dict[str, float]
    missing: tuple[str, ...] = ()

    def verdict(self) -> str:
        if self.holds is None:
            return f"not checked: the run has no {', '.join(self.missing)}"
        return "holds" if self.holds else "does not hold"

    def numbers(self, side: str) -> str:
        from hcibench.report.tables import percent  # the report's rounding, so the figures agree with it

        values = self.ours if side == "ours" else self.paper
        return ", ".join(f"{method} {percent(value)}" for method, value in values.items())

    def to_json(self) -> dict:
        return {**asdict(self), "missing": list(self.missing), "verdict": self.verdict()}


def _shared_cells(ours: pd.DataFrame, paper: pd.DataFrame, methods: tuple[str, ...]) -> set:
    """Off-diagonal (source, target) pairs that both sides report for every one of ``methods``."""

    def cells(frame: pd.DataFrame, method: str) -> set:
        rows = frame[(frame["method"] == method) & (frame["source"] != frame["target"])]
        return set(zip(rows["source"], rows["target"]))

    shared = None
    for method in methods:
        both = cells(ours, method) & cells(paper, method)
        shared = both if shared is None else shared & both
    return shared or set()


def _means(frame: pd.DataFrame, methods: tuple[str, ...], shared: set) -> dict[str, float]:
    pairs = pd.Series(list(zip(frame["source"], frame["target"])), index=frame.index)
    inside = frame[pairs.isin(shared)]
    return {m: float(inside.loc[inside["method"] == m, "mean"].mean()) for m in methods}


def _claim(text, methods, ours, paper, test) -> Claim:
    missing = tuple(m for m in methods if m not in set(ours["method"]))
    if missing:
        return Claim(text, None, {}, {}, missing)
    shared = _shared_cells(ours, paper, methods)
    if not shared:
        return Claim(text, None, {}, {}, ("off-diagonal cell in the paper's table",))
    mine, theirs = _means(ours, methods, shared), _means(paper, methods, shared)
    return Claim(text, bool(test(mine)), mine, theirs)


def check(ours: pd.DataFrame, paper: pd.DataFrame) -> list[Claim]:
    """The claims on ``ours`` and ``paper``: frames of (method, source, target, mean), means as
    fractions, one metric."""
    ours = ours.astype({"method": str, "source": str, "target": str})
    present = set(ours["method"])
    claims = []
    for spec in _claim_specs():
        methods = tuple(spec["methods"])
        optional = tuple(spec.get("any_of", ()))
        if optional and any(m in present for m in optional):
            methods = tuple(m for m in methods if m not in optional or m in present)
        claims.append(_claim(spec["text"], methods, ours, paper, _test(spec, methods)))
    return claims


def lines(claims: list[Claim]) -> list[str]:
    """One line per claim: verdict, then the run's and the paper's means."""
    out = []
    for claim in claims:
        line = f"{claim.text}: {claim.verdict()}"
        if claim.holds is not None:
            line += f" (ours: {claim.numbers('ours')}; paper: {claim.numbers('paper')})"
        out.append(line)
    return out
