"""The one error a bad task input raises, before any request reaches a model."""


class TaskInputError(ValueError):
    """A task's YAML or data cannot be evaluated; the message names the file, the field and the fix."""
