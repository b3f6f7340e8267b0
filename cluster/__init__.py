"""Where jobs run, and who owns them: shared by training and the data pipeline. config.py and slurm.py are the
`cluster` config group (configs/cluster/*.yaml) and its Slurm rendering; ownership.py is the run/output directory
lock and the parent-death guard both sides put on the processes they start.

A package of its own, below both `launcher` and `data_pipeline`, because both read the same Slurm settings and
own their directories and workers the same way, and the import rule forbids data_pipeline -> launcher; it imports
neither of them (nor torch), so either side and the sbatch helper scripts can load it in a fraction of a second.
"""
