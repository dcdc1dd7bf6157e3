"""The Slurm backend: jobs submitted with sbatch on a login node, over SSH."""

from .scheduler import SlurmScheduler

__all__ = ["SlurmScheduler"]
