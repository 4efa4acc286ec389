"""A method for tests/test_faults.py whose first attempt at one class kills its own process. It lives in its
own module, imported as `tests.kill_once`, because Ray workers import what the suite they unpickle refers to by
module name, and pytest imports test files under bare names (`test_faults`) that workers cannot find."""

import os
import signal
from dataclasses import dataclass

import torch

from methods import list_methods, register_method
from methods.base import Method


@dataclass
class KillOnceConfig:
    marker: str = ""  # created by the one shard that kills its actor, so that the retry goes through
    victim: str = ""  # the class whose first attempt kills its actor


class KillOnce(Method):
    """Random images, except that the first attempt at the victim class kills its own process, as a
    preempted node or the kernel's OOM killer would."""

    name = "test-kill-once"
    Config = KillOnceConfig
    needs = frozenset()

    def distill_class(self, task):
        if task.key == self.config.victim:
            try:
                os.close(os.open(self.config.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:  # killed once already
                pass
        return torch.rand(task.ipc, task.channels, task.image_size, task.image_size, generator=task.generator())


# A Ray worker imports this module when it unpickles a suite holding a KillOnceConfig: the method is registered
# there too.
if KillOnce.name not in list_methods():
    register_method(KillOnce)
