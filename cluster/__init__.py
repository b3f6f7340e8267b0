"""Where jobs run: the `cluster` config group (configs/cluster/*.yaml) shared by training and the data pipeline.

A package of its own, below both `launcher` and `data_pipeline`, because both read the same Slurm settings and
the import rule forbids data_pipeline -> launcher; it imports neither of them (nor torch), so either side and
the sbatch helper scripts can load it in a fraction of a second.
"""
