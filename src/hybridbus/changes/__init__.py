"""Code-change broadcast: `Watcher` publishes a directory's changes, `Follower` mirrors them.

Changes are events on `<topic>/files` (one topic: one order), in chunks of
at most 16 KB (`core.changes`); followers are subscribers with resume
tokens, present on that topic, announcing themselves on `<topic>/instances`,
asking for full copies on `<topic>/requests` and acking on `<topic>/acks`.
docs/changes.md tells the whole story. Imports the Python client and `core`
only, like the CLI's client commands.
"""

from hybridbus.changes.follower import FollowConfig, Follower
from hybridbus.changes.registry import Instance, change_status, instances
from hybridbus.changes.watcher import WatchConfig, Watcher

__all__ = [
    "FollowConfig",
    "Follower",
    "Instance",
    "WatchConfig",
    "Watcher",
    "change_status",
    "instances",
]
