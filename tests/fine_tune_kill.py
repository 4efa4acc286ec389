"""A fine-tuning method for tests/test_fine_tune.py whose first run kills its own process mid-way, as a preempted
node or the kernel's OOM killer would. Its own module (imported as `tests.fine_tune_kill`) so that Ray Train's
workers find it by name when they unpickle the suite."""

import os
import signal
from dataclasses import dataclass

from methods import list_methods, register_method
from methods.minimax import Minimax, MinimaxConfig, MinimaxObjective


@dataclass(frozen=True)
class KillingMinimaxConfig(MinimaxConfig):
    marker: str = ""  # created by the run that kills itself, so that the next goes through
    kill_at: int = 3  # the step whose loss kills the process


class KillingObjective(MinimaxObjective):
    def __init__(self, config):
        super().__init__(config)
        self.steps = 0

    def loss(self, backbone, x0, labels, classes, generator):
        self.steps += 1
        if self.steps == self.config.kill_at and self.config.marker:
            try:
                os.close(os.open(self.config.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:  # killed once already
                pass
        return super().loss(backbone, x0, labels, classes, generator)


class KillingMinimax(Minimax):
    name = "test-killing-minimax"
    Config = KillingMinimaxConfig

    @classmethod
    def fine_tune_objective(cls, config):
        return KillingObjective(config)


if KillingMinimax.name not in list_methods():
    register_method(KillingMinimax)


def family_suite(tiny_suite, marker: str = ""):
    """The tiny suite with the fine-tuning family at a budget of a few steps, and this module's killing Minimax."""
    import dataclasses

    from methods.ims3 import IMS3Config

    budget = {
        "max_steps": 4,
        "fine_tune_batch_size": 4,
        "checkpoint_every": 2,
        "ema_decay": 0.5,
        "cfg_scale": 2.0,
        "steps": 3,
        "sampler": "ddim",
    }
    s3 = {"inversion_steps": 4, "centroid_real": 8}
    methods = {
        "test-killing-minimax": KillingMinimaxConfig(**budget, marker=marker),
        "ims3": IMS3Config(**budget, groups=2, **s3),
        "ims3-im-only": IMS3Config(**budget, groups=1, **s3),
        "ims3-s3-only": IMS3Config(**budget, fine_tune=False, groups=2, **s3),
    }
    return dataclasses.replace(tiny_suite, methods=methods, ipcs=[2])


def fine_tune_until_killed(out: str, marker: str) -> None:
    """Run in a process of its own: prepare the tiny suite and fine-tune the killing Minimax, which dies mid-way."""
    from harness.config.loader import load_suite
    from harness.models.data import load_real_data
    from harness.stages.fine_tune import fine_tune_backbones
    from harness.stages.prepare import prepare
    from tests.factories import TINY_SUITE

    suite = family_suite(load_suite(str(TINY_SUITE)), marker)
    real = load_real_data(suite.data)
    fine_tune_backbones(suite, real, prepare(suite, real, out, check=False), out, ["test-killing-minimax"])
