"""Test helpers shared by several test modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from collapse_ray.tasks import GaussianTask


@dataclass(frozen=True)
class RefitGaussian:
    """The Gaussian task without its statistics methods: the loop must sample rows and
    refit the selected training set every iteration, as (A)'s code does."""

    name: ClassVar[str] = "gaussian"
    batched: ClassVar[bool] = True
    inner: GaussianTask

    def real_data(self, n_real, rngs):
        return self.inner.real_data(n_real, rngs)

    def fit(self, train):
        return self.inner.fit(train)

    def sample(self, model, n, rngs):
        return self.inner.sample(model, n, rngs)

    def evaluate(self, model, test):
        return self.inner.evaluate(model, test)

    def row_nbytes(self):
        return self.inner.row_nbytes()
