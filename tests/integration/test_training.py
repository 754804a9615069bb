"""The trainer on real (sample) data: learning, determinism, resuming after SIGKILL, bad params."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from multitask.config import ModelConfig, TrainConfig
from multitask.data.processed import tasks as tasks_from_meta
from multitask.models import build_model
from multitask.training.data import ProcessedData
from multitask.training.trainer import NonFiniteLossError, Trainer, task_losses
from multitask.weighting import build_weighting

ROOT = Path(__file__).resolve().parents[2]
TIME_KEYS = ("time/",)


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    """MultiFashion composites built from the shipped sample: 3,600 train, 400 val, 500 test."""
    return sample_composites(4000, 500)


def make_trainer(processed: Path, weighting: str = "equal", epochs: int = 2, **train: object
                 ) -> Trainer:
    data = ProcessedData(processed, torch.device("cpu"))
    tasks = tasks_from_meta(data.meta)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tasks, 1, data.image_size)
    config = TrainConfig(epochs=epochs, batch_size=128, diagnostics_every=0,
                         **train)  # type: ignore[arg-type]
    return Trainer(model, tasks, build_weighting(weighting, len(tasks), {}), data, config,
                   progress=False)


def without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if not k.startswith(TIME_KEYS)} for row in history]


@pytest.mark.parametrize("weighting", ["equal", "uncertainty"])
def test_a_few_steps_lower_every_task_loss(processed: Path, weighting: str) -> None:
    trainer = make_trainer(processed, weighting)
    x, y = next(trainer.data.batches("train", 256))

    def losses() -> torch.Tensor:
        with torch.no_grad():
            return task_losses(trainer.model, trainer.tasks, trainer.columns, x, y)[0]

    before = losses()
    from multitask.weighting import StepContext

    for step in range(15):
        values, features = task_losses(trainer.model, trainer.tasks, trainer.columns, x, y)
        trainer.optimizer.zero_grad()
        trainer.method.backward(StepContext(values, features, trainer.model.shared_parameters(),
                                            step, 0))
        trainer.optimizer.step()
    after = losses()
    assert torch.all(after < before), (before, after)


@pytest.mark.slow
def test_short_run_is_far_above_chance(processed: Path) -> None:
    history = make_trainer(processed, epochs=4).fit()
    assert history[-1]["val/accuracy/left"] > 0.5  # chance: 0.1
    assert history[-1]["val/accuracy/right"] > 0.5
    assert history[-1]["train/loss/left"] < history[0]["train/loss/left"]


def test_two_cpu_runs_are_identical(processed: Path) -> None:
    first = make_trainer(processed, epochs=1, data_fraction=0.5).fit()
    second = make_trainer(processed, epochs=1, data_fraction=0.5).fit()
    assert without_time(first) == without_time(second)


def test_rotation_task_trains_alongside(processed: Path) -> None:
    data = ProcessedData(processed, torch.device("cpu"))
    tasks = tasks_from_meta(data.meta, rotation=True)
    model = build_model(ModelConfig(), tasks, 1, data.image_size)
    trainer = Trainer(model, tasks, build_weighting("equal", 3), data,
                      TrainConfig(epochs=1, batch_size=128, diagnostics_every=0,
                                  data_fraction=0.25),
                      progress=False)
    record = trainer.fit()[-1]
    assert {"train/loss/rotation", "weight/rotation"} <= set(record)
    assert "val/accuracy/rotation" not in record  # auxiliary: not scored on the data set
    assert record["train/loss/rotation"] < 1.39  # below chance level ln(4)


def test_famo_updates_after_each_step_with_the_rotation_task(processed: Path) -> None:
    """FAMO's exact mode re-scores each batch after the step, rotated copies included."""
    data = ProcessedData(processed, torch.device("cpu"))
    tasks = tasks_from_meta(data.meta, rotation=True)
    method = build_weighting("famo", 3)
    trainer = Trainer(build_model(ModelConfig(), tasks, 1, data.image_size), tasks, method, data,
                      TrainConfig(epochs=1, batch_size=128, diagnostics_every=0,
                                  data_fraction=0.25), progress=False)
    record = trainer.fit()[-1]
    weights = [record[f"weight/{t.name}"] for t in tasks]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert len(set(weights)) == 3, "FAMO moved its weights away from uniform"


# ----------------------------------------------------------------- the stage, as DVC runs it
@pytest.fixture
def stage_dir(processed: Path, pipeline_folder: Callable[[Path, Path], object]
              ) -> Callable[..., Path]:
    """``stage_dir(root, **train) -> root``: a pipeline folder on the shared composites with a
    params.yaml (5 epochs, equal weighting, no MLflow, ``train`` overrides)."""
    return lambda root, **train: _stage_dir(root, processed, pipeline_folder, **train)


def _stage_dir(root: Path, processed: Path, pipeline_folder: Callable[[Path, Path], object],
               **train: object) -> Path:
    params = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    pipeline_folder(root, processed)
    params["train"].update({"epochs": 5, "diagnostics_every": 0, "weighting": "equal", **train})
    params["tracking"]["enabled"] = False
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def run_train(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "multitask", "train"], cwd=cwd,
                          capture_output=True, text=True)


def train_until_checkpoint(cwd: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``multitask train`` in ``cwd``; return it once its first checkpoint exists (or it
    ended), with the checkpoint's path."""
    checkpoint = cwd / "models" / "checkpoints" / "train.pt"
    proc = subprocess.Popen([sys.executable, "-m", "multitask", "train"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, checkpoint


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_result(stage_dir: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    straight = stage_dir(tmp_path / "straight")
    assert run_train(straight).returncode == 0

    killed = stage_dir(tmp_path / "killed")
    proc, checkpoint = train_until_checkpoint(killed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(checkpoint, weights_only=True)
    assert 1 <= state["epoch"] < 5, "the kill should land mid-training"
    assert not (killed / "reports" / "train.json").exists()

    resumed = run_train(killed)
    assert resumed.returncode == 0, resumed.stderr
    expected = f"resumed from models/checkpoints/train.pt after epoch {state['epoch']}"
    assert expected in resumed.stderr
    assert not checkpoint.exists(), "the checkpoint is removed once the model is written"
    a = json.loads((straight / "reports" / "train.json").read_text())
    b = json.loads((killed / "reports" / "train.json").read_text())
    assert a["final"] == b["final"] and a["epochs"] == b["epochs"] == 5
    weights_a = torch.load(straight / "models" / "model.pt", weights_only=True)["state_dict"]
    weights_b = torch.load(killed / "models" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_second_train_in_one_folder_is_refused_while_the_first_runs(
        stage_dir: Callable[..., Path], tmp_path: Path) -> None:
    """Two runs in one folder would resume from and overwrite each other's checkpoint: the
    second stops at once, naming the first, and the first finishes untouched."""
    cwd = stage_dir(tmp_path)
    first, checkpoint = train_until_checkpoint(cwd)
    first.send_signal(signal.SIGSTOP)  # mid-training, for as long as the second one takes
    try:
        assert first.poll() is None, "the first run should still be training"
        saved = checkpoint.read_bytes()
        second = run_train(cwd)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert (f"models/checkpoints/train.lock: another multitask train runs in this folder "
            f"(pid {first.pid} on ") in second.stderr
    assert checkpoint.read_bytes() == saved, "the refused run touched the checkpoint"
    assert first.wait(timeout=300) == 0
    assert json.loads((cwd / "reports" / "train.json").read_text())["epochs"] == 5
    assert not checkpoint.exists()


@pytest.mark.parametrize("stage", ["baselines", "pretrain"])
def test_the_other_training_stages_refuse_a_second_run_in_one_folder(
        stage_dir: Callable[..., Path], tmp_path: Path, stage: str) -> None:
    cwd = stage_dir(tmp_path)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["model"]["pretrained"] = "self_supervised"  # else pretrain has nothing to run
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\n"
         "from multitask.layout import Layout\n"
         "from multitask.training.checkpoints import sole_run\n"
         f"with sole_run(Layout(), {stage!r}):\n"
         "    print('held', flush=True)\n"
         "    sys.stdin.read()\n"],
        cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        refused = subprocess.run([sys.executable, "-m", "multitask", stage], cwd=cwd,
                                 capture_output=True, text=True)
    finally:
        holder.communicate("")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert (f"models/checkpoints/{stage}.lock: another multitask {stage} runs in this folder "
            f"(pid {holder.pid} on ") in refused.stderr
    assert not (cwd / "reports" / f"{stage}.json").exists()
    assert not (cwd / "reports" / "baselines_info.json").exists()


def test_a_loss_that_blows_up_stops_training(processed: Path) -> None:
    trainer = make_trainer(processed, epochs=2, optimizer={"name": "sgd", "lr": 1e10})
    with pytest.raises(NonFiniteLossError, match=r"epoch 1: the training loss of task\(s\) "):
        trainer.fit()
    assert trainer.history == [], "no epoch is recorded once the loss is not finite"


def test_a_diverging_run_ends_with_one_line_and_no_model(stage_dir: Callable[..., Path],
                                                         tmp_path: Path) -> None:
    cwd = stage_dir(tmp_path, optimizer={"name": "sgd", "lr": 1e10})
    result = run_train(cwd)
    assert result.returncode == 1
    assert "is not finite (NaN or inf)" in result.stderr and "Traceback" not in result.stderr
    assert "Lower the task weights" in result.stderr and "train.optimizer.lr" in result.stderr
    assert not (cwd / "models" / "model.pt").exists()
    assert not (cwd / "reports" / "train.json").exists()


@pytest.mark.parametrize(("stage", "advice", "not_advised"), [
    ("baselines", "lower train.optimizer.lr", "task weights"),
    ("pretrain", "pretrain.lr (not train.optimizer.lr): lower it", "task weights"),
])
def test_a_diverging_stage_names_the_learning_rate_it_trained_at(
        stage_dir: Callable[..., Path], tmp_path: Path, stage: str, advice: str,
        not_advised: str) -> None:
    """Baselines train each task alone at weight 1, the pretrain stage at its own pretrain.lr:
    neither points the user at task weights it never used."""
    cwd = stage_dir(tmp_path, optimizer={"name": "sgd", "lr": 1e10})
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    if stage == "pretrain":  # at a sane lr: only pretrain.lr can make it diverge
        params["train"]["optimizer"] = {"name": "sgd", "lr": 1e-3}
        params["model"]["pretrained"] = "self_supervised"
        params["pretrain"] = {"epochs": 1, "lr": 1e10}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "multitask", stage], cwd=cwd,
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "is not finite (NaN or inf)" in result.stderr and "Traceback" not in result.stderr
    assert advice in result.stderr and not_advised not in result.stderr


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"weighting": "static", "method_params": {"static": {"weights": [1.0, -0.5]}}},
         "train.method_params.static.weights: weights must be non-negative"),
        ({"weighting": "static", "method_params": {"static": {"weights": [1.0, 1.0, 1.0]}}},
         "train.method_params.static.weights: 3 weights for 2 tasks (left, right)"),
        ({"weighting": "pcgard"}, "train.weighting: unknown weighting method 'pcgard'"),
        ({"weighting": "static", "method_params": {"static": {"weights": [float("nan"), 1.0]}}},
         "train.method_params.static.weights.0: Input should be a finite number (got nan)"),
        ({"weighting": "static", "method_params": {"static": {"weights": [float("inf"), 1.0]}}},
         "train.method_params.static.weights.0: Input should be a finite number (got inf)"),
        ({"method_params": {"static": {"weigths": [1, 1]}}}, "train.method_params.static"),
    ],
)
def test_bad_params_fail_before_training(stage_dir: Callable[..., Path], tmp_path: Path,
                                         train: dict, message: str) -> None:
    cwd = stage_dir(tmp_path, **train)
    result = run_train(cwd)
    assert result.returncode == 1
    assert message in result.stderr
    assert not (cwd / "models").exists(), "nothing trained or checkpointed"


def test_only_a_provably_corrupt_checkpoint_is_discarded(processed: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "train.pt"
    first = make_trainer(processed, epochs=1, data_fraction=0.1)
    first.checkpoint_path = checkpoint
    first.fit()
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])  # truncated: provably corrupt
    resumed = make_trainer(processed, epochs=2, data_fraction=0.1)
    resumed.checkpoint_path = checkpoint
    assert resumed.try_resume() is False
    assert "corrupt checkpoint" in caplog.text

    checkpoint.write_bytes(whole)
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("an unrelated failure")

    monkeypatch.setattr(torch, "load", out_of_memory)
    with pytest.raises(MemoryError):
        resumed.try_resume()
    assert checkpoint.read_bytes() == whole, "the checkpoint is kept for the next try"


def test_a_checkpoint_with_damaged_tensor_bytes_is_discarded(processed: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """Bytes changed inside a tensor's record leave a loadable archive (torch.load checks no
    CRC): resuming from it would train on silently damaged weights."""
    import zipfile

    checkpoint = tmp_path / "train.pt"
    first = make_trainer(processed, epochs=1, data_fraction=0.1)
    first.checkpoint_path = checkpoint
    first.fit()
    with zipfile.ZipFile(checkpoint) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)  # a weight tensor
    whole = bytearray(checkpoint.read_bytes())
    start = record.header_offset + 30 + len(record.orig_filename) + len(record.extra)
    middle = start + record.file_size // 2
    whole[middle:middle + 64] = b"\xff" * 64
    checkpoint.write_bytes(bytes(whole))
    torch.load(checkpoint, weights_only=True)  # the damage passes torch.load unnoticed

    resumed = make_trainer(processed, epochs=2, data_fraction=0.1)
    resumed.checkpoint_path = checkpoint
    assert resumed.try_resume() is False
    assert "CRC-32" in caplog.text and "corrupt checkpoint" in caplog.text
