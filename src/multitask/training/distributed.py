"""Data-parallel training over ``torch.distributed``: launch, shards and the collective steps.

``multitask train`` and ``multitask baselines`` with ``train.processes: N > 1`` start themselves
again under torchrun (``torchrun --standalone --nproc-per-node N -m multitask <stage> ...``,
run by :func:`torchrun`, which spares the user its traceback), so ``dvc repro`` needs no other
command. Started by torchrun directly (several hosts: ``--nnodes``, ``--rdzv-endpoint``), they
join the group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``...). Gloo on the CPU, NCCL on CUDA (one device per process: ``cuda:LOCAL_RANK``).

One step on N processes is the one-process step on the same global batch, for every weighting
method, not only the loss-based ones:

* Every process draws the same shuffled order (same seed) and takes its share of each global
  batch of ``train.batch_size`` images: consecutive rows, sizes differing by at most one
  (:func:`shard`), so together they cover every image once. ``train.batch_size`` is the global
  batch whatever N is. A final batch with fewer images than processes is skipped.
* Each process's task losses are its share ``n_r / n`` of the global mean, scaled by N;
  :meth:`ProcessGroup.global_losses` hands the method tensors whose *values* are the global
  losses (an all-reduce) and whose *gradients* are this process's. Methods that weigh by the
  loss values (uncertainty, DWA, FAMO, DB-MTL, RLW's draws from the same seed) thus decide the
  same on every process.
* Gradient methods get per-task gradients through the :class:`~multitask.weighting.gradients.
  Collective` this class implements: parameter gradients averaged, representation gradients
  (and the representation, for GradDrop) gathered in the global batch's order. The combined
  update is identical on every process; each writes its share.
* After the method, every gradient is averaged over the processes (one all-reduce of one flat
  buffer): shares become the global gradient, identical values stay as they are. Every process
  then applies the same update, so the parameters never drift apart.

Batch-norm statistics are each process's own within an epoch (as in PyTorch's DDP without
SyncBatchNorm); rank 0's buffers are broadcast at each epoch's end, before validation.

Rank 0 alone writes the checkpoint, and on a restart alone reads it and sends its state to the
others (:meth:`ProcessGroup.share`): on several hosts only node 0's checkout holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from multitask.device import threads_per_process
from multitask.processes import die_with_parent, terminate_with_parent

log = logging.getLogger(__name__)

WORLD_ENV = "WORLD_SIZE"  # set by torchrun in every process it starts
THREADS_ENV = "OMP_NUM_THREADS"


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return WORLD_ENV in os.environ


def should_launch(processes: int) -> bool:
    """``train.processes > 1`` and not yet under a launcher: start the processes first."""
    return processes > 1 and not launched()


def torchrun_arguments(argv: Sequence[str], processes: int) -> list[str]:
    """torchrun's arguments on this host starting ``processes`` copies of ``multitask <argv>``."""
    return ["--standalone", f"--nproc-per-node={processes}", "-m", "multitask", *argv]


# torchrun (torch.distributed.run) through :func:`torchrun`: the same launcher, less its traceback
_TORCHRUN = ("import sys; from multitask.training.distributed import torchrun; "
             "sys.exit(torchrun(sys.argv[1:]))")


def launch_command(argv: Sequence[str], processes: int) -> list[str]:
    """The command starting ``processes`` copies of ``multitask <argv>`` under torchrun."""
    return [sys.executable, "-c", _TORCHRUN, *torchrun_arguments(argv, processes)]


def torchrun(arguments: Sequence[str]) -> int:
    """``torchrun <arguments>``; return its exit code.

    Stopped by a signal (Ctrl-C, which :func:`relaunch` forwards), it exits 128 + the signal's
    number; when a rank fails, with that rank's exit code. Either way without torchrun's own
    traceback and table: each rank has already said what happened (``multitask: interrupted``,
    ``multitask train: error: ...``).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(list(arguments))
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"multitask: process {rank} failed ({_ending(failure.exitcode)}); torchrun "
              "stopped the others", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _ending(exitcode: int) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"killed by signal {-exitcode}"


def relaunch(argv: Sequence[str], processes: int) -> int:
    """Run ``multitask <argv>`` as ``processes`` ranks under torchrun; return its exit code.

    Each process gets an equal part of ``$MULTITASK_THREADS`` or of this process's CPUs as
    intra-op threads (:func:`multitask.device.limit_threads` in each rank; ``OMP_NUM_THREADS``
    plays no part): ranks that each took every core would spin against each other.

    Ctrl-C here is forwarded to torchrun once (it runs in its own session, so a terminal's
    Ctrl-C reaches it only this way), which stops the ranks; this process waits for them to
    mark the run failed and returns 130. A second Ctrl-C kills torchrun (its ranks follow).
    torchrun killed by a signal it cannot catch gives 128 + that signal, as a shell would.
    """
    threads = threads_per_process(processes)  # what each rank's limit_threads will choose
    env = dict(os.environ)
    # unset, torchrun would set it to 1 with a warning; each rank sets torch's threads anyway
    env.setdefault(THREADS_ENV, str(threads))
    log.info("starting %d processes: torchrun %s (%d torch thread%s each)", processes,
             " ".join(torchrun_arguments(argv, processes)), threads, "" if threads == 1 else "s")
    # torchrun stops its ranks on SIGTERM; it gets one if this process is killed
    process = subprocess.Popen(launch_command(argv, processes), env=env,
                               preexec_fn=terminate_with_parent, start_new_session=True)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        for stop in (signal.SIGINT, signal.SIGKILL):
            process.send_signal(stop)
            with contextlib.suppress(KeyboardInterrupt):
                process.wait()
                break
        process.wait()
        return 130
    if code < 0:  # torchrun itself killed (SIGKILL): its ranks saw their parent go and stopped
        print(f"multitask: torchrun was {_ending(code)}; its processes stopped", file=sys.stderr)
        return 128 - code  # the shell's status for a process killed by that signal
    return code


def shard(count: int, rank: int, world: int) -> slice:
    """Process ``rank``'s consecutive rows of a batch of ``count`` (sizes differ by <= 1)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the default process group, and the collective steps."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, writes checkpoints and reports."""
        return self.rank == 0

    def rows(self, count: int) -> slice:
        return shard(count, self.rank, self.world)

    def mean(self, tensor: Tensor) -> Tensor:
        total = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world

    def gather(self, tensor: Tensor, dim: int) -> tuple[Tensor, slice]:
        sizes = torch.tensor([tensor.shape[dim]], device=tensor.device)
        every = [torch.empty_like(sizes) for _ in range(self.world)]
        dist.all_gather(every, sizes)
        counts = [int(s) for s in every]
        widest = max(counts)
        padded = tensor.detach()
        if padded.shape[dim] < widest:
            shape = list(padded.shape)
            shape[dim] = widest - padded.shape[dim]
            padded = torch.cat([padded, padded.new_zeros(shape)], dim=dim)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        joined = torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, counts, strict=True)],
                           dim=dim)
        start = sum(counts[:self.rank])
        return joined, slice(start, start + counts[self.rank])

    def global_losses(self, losses: Tensor, rows: int, count: int) -> Tensor:
        """Per-task losses valued as the global batch's mean, differentiated as this
        process's scaled share (``losses``: the mean over this process's ``rows`` of ``count``).
        """
        share = losses * (self.world * rows / count)
        total = self.mean(share)
        return share + (total - share.detach())

    def average_gradients(self, parameters: Iterable[Tensor]) -> None:
        """Replace every ``.grad`` by its average over the processes (one all-reduce)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object, e.g. a checkpoint's state) on every rank.

        Tensors travel as they are; on NCCL, a CUDA tensor would arrive on the device it was
        saved from, so send CPU tensors and move them after.
        """
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values."""
        for tensor in tensors:
            # collectives take contiguous tensors; channels-last weights are not
            buffer = tensor.detach().contiguous()
            dist.broadcast(buffer, src=0)
            if buffer.data_ptr() != tensor.data_ptr():
                tensor.detach().copy_(buffer)


def active() -> ProcessGroup | None:
    """The process group this process trains in, or ``None`` when it trains alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return ProcessGroup(dist.get_rank(), dist.get_world_size())


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[ProcessGroup | None]:
    """Join the group torchrun described (gloo on the CPU, NCCL on CUDA); leave it after.

    Yields ``None`` outside a launcher, or when this process already trains in a group.
    """
    world = int(os.environ.get(WORLD_ENV, "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield active()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # torchrun's agent gone (SIGKILLed with its launcher): the rank must not train on alone
    die_with_parent(os.getppid(), f"rank {os.environ.get('RANK', '?')}")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    group = ProcessGroup(dist.get_rank(), dist.get_world_size())
    log.info("process %d of %d (%s)", group.rank, group.world, backend)
    try:
        yield group
    finally:
        dist.destroy_process_group()
