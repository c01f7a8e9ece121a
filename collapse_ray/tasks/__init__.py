"""Task settings, each one module behind the `Task` protocol, listed by registry key.

Adding a task: write `tasks/<key>.py` with a frozen dataclass implementing
`protocol.Task` (plus `validate(where)`, and any of the optional hooks declared in
protocol.py's `OPTIONAL_HOOKS`), and list it here. The contract tests in
tests/test_task_contract.py then cover it automatically.
"""

from collapse_ray.tasks.conformer_diffusion import ConformerDiffusionTask
from collapse_ray.tasks.diffusion import DiffusionTask
from collapse_ray.tasks.discrete import DiscreteTask
from collapse_ray.tasks.gaussian import GaussianTask
from collapse_ray.tasks.kde import KDETask
from collapse_ray.tasks.linear_regression import LinearRegressionTask
from collapse_ray.tasks.pretraining import PretrainingTask
from collapse_ray.tasks.protocol import AdditiveStatisticsTask, Metrics, RealData, Rows, Task
from collapse_ray.tasks.sft import SFTTask
from collapse_ray.tasks.vae import VAETask

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
