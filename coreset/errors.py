"""The errors a user can act on, under one base.

A job ends with one line (``error: ...``) and exit code 2 for a :class:`UserError` (also when
Ray raised it in a task, actor, Train worker or Tune trial) and nothing else: any other
exception is a bug, and its traceback is kept. So raise one of these only where the message
tells the user what to change (a setting, the data, the root), never for a broken invariant.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what and how."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class DataError(UserError):
    """The dataset is missing, empty, unreadable or inconsistent with the study."""


class StorageError(UserError):
    """The study root cannot be read or written."""


class CheckpointError(UserError):
    """A checkpoint is unreadable or belongs to another model or dataset."""


class SchemaError(UserError):
    """A table does not match its contract (missing columns or another schema version)."""


class StageError(UserError):
    """A stage cannot run on what the study root holds (an earlier stage missing, settings
    that contradict its recorded work) or could not finish (trials failed after retries)."""


class LeaseError(UserError):
    """Another driver holds the study root's lease (one driver writes a root at a time)."""
