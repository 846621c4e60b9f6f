"""The promotion gate of the feedback loop: whether a trained candidate may replace the current version.

    gate = promotion_gate(candidate_scores, current_scores, settings)   # Gate(accepted, checks, failed)

Every metric is checked on its own, because an average hides a regression: on `tiny-default-v4` a run lost 9.4
points of texture accuracy while the mean of attributes and relations dropped 1.9, inside a tolerance of 2 (README,
"Benchmarks"), and the old mean-based gate served it.

On the base test split (old skills), each of these must stay within its tolerance of the current version:
- every attribute the current version was scored on (`attribute:<name>`), and every relation axis
  (`relation:<axis>`; the overall `relation` only when no axis was scored), in points of accuracy:
  PROMOTION_TOLERANCE;
- the caption CIDEr-D (`caption:CIDEr-D`, a 0-1000 scale): PROMOTION_CIDER_TOLERANCE.
A metric the current version has and the candidate lacks fails. On the held-out corrections the candidate must be at
least as good as the current version (`heldout_score`: mean attribute accuracy and caption exact match).

A refused candidate's manifest records `gate` (every check, and `failed`: the checks that refused it, each naming
its metric), and `regionscribe versions` / `regionscribe report` show the failed metrics.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

CIDER = "caption:CIDEr-D"
HELDOUT = "heldout"


@dataclass
class Check:
    metric: str  # "attribute:texture", "relation:overlap", "caption:CIDEr-D" or "heldout"
    split: str  # "base" or "heldout"
    candidate: float | None
    current: float | None
    tolerance: float  # how much lower the candidate may be (0 for the held-out corrections)
    passed: bool

    @property
    def drop(self) -> float | None:
        if self.candidate is None or self.current is None:
            return None
        return round(self.current - self.candidate, 2)

    def describe(self) -> str:
        if self.candidate is None:
            return f"{self.metric}: not scored on the candidate (current {self.current})"
        return (f"{self.metric} {self.candidate:g} vs current {self.current:g} ({self.split}): "
                f"{-self.drop:+.2f}, tolerance {self.tolerance:g}")


@dataclass
class Gate:
    accepted: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        """For the version's manifest."""
        return {"accepted": self.accepted,
                "failed": [c.metric for c in self.failed],
                "reasons": [c.describe() for c in self.failed],
                "checks": [{**asdict(c), "drop": c.drop} for c in self.checks]}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gated_metrics(current_base: dict) -> list[str]:
    """The base-split metrics the gate checks, from what the current version was scored on."""
    attributes = sorted(k for k in current_base if k.startswith("attribute:") and _number(current_base[k]) is not None)
    axes = sorted(k for k in current_base if k.startswith("relation:") and _number(current_base[k]) is not None)
    if not axes and _number(current_base.get("relation")) is not None:
        axes = ["relation"]
    cider = [CIDER] if _number(current_base.get(CIDER)) is not None else []
    return attributes + axes + cider


def promotion_gate(candidate: dict, current: dict, tolerance: float, cider_tolerance: float) -> Gate:
    """`candidate`, `current`: {"base": metrics on the base test split, "heldout_score": float or None} (what
    `retrain.evaluate_pair` gives for each). Accepted when every check passes."""
    checks = []
    cand_base, cur_base = candidate.get("base") or {}, current.get("base") or {}
    for metric in gated_metrics(cur_base):
        allowed = cider_tolerance if metric == CIDER else tolerance
        cur, cand = _number(cur_base[metric]), _number(cand_base.get(metric))
        passed = cand is not None and cur - cand <= allowed + 1e-9
        checks.append(Check(metric, "base", cand, cur, allowed, passed))
    cand_held, cur_held = _number(candidate.get("heldout_score")), _number(current.get("heldout_score"))
    if cand_held is not None and cur_held is not None:  # no held-out corrections (fewer than 5 images): no check
        checks.append(Check(HELDOUT, "heldout", cand_held, cur_held, 0.0, cand_held >= cur_held))
    return Gate(all(c.passed for c in checks), checks)
