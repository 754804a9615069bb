"""``train.ensemble``: the single-task baselines trained together, as one grouped LeNet.

The baselines stage trains one LeNet hard-sharing network per task. With ``batched`` (and with
``auto`` where it is measured faster) :func:`fit_members` trains all of them in one process
and one data pass, as one :class:`~multitask.models.ensemble.GroupedLeNet` (first convolution
shared by the input, second grouped, fully connected layers and heads batched), through the
same :class:`~multitask.training.trainer.Trainer` that :func:`~multitask.training.session.fit`
runs per task; at the end the members are split back into ordinary single-task networks,
which the stage saves exactly as before.

What stays the same as T sequential :func:`~multitask.training.session.fit` runs: each member
starts from :func:`~multitask.training.session.build_network` (the same weights); the batches,
their order and augmentation come from one generator seeded as each sequential run's own, so
every member sees the batches it would have seen; the schedule, optimiser (Adam's update is
elementwise, and the summed loss gives each member the gradient of its own loss), weight
decay, label smoothing, freezing and the encoder's learning-rate scale are the trainer's. Early
stopping is per member (:class:`MemberSelections`), and checkpoints and resumption are the
trainer's (one checkpoint for the ensemble). What differs: the floats (a grouped convolution
rounds otherwise than T small ones), the dropout masks (drawn once for all members), and no
gradient diagnostics are computed (``train.diagnostics_every``: they compare tasks, and a
baseline has one; they never changed the training).

``auto`` batches LeNet baselines on the CPU in one process when every task's head has the same
width and loss (multiclass tasks with as many classes, or all binary; the grouped heads are one
batched matrix product) and trains the others one after another, saying why in the log.
Measured by ``benchmarks/bench_ensemble.py`` on a 2-core
AVX-512 machine that other jobs kept busy (load 3-5): one training step of 2 baselines, steps
interleaved, took 0.41-0.89 of the sequential steps' wall time at torch's default 2 threads
(six runs, median 0.7; 4 baselines 0.43-0.80), and 0.90-1.08 of their CPU time at 1 thread (the
same work, fewer and larger kernels); the whole stage at 1 thread 0.80-0.92 (at 2 threads the
load swung whole runs five-fold either way). An idle machine's figures decide whether ``auto``
stays batched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from multitask import keys
from multitask.config import EarlyStoppingConfig, Params
from multitask.models.ensemble import GroupedLeNet
from multitask.models.hps import HardParameterSharing
from multitask.models.pretrained import EncoderWeights
from multitask.tasks import Task
from multitask.training import distributed, session
from multitask.training.data import ProcessedData
from multitask.training.selection import Selection
from multitask.training.trainer import Trainer

log = logging.getLogger(__name__)
_EVERY_MEMBER = (keys.EPOCH, keys.LR, keys.EPOCH_SECONDS, keys.TRAIN_IMAGES_PER_S)


def unbatchable(params: Params, tasks: Sequence[Task]) -> str | None:
    """Why the baselines of ``params`` cannot train as one grouped network; None if they can."""
    if params.model.backbone != "lenet":
        return f"model.backbone: {params.model.backbone} has no grouped formulation (lenet has)"
    if all(task.kind == "multiclass" for task in tasks) and len(
            {task.num_classes for task in tasks}) > 1:
        return "the tasks have different numbers of classes"
    if len({(task.outputs, task.loss) for task in tasks}) > 1:
        return ("the tasks' heads differ in width or loss ("
                + ", ".join(f"{t.name}: {t.kind}, {t.outputs} output(s), {t.loss}"
                            for t in tasks) + ")")
    if distributed.active() is not None:
        return "train.processes > 1: each process trains its share of one network at a time"
    return None


def trains_together(params: Params, tasks: Sequence[Task], device: torch.device) -> bool:
    """Whether the baselines of ``tasks`` train together (``train.ensemble``); logs which way
    and, for ``auto``, why. ``batched`` where it cannot be done is an error naming why."""
    mode = params.train.ensemble
    if mode == "sequential":
        return False
    reason = unbatchable(params, tasks)
    if mode == "batched":
        if reason is not None:
            raise ValueError(f"{params.source}: train.ensemble: batched: {reason}; set it to "
                             "auto or sequential")
        return True
    if reason is None and device.type != "cpu":
        reason = f"on {device.type} the batched step is not measured faster"
    if reason is None and len(tasks) < 2:
        reason = "one task"
    if reason is not None:
        log.info("train.ensemble: auto: the baselines train one after another (%s)", reason)
        return False
    log.info("train.ensemble: auto: the %d baselines train together as one grouped LeNet",
             len(tasks))
    return True


class MemberSelections:
    """``train.early_stopping`` for each member on its own, in the trainer's place for a
    :class:`GroupedLeNet`.

    Each member is scored by its own :class:`Selection` on its own primary validation metric (as its
    sequential run is), keeps its own best weights and stops after its own patience. A member
    that has stopped is still computed with the others but never scored again (members share
    no parameter, so the others train the same); the run stops when every member has.
    Its state travels in the trainer's checkpoint.
    """

    def __init__(self, config: EarlyStoppingConfig,
                 networks: Sequence[HardParameterSharing]) -> None:
        self.networks = list(networks)
        self.members = [Selection(config, network.tasks) for network in networks]
        self.epochs_run = [0] * len(networks)  # epochs each member trained (until it stopped)

    @property
    def stopped(self) -> bool:
        return all(member.stopped for member in self.members)

    def observe(self, epoch: int, record: Mapping[str, float], model: GroupedLeNet
                ) -> dict[str, float]:
        """Score epoch ``epoch`` for every member still training (each reads only its own
        task's keys of ``record``). Returns nothing for the ensemble's record: each member's
        score goes into its own history (:func:`member_history`)."""
        model.split_into(self.networks)
        for index, (member, network) in enumerate(zip(self.members, self.networks,
                                                      strict=True)):
            if not member.stopped:
                member.observe(epoch, record, network)
                self.epochs_run[index] = epoch
        return {}

    def restore(self, model: GroupedLeNet) -> None:
        """Leave each member's best epoch's weights in its own network."""
        model.split_into(self.networks)
        for member, network in zip(self.members, self.networks, strict=True):
            member.restore(network)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [member.state_dict() for member in self.members],
                "epochs_run": list(self.epochs_run)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for member, member_state in zip(self.members, state["members"], strict=True):
            member.load_state_dict(member_state)
        self.epochs_run = [int(epochs) for epochs in state["epochs_run"]]


def member_history(history: Sequence[Mapping[str, float]], task: Task,
                   selection: Selection | None) -> list[dict[str, float]]:
    """One member's records from the ensemble's: the epochs it trained, its own task's keys
    (and with early stopping its score), as its sequential run records them."""
    own = []
    for record in history:
        kept = {key: value for key, value in record.items()
                if key in _EVERY_MEMBER or key == keys.weight(task.name)
                or (keys.parse_task_metric(key) or ("", ""))[1] == task.name}
        if selection is not None:
            kept[selection.key] = selection.score(record)
        own.append(kept)
    return own


def fit_members(params: Params, data: ProcessedData, tasks: Sequence[Task], *,
                checkpoint: Path | None = None, start: EncoderWeights | None = None,
                progress: bool = True) -> list[session.Fitted]:
    """One single-task network per task of ``tasks``, trained together (see the module
    docstring); each returned as :func:`~multitask.training.session.fit` returns it: the
    network (its kept epoch's weights), its history, its selection summary."""
    train = params.train
    networks = []
    for task in tasks:
        network = session.build_network(params.model, train.seed, [task], data, start)
        assert isinstance(network, HardParameterSharing)  # baseline_params: hard sharing
        networks.append(network.to(data.device, memory_format=torch.channels_last))
    names = [task.name for task in tasks]
    # Each member's own loss, unweighted: the gradient of the sum is each one's own gradient.
    method = session.weights_method(dict.fromkeys(names, 1.0), list(tasks), params.source)
    stopping = train.early_stopping
    ensemble = GroupedLeNet(networks)
    trainer = Trainer(
        ensemble, list(tasks), method, data,
        # early stopping: MemberSelections' per member, not one selection over the ensemble
        train.model_copy(update={"early_stopping": EarlyStoppingConfig(),
                                 "diagnostics_every": 0}),
        checkpoint_path=checkpoint, progress=progress,
        fingerprint=session.fingerprint("grouped ensemble", params.model.model_dump(),
                                        train.model_dump(), data.meta["sha256"], names,
                                        session.start_record(start)),
        freeze_encoder_epochs=params.model.freeze_encoder_epochs)
    selections = (None if stopping.patience is None else MemberSelections(stopping, networks))
    trainer.selection = selections  # duck-typed: Selection's interface, member by member
    trainer.try_resume()
    trainer.fit()  # with selections, ends by restoring each member's best epoch
    if selections is None:
        ensemble.split_into(networks)
        return [session.Fitted(network, member_history(trainer.history, task, None))
                for task, network in zip(tasks, networks, strict=True)]
    fitted = []
    for task, network, member, epochs in zip(tasks, networks, selections.members,
                                             selections.epochs_run, strict=True):
        history = member_history(trainer.history[:epochs], task, member)
        fitted.append(session.Fitted(network, history, member.summary(len(history))))
    return fitted
