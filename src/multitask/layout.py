"""Every artifact path of a pipeline folder, spelt once.

A pipeline folder is where ``dvc.yaml`` and ``params.yaml`` live: the repository root, or
``sample/``. Stages, tuning, promotion, the CI report and the scripts take a :class:`Layout`
and ask it for paths; none spells a path itself. :meth:`Layout.stage_files` lists each stage's
data dependencies and outputs, and a test keeps ``dvc.yaml`` (and ``sample/dvc.yaml``) equal to
it, so a path can change here only together with the pipeline file.

Paths are fixed rather than params: ``dvc.yaml`` declares them, so a param that moved one
would only break the pipeline (and could point a stage's output at its own inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageFiles:
    """What a stage reads (besides code and params) and writes, relative to its folder."""

    deps: tuple[str, ...]
    outs: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """The paths of one pipeline folder (``root``, relative paths by default)."""

    root: Path = Path(".")

    def _at(self, relative: str) -> Path:
        return self.root / relative

    # ----------------------------------------------------------------------------- inputs
    @property
    def params(self) -> Path:
        return self._at("params.yaml")

    @property
    def dvc_yaml(self) -> Path:
        """The pipeline's stages, read by ``check`` for the dependencies of a manifest read in
        place."""
        return self._at("dvc.yaml")

    @property
    def sources(self) -> Path:
        """Each raw source's mirrors and file digests (not params: never varied)."""
        return self._at("data/sources.yaml")

    @property
    def params_check(self) -> Path:
        """The check stage's output: its content is the same for every valid params file, so
        a valid change reruns only the stages that read it, and a bad one stops here."""
        return self._at("reports/params_check.txt")

    # ------------------------------------------------------------------------------- data
    @property
    def raw_dir(self) -> Path:
        return self._at("data/raw")

    def source_dir(self, source: str) -> Path:
        """Where the verified files of one raw source are kept."""
        return self.raw_dir / source

    @property
    def processed_dir(self) -> Path:
        return self._at("data/processed")

    @property
    def validation_dir(self) -> Path:
        return self._at("reports/validation")

    @property
    def validation_summary(self) -> Path:
        return self.validation_dir / "summary.json"

    @property
    def data_docs(self) -> Path:
        return self.validation_dir / "data_docs"

    # ----------------------------------------------------------------------------- models
    @property
    def model(self) -> Path:
        return self._at("models/model.pt")

    @property
    def baselines_dir(self) -> Path:
        return self._at("models/baselines")

    def baseline_model(self, task: str) -> Path:
        return self.baselines_dir / f"{task}.pt"

    @property
    def checkpoints_dir(self) -> Path:
        """Per-epoch checkpoints of an interrupted training (git- and DVC-ignored)."""
        return self._at("models/checkpoints")

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints_dir / f"{name}.pt"

    @property
    def pretrain_dir(self) -> Path:
        """The pretrain stage's output: the self-supervised encoder, or nothing at all when
        ``model.pretrained`` is not ``self_supervised`` (an empty folder reads the same to DVC
        every time, so the stages that depend on it do not rerun)."""
        return self._at("models/pretrain")

    @property
    def pretrained_encoder(self) -> Path:
        """The network trained on the rotation task alone (``model.pretrained:
        self_supervised`` starts the shared encoder from it)."""
        return self.pretrain_dir / "encoder.pt"

    # ---------------------------------------------------------------------------- reports
    @property
    def pretrain_json(self) -> Path:
        """What the pretrain stage did: trained or not, the encoder's sha256, its MLflow run
        and registered version, its rotation accuracy on the validation split."""
        return self._at("reports/pretrain.json")

    @property
    def baselines_json(self) -> Path:
        return self._at("reports/baselines.json")

    @property
    def baselines_info(self) -> Path:
        """How the baselines were made (backbone, epochs, data hash, time): not metrics, so
        not in ``baselines.json``, whose every number ``dvc exp show`` lists as one. A cached
        output (not in git), so that DVC's run cache can restore the stage."""
        return self._at("reports/baselines_info.json")

    @property
    def train_json(self) -> Path:
        return self._at("reports/train.json")

    @property
    def history_csv(self) -> Path:
        return self._at("reports/plots/history.csv")

    @property
    def curves_png(self) -> Path:
        return self._at("reports/plots/curves.png")

    @property
    def metrics_json(self) -> Path:
        return self._at("reports/metrics.json")

    @property
    def confusion_dir(self) -> Path:
        return self._at("reports/confusion")

    def confusion_csv(self, task: str) -> Path:
        return self.confusion_dir / f"{task}.csv"

    def confusion_png(self, task: str) -> Path:
        return self.confusion_dir / f"{task}.png"

    # ----------------------------------------------------------------------------- tuning
    @property
    def tuning_dir(self) -> Path:
        return self._at("reports/tuning")

    @property
    def tuned_weights(self) -> Path:
        return self.tuning_dir / "weights.json"

    @property
    def tuning_summary(self) -> Path:
        return self.tuning_dir / "summary.json"

    @property
    def pareto_csv(self) -> Path:
        return self.tuning_dir / "pareto.csv"

    @property
    def pareto_front_csv(self) -> Path:
        """The rows of ``pareto.csv`` on the front: the DVC scatter plot's second series."""
        return self.tuning_dir / "pareto_front.csv"

    @property
    def pareto_png(self) -> Path:
        return self.tuning_dir / "pareto.png"

    @property
    def study_journal(self) -> Path:
        """The Optuna journal when ``tune.storage`` names no database."""
        return self.tuning_dir / "study.journal"

    # ------------------------------------------------------- outside the pipeline (scripts, CI)
    @property
    def method_comparison(self) -> Path:
        """The one-seed table of methods and architectures measured before ``multitask
        compare`` (by a script since removed); the README renders it until a comparison over
        seeds replaces it."""
        return self._at("reports/method_comparison.json")

    @property
    def comparisons_dir(self) -> Path:
        """``multitask compare``'s outputs, one folder per comparison name."""
        return self._at("reports/comparisons")

    def comparison_dir(self, name: str) -> Path:
        return self.comparisons_dir / name

    def comparison_json(self, name: str) -> Path:
        """Every row's per-seed values, means, intervals, experiments and MLflow runs."""
        return self.comparison_dir(name) / "comparison.json"

    def comparison_md(self, name: str) -> Path:
        """The ranked table (also rendered into the README)."""
        return self.comparison_dir(name) / "comparison.md"

    def comparison_png(self, name: str) -> Path:
        """Per-task test accuracy of each row with error bars (two tasks: the Pareto view)."""
        return self.comparison_dir(name) / "comparison.png"

    @property
    def pretraining_study_dir(self) -> Path:
        """``scripts/pretraining_study.py``'s rows (``study.json``), table and plot."""
        return self._at("reports/pretraining")

    @property
    def pretraining_study_json(self) -> Path:
        return self.pretraining_study_dir / "study.json"

    @property
    def pretraining_study_md(self) -> Path:
        return self.pretraining_study_dir / "study.md"

    @property
    def pretraining_study_png(self) -> Path:
        return self.pretraining_study_dir / "study.png"

    @property
    def benchmarks_json(self) -> Path:
        """``make bench``'s rows."""
        return self._at("reports/benchmarks.json")

    @property
    def ci_report(self) -> Path:
        """``multitask ci-report``'s default output (its PNG lies beside it), where
        ci/pr_report.sh writes it too: a folder git ignores."""
        return self._at("reports/ci/ci_report.md")

    # ------------------------------------------------------------------------- the stages
    def stage_files(self) -> dict[str, StageFiles]:
        """Each ``dvc.yaml`` stage's data deps and outs (metrics included), as dvc.yaml
        spells them (relative to the pipeline folder)."""
        here = Layout()

        def spelt(*paths: Path) -> tuple[str, ...]:
            return tuple(path.as_posix() for path in paths)

        checked = spelt(here.params_check)  # every stage after check depends on it
        return {
            "check": StageFiles(deps=spelt(here.sources), outs=checked),
            "download": StageFiles(deps=(*checked, *spelt(here.sources)),
                                   outs=spelt(here.raw_dir)),
            "validate": StageFiles(deps=(*checked, *spelt(here.raw_dir)),
                                   outs=spelt(here.validation_summary, here.data_docs)),
            "preprocess": StageFiles(deps=(*checked, *spelt(here.raw_dir,
                                                            here.validation_summary)),
                                     outs=spelt(here.processed_dir)),
            "pretrain": StageFiles(deps=(*checked, *spelt(here.processed_dir)),
                                   outs=spelt(here.pretrain_dir, here.pretrain_json)),
            "baselines": StageFiles(deps=(*checked, *spelt(here.processed_dir,
                                                           here.pretrain_dir)),
                                    outs=spelt(here.baselines_dir, here.baselines_json,
                                               here.baselines_info)),
            "tune": StageFiles(deps=(*checked, *spelt(here.processed_dir, here.pretrain_dir)),
                               outs=spelt(here.tuned_weights, here.tuning_summary,
                                          here.pareto_csv, here.pareto_front_csv,
                                          here.pareto_png, here.study_journal)),
            "train": StageFiles(deps=(*checked, *spelt(here.processed_dir, here.pretrain_dir,
                                                       here.tuned_weights,
                                                       here.baselines_info)),
                                outs=spelt(here.model, here.train_json, here.history_csv,
                                           here.curves_png)),
            "evaluate": StageFiles(deps=(*checked, *spelt(here.model, here.processed_dir,
                                                          here.baselines_json, here.train_json)),
                                   outs=spelt(here.confusion_dir, here.metrics_json)),
        }
