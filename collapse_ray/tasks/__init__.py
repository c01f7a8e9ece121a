"""Task settings, each one module behind the `Task` protocol, listed by registry key.

Adding a task: write `tasks/<key>.py` with a frozen dataclass implementing
`protocol.Task` (plus `validate(where)`, and any of the optional hooks declared in
protocol.py's `OPTIONAL_HOOKS`), and list it here. The contract tests in
tests/test_task_contract.py then cover it automatically.
"""

from .conformer_diffusion import ConformerDiffusionTask
from .diffusion import DiffusionTask
from .discrete import DiscreteTask
from .gaussian import GaussianTask
from .kde import KDETask
from .linear_regression import LinearRegressionTask
from .pretraining import PretrainingTask
from .protocol import AdditiveStatisticsTask, Metrics, RealData, Rows, Task
from .sft import SFTTask
from .vae import VAETask

TASKS: dict[str, type] = {
    "gaussian": GaussianTask,
    "linear_regression": LinearRegressionTask,
    "discrete": DiscreteTask,
    "kde": KDETask,
    "pretraining": PretrainingTask,
    "sft": SFTTask,
    "vae": VAETask,
    "diffusion": DiffusionTask,
    "conformer_diffusion": ConformerDiffusionTask,
}

__all__ = [
    "TASKS", "AdditiveStatisticsTask", "ConformerDiffusionTask", "DiffusionTask", "DiscreteTask", "GaussianTask",
    "KDETask", "LinearRegressionTask", "Metrics", "PretrainingTask", "RealData", "Rows", "SFTTask", "Task", "VAETask",
]
