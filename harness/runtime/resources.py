"""What a shard cost and ran on: its own peak memory (not the reused actor's lifetime peak) and the machine
(accelerator, CPU model, torch threads) that its timing row names."""

from __future__ import annotations

import platform
import resource
import sys

import torch

from harness.runtime.allocator import release_freed_memory


class ShardPeakMemory:
    """Peak memory of one shard, not of the actor's lifetime: actors are reused across shards and methods, so
    a lifetime maximum (`ru_maxrss`) only grows and would charge every later shard with the hungriest
    earlier one.

    - `cuda_max_allocated`: torch's peak allocated CUDA memory, reset before the shard.
    - `shard_peak_rss` (Linux, CPU): writing 5 to /proc/self/clear_refs resets the kernel's resident
      high-water mark (VmHWM) to the current RSS; VmHWM is read back after the shard. It counts what the
      process already holds (models, real data) as well as what the shard allocates; the freed memory that the
      allocator keeps for reuse (harness/runtime/allocator.py) is handed back first.
    - `process_max_rss`: where that reset is not possible, the process's lifetime peak, an upper bound.
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "process_max_rss"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        release_freed_memory()  # what earlier shards freed and the allocator keeps is not this shard's
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:  # not Linux, or a kernel/sandbox that forbids it
            self.kind = "process_max_rss"
            return
        self.kind = "shard_peak_rss" if _vm_hwm() is not None else "process_max_rss"

    def peak(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = _vm_hwm() if self.kind == "shard_peak_rss" else None
        if hwm is not None:
            return hwm
        self.kind = "process_max_rss"
        # ru_maxrss is in KiB on Linux but in bytes on macOS.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel writes it in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | torch.device) -> dict:
    """What a shard ran on: the accelerator (or "cpu"), the host CPU model and torch's intra-op threads."""
    d = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu",
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
    }
