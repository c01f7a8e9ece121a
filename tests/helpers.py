"""Test helpers shared by several test modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar



@dataclass(frozen=True)
class WithoutStatistics:
    """A task without its statistics methods: the loop must sample rows and refit the
    selected training set every iteration, as (A)'s code does."""

    batched: ClassVar[bool] = True
    inner: object

    @property
    def name(self):
        return self.inner.name

    def real_data(self, n_real, rngs):
        return self.inner.real_data(n_real, rngs)

    def fit(self, train, context=None):
        return self.inner.fit(train, context)

    def sample(self, model, n, rngs, context=None):
        return self.inner.sample(model, n, rngs, context)

    def sample_real(self, n, rngs, context=None):
        return self.inner.sample_real(n, rngs, context)

    def evaluate(self, model, test):
        return self.inner.evaluate(model, test)

    def row_nbytes(self):
        return self.inner.row_nbytes()

