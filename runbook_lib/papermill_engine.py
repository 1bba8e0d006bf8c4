"""The papermill engine a ``runbook run`` executes its notebook with: papermill's own (nbclient), saving the executed
notebook when each code cell starts instead of when every cell starts and ends.

papermill writes the whole notebook twice per cell, markdown cells included (``cell_start`` and ``cell_complete``):
~50 writes for a token-reversal notebook, each serialising and validating ~1.3 MB (the offline table library alone
is ~1 MB), ~0.01 s apiece — ~0.4 s of a run. The file a run leaves behind when it is killed is what matters as
evidence, and it is the same here: every cell before the running one complete with its outputs, the running one
marked running (its start saved), long cells' output saved by papermill's autosave, the end saved at the notebook's
end (papermill's ``notebook_complete``, also after a failed cell). Between a cell's end and the next code cell's start
nothing runs (markdown cells execute nothing), so the writes left out are the ones nothing could interrupt.

Registered with papermill's engine registry under :data:`ENGINE` (papermill's extension point), selected by
``engine_name=`` in :func:`runbook_lib.runner._execute_notebook`. Importing this module imports papermill.
"""

from __future__ import annotations

from typing import Any

from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

ENGINE = "runbook"


class EvidenceExecutionManager(NotebookExecutionManager):
    """papermill's execution manager whose saves are those that change what an interrupted run leaves: when a code
    cell starts, on papermill's autosave of a long cell, at the notebook's start and end."""

    _saving = True

    def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        self._saving = cell.cell_type == "code"
        try:
            return super().cell_start(cell, cell_index, **kwargs)
        finally:
            self._saving = True

    def cell_complete(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        self._saving = False  # the next code cell's start (or the notebook's end) saves this cell as it ended
        try:
            return super().cell_complete(cell, cell_index, **kwargs)
        finally:
            self._saving = True

    def save(self, **kwargs: Any) -> Any:
        if self._saving:
            return super().save(**kwargs)
        return None


class EvidenceEngine(NBClientEngine):
    """papermill's nbclient engine with :class:`EvidenceExecutionManager` (papermill's ``Engine.execute_notebook``,
    the manager class aside)."""

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: str, output_path: str | None = None, progress_bar: Any = True,
                         log_output: bool = False, autosave_cell_every: int = 30, **kwargs: Any) -> Any:
        nb_man = EvidenceExecutionManager(nb, output_path=output_path, progress_bar=progress_bar,
                                          log_output=log_output, autosave_cell_every=autosave_cell_every)
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb


papermill_engines.register(ENGINE, EvidenceEngine)
