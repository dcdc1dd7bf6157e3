"""The Slurm backend: jobs submitted with sbatch on a login node, over SSH."""

from .backend import SlurmBackend
from .scheduler import SlurmScheduler

__all__ = ["SlurmBackend", "SlurmScheduler"]
