"""Downstream evaluation equal to lm-evaluation-harness: tasks in its YAML format, its metrics, its results layout.

Torch-free core: requests (the Scorer contract), tasks (YAML + Jinja), metrics, runner, results.
"""
