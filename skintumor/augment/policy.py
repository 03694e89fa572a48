"""Augmentation policies: a list of sub-policies, each a few (op, probability, magnitude) steps.

Applying a policy (Fast AutoAugment semantics): for every image one sub-policy is drawn uniformly,
then each of its steps is applied with its own probability, at its fixed magnitude.

File format (JSON)::

    {"schema": 1,
     "ops_per_subpolicy": 2,
     "subpolicies": [[{"op": "rotate", "p": 0.4, "magnitude": 0.7},
                      {"op": "speckle", "p": 0.9, "magnitude": 0.2}], ...],
     "search": {...provenance: fold, seed, trials, scores...}}

``op`` is a name from :data:`skintumor.augment.ops.OPS`; ``p`` and ``magnitude`` lie in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import albumentations as A

from skintumor.augment.compose import Augmentation
from skintumor.augment.ops import OPS, build_op, check_unit
from skintumor.errors import PolicyError

SCHEMA = 1


@dataclass(frozen=True)
class Step:
    """Apply ``op`` at ``magnitude`` with probability ``p``."""

    op: str
    p: float
    magnitude: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} (known: {', '.join(OPS)})")
        check_unit("p", self.p)
        check_unit("magnitude", self.magnitude)

    def as_dict(self) -> dict:
        return {"op": self.op, "p": float(self.p), "magnitude": float(self.magnitude)}


@dataclass
class Policy:
    """Sub-policies of ``ops_per_subpolicy`` steps each, plus where the policy came from."""

    subpolicies: list[list[Step]]
    ops_per_subpolicy: int = 2
    search: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            isinstance(self.ops_per_subpolicy, bool)
            or not isinstance(self.ops_per_subpolicy, int)
            or self.ops_per_subpolicy < 1
        ):
            raise ValueError(f"ops_per_subpolicy must be a positive integer, got {self.ops_per_subpolicy!r}")
        if not self.subpolicies:
            raise ValueError("a policy needs at least one sub-policy")
        for i, sub in enumerate(self.subpolicies):
            if len(sub) != self.ops_per_subpolicy:
                raise ValueError(f"sub-policy {i} has {len(sub)} op(s), expected {self.ops_per_subpolicy}")
        if not isinstance(self.search, dict):
            raise ValueError("'search' must be an object")

    def __len__(self) -> int:
        return len(self.subpolicies)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "ops_per_subpolicy": self.ops_per_subpolicy,
            "subpolicies": [[s.as_dict() for s in sub] for sub in self.subpolicies],
            "search": self.search,
        }

    @classmethod
    def from_dict(cls, data) -> Policy:
        """Build and validate a policy from parsed JSON; raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("top level must be a JSON object")
        unknown = sorted(set(data) - {"schema", "ops_per_subpolicy", "subpolicies", "search"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r} is not supported (expected {SCHEMA})")
        subs = data.get("subpolicies")
        if not isinstance(subs, list) or not all(isinstance(sub, list) for sub in subs):
            raise ValueError("'subpolicies' must be a list of lists of steps")
        steps = []
        for i, sub in enumerate(subs):
            row = []
            for j, step in enumerate(sub):
                if not isinstance(step, dict) or set(step) != {"op", "p", "magnitude"}:
                    raise ValueError(f"sub-policy {i} step {j} must be an object with exactly op, p, magnitude")
                try:
                    row.append(Step(step["op"], step["p"], step["magnitude"]))
                except ValueError as err:
                    raise ValueError(f"sub-policy {i} step {j}: {err}") from None
            steps.append(row)
        return cls(steps, data.get("ops_per_subpolicy", 2), data.get("search", {}))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the policy as JSON; refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise PolicyError(f"{path}: already exists; not overwriting it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a policy file; any problem is a one-line :class:`PolicyError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"{path}: policy file not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PolicyError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise PolicyError(f"{path}: invalid policy: {err}") from None

    def transforms(self) -> list[A.BasicTransform]:
        """One albumentations transform: pick a sub-policy uniformly, apply its steps with their p."""
        return [
            A.OneOf(
                [A.Sequential([build_op(s.op, s.magnitude, s.p) for s in sub], p=1.0) for sub in self.subpolicies],
                p=1.0,
            )
        ]

    def augmentation(self, seed: int | None = None) -> Augmentation:
        """The policy as a callable ``t(image=uint8 HxW) -> {"image": uint8 HxW}``."""
        return Augmentation(self.transforms(), seed=seed, name=f"policy({len(self)} sub-policies)")
