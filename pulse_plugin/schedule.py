"""Windows (sigma or step) and the schedule upstream's sampler will visit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import mlx.core as mx

from . import checks


@dataclass(frozen=True)
class PlannedStep:
    """One denoising step as the hooks will report it."""

    step_idx: int
    timestep: float
    sigma: float


def planned_schedule(
    pipe, num_steps: int, strength: Optional[float] = None
) -> List[PlannedStep]:
    """The (step_idx, timestep, sigma) upstream's loop visits; strength for img2img."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
    sampler = pipe.sampler
    start = None
    if strength is not None:
        if not 0 < strength <= 1:
            raise ValueError(f"strength: expected 0 < strength <= 1, got {strength!r}")
        start = sampler.max_time * strength
        num_steps = int(num_steps * strength)
        if num_steps < 1:
            return []
    steps = sampler.timesteps(num_steps, start_time=start, dtype=pipe.dtype)
    out = []
    for i, (t, _) in enumerate(steps):
        t = t.astype(mx.float32)
        out.append(PlannedStep(i, t.item(), sampler.sigmas(t).item()))
    return out


@dataclass(frozen=True)
class Window:
    """When a technique acts: sigma_end <= sigma <= sigma_start and step_start <= step < step_end.

    Unset bounds are open. Outside a denoising loop (no step info) only a
    window without bounds is active.
    """

    sigma_start: Optional[float] = None
    sigma_end: Optional[float] = None
    step_start: Optional[int] = None
    step_end: Optional[int] = None

    def __post_init__(self):
        for name in ("sigma_start", "sigma_end"):
            checks.optional(checks.number, name, getattr(self, name), 0.0)
        for name in ("step_start", "step_end"):
            checks.optional(checks.integer, name, getattr(self, name), 0)
        if (
            self.sigma_start is not None
            and self.sigma_end is not None
            and self.sigma_end > self.sigma_start
        ):
            raise ValueError(
                f"sigma_start ({self.sigma_start}) must be >= sigma_end ({self.sigma_end}):"
                " windows run from high sigma (noisy) to low"
            )
        if (
            self.step_start is not None
            and self.step_end is not None
            and self.step_end <= self.step_start
        ):
            raise ValueError(
                f"step_end ({self.step_end}) must be > step_start ({self.step_start})"
            )

    @property
    def unbounded(self) -> bool:
        return (self.sigma_start, self.sigma_end, self.step_start, self.step_end) == (
            None,
        ) * 4

    def contains(self, step_idx: Optional[int], sigma: Optional[float]) -> bool:
        """Whether a step (its index within the run and its sigma) is inside the window."""
        if self.unbounded:
            return True
        if step_idx is None or sigma is None:
            return False
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        if self.sigma_end is not None and sigma < self.sigma_end:
            return False
        if self.step_start is not None and step_idx < self.step_start:
            return False
        if self.step_end is not None and step_idx >= self.step_end:
            return False
        return True

    def matches(self, steps: Iterable) -> bool:
        """Whether any step (objects with step_idx and sigma) is inside the window."""
        return any(self.contains(s.step_idx, s.sigma) for s in steps)

    def describe(self) -> str:
        parts = []
        if self.sigma_start is not None or self.sigma_end is not None:
            parts.append(f"sigma {self.sigma_start} -> {self.sigma_end}")
        if self.step_start is not None or self.step_end is not None:
            parts.append(f"steps [{self.step_start}, {self.step_end})")
        return ", ".join(parts) or "always"


def miss_message(name: str, window: Window, steps: Sequence) -> str:
    """The warning text for a window that matches none of the steps."""
    sigmas = ", ".join(f"{s.sigma:.4g}" for s in steps)
    return (
        f"{name}: window ({window.describe()}) matches no step of the schedule; "
        f"it visits sigmas [{sigmas}]"
    )
