"""The paper's experiments as runnable recipes (issue 7): MQAR grid, RoPE-in-SSD ablation,
expert-speed figure, and the report that turns their result files into docs/experiments.md.

    python -m wmzoo.experiments mqar --grid smoke
    python -m wmzoo.experiments rope-ssd --config smoke
    python -m wmzoo.experiments report
"""

from .cli import add_experiment_commands

__all__ = ["add_experiment_commands"]
