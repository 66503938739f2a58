"""A training run's directory: every file name, the checks before writing, the typed config.

``pretrain`` and ``distill`` write one directory each (``runs/<run.name>/`` unless ``--out``
says otherwise)::

    config.yaml                          the resolved config (typed: ``RunDir.config()``)
    checkpoint.pt                        resumable training state, written atomically
    metrics.jsonl                        one JSON line per logged step (and online k-NN)
    summary.json                         steps, final metrics, device, bf16, process group
    student.safetensors + student.json   distill's result (pretrain: teacher.*)
    projector.safetensors                distill's projector into the teacher's feature space

A run holds its directory while it runs (``RunDir.lock``): a second run or a resume into it
fails at once. A new run starts only in a new or empty folder, or in a run's own that holds
no result yet (one killed before its first checkpoint): a run's ``config.yaml`` starts with
``CONFIG_HEADER``, so a user's config.yaml is never taken for one.

Everything that reads or writes one of these goes through :class:`RunDir`. It is a leaf: it
imports only the config (lazily), so every package may use it; the teacher a config describes
is built by ``models.teacher.build_teacher``. Torch-free: the CLI resolves paths before heavy
imports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from edgedistill.errors import EdgeDistillError

if TYPE_CHECKING:
    from edgedistill.config import Config

__all__ = ["RunDir", "RUNS_ROOT", "ROLES", "RUN_FILES", "CONFIG_HEADER"]

RUNS_ROOT = Path("runs")
ROLES = ("student", "teacher")  # distill writes student.*, pretrain teacher.*
# the first line of a run's config.yaml: what tells a run's folder from a user's
CONFIG_HEADER = "# The resolved config of this edgedistill run (a new run in this folder replaces it)."
# what a run writes (and the atomic writers' temporaries of it, left by a kill)
RUN_FILES = frozenset({"config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json", "projector.safetensors",
                       *(f"{role}.{ext}" for role in ROLES for ext in ("json", "safetensors"))})
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")


@dataclass(frozen=True)
class RunDir:
    """The directory of one training run (it need not exist yet)."""

    path: Path

    @classmethod
    def of(cls, path: str | Path) -> "RunDir":
        return cls(Path(path).expanduser())

    @classmethod
    def for_config(cls, cfg: "Config", out: str | Path | None = None, root: str | Path = RUNS_ROOT) -> "RunDir":
        """``out`` when given, else ``<root>/<run.name>``."""
        return cls.of(out) if out is not None else cls.of(Path(root) / cfg.run.name)

    # ---- file names
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def projector(self) -> Path:
        return self.path / "projector.safetensors"

    def weights(self, role: str) -> Path:
        return self.path / f"{role}.safetensors"

    def meta(self, role: str) -> Path:
        return self.path / f"{role}.json"

    # ---- state
    def has_backbone(self, role: str) -> bool:
        return self.meta(role).is_file() and self.weights(role).is_file()

    def backbone_role(self) -> str | None:
        """Which saved pair the run holds: ``teacher`` (pretrain), ``student`` (distill) or None."""
        return next((role for role in ("teacher", "student") if self.has_backbone(role)), None)

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def lock(self) -> ContextManager[list[str]]:
        """Hold the directory for the whole run (``utils.directory_lock``): another run or a
        resume into it fails at once, naming this process."""
        from edgedistill.utils import directory_lock

        # resolved: `--out .` has no name to put beside it, and one folder gets one lock
        return directory_lock(self.path.resolve(), instead="another --out")

    def check_writable(self, resume: bool, role: str) -> None:
        """A new run never overwrites an old one nor a folder of the user's; a resume needs a
        checkpoint to resume from."""
        if resume:
            if not self.has_checkpoint():
                raise EdgeDistillError(f"nothing to resume: {self.checkpoint} does not exist")
            return
        if self.checkpoint.exists() or any(self.weights(r).exists() for r in ROLES):
            raise EdgeDistillError(f"{self.path} already holds a run: pass --resume to continue it, "
                                   "or choose another --out")
        self.check_not_foreign()

    def check_not_foreign(self) -> None:
        """A folder of the user's (anything no run wrote) is never taken for a run."""
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise EdgeDistillError(f"{self.path} is not a run directory (it holds {shown}, which no run wrote): "
                                   "a run starts in a new or empty folder; choose another --out")

    def foreign_entries(self) -> list[str]:
        """The entries of the directory that no run wrote (sorted): anything but a run's files,
        their temporaries and a config.yaml that starts with ``CONFIG_HEADER``."""
        if not self.path.is_dir():
            return []
        foreign = []
        for entry in sorted(self.path.iterdir()):
            temporary = _TEMPORARY.match(entry.name)
            name = temporary.group("name") if temporary else entry.name
            if name not in RUN_FILES or not entry.is_file() or (entry == self.config_path and not self._own_config()):
                foreign.append(entry.name)
        return foreign

    def _own_config(self) -> bool:
        try:
            with open(self.config_path, encoding="utf-8", errors="replace") as handle:
                return handle.readline().rstrip("\n") == CONFIG_HEADER
        except OSError:
            return False

    # ---- reading
    def config(self) -> "Config | None":
        """The run's typed config, or None when it has no ``config.yaml``; a malformed one is an
        EdgeDistillError naming the key."""
        if not self.config_path.is_file():
            return None
        from edgedistill.config import build_config

        return build_config(self.config_path)

    def config_or_none(self) -> "Config | None":
        """Like :meth:`config`, but a config this version cannot read counts as absent (an
        export of an old run falls back to the defaults rather than failing)."""
        try:
            return self.config()
        except EdgeDistillError:
            return None

    def backbone_meta(self, role: str) -> dict[str, Any]:
        from edgedistill.utils import read_json

        return read_json(self.meta(role))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    # ---- writing
    def save_config(self, cfg: "Config") -> None:
        from edgedistill.config import save_config

        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path, header=CONFIG_HEADER)

    def write_summary(self, summary: dict[str, Any]) -> None:
        from edgedistill.utils import atomic_write_json

        atomic_write_json(self.summary, summary)
