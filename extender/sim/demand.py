"""A service's demand over a day, as the scenario YAML gives it (`demand:` on a pod group).

```yaml
demand: {pattern: diurnal, swing: 4, peakHour: 14, noise: 0.05}   # peakRps: default replicas x targetRps
```
Diurnal: a cosine over 24 hours between peakRps (at peakHour) and peakRps / swing (twelve hours
later); `noise` is the relative standard deviation of independent per-minute noise (seeded), so the
right-sizer sees a noisy signal as it would from Prometheus.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DemandCurve(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: Literal["diurnal"] = "diurnal"
    peakRps: float | None = Field(default=None, gt=0, description="req/s of the whole service at its peak; "
                                  "default replicas x targetRps (what the static sizing is for)")
    swing: float = Field(default=4.0, ge=1.0, description="peak / trough")
    peakHour: float = Field(default=14.0, ge=0.0, lt=24.0)
    noise: float = Field(default=0.0, ge=0.0, le=0.5, description="relative sd of per-minute noise")


def rate(curve: DemandCurve, peak: float, hour: float) -> float:
    """The curve's req/s at `hour` (without noise)."""
    trough = peak / curve.swing
    return trough + (peak - trough) * (1 + math.cos(2 * math.pi * (hour - curve.peakHour) / 24)) / 2


def per_minute(curve: DemandCurve, peak: float, minutes: int, seed: int) -> list[float]:
    """Demand at each minute of the replay, noise included (the same for every strategy compared)."""
    rng = random.Random(seed)
    return [max(0.0, rate(curve, peak, m / 60) * (1 + rng.gauss(0, curve.noise))) for m in range(minutes)]
