"""One exception hierarchy for every failure a runbook can meet.

Each subclass carries the fields that describe the problem and a message that states the fix.
The CLI converts them to a one-line message and a distinct exit status (``exit_code``) at the
boundary only; library callers and notebooks see the exceptions themselves.
"""

from __future__ import annotations

from typing import Any


class RunbookError(Exception):
    """Base class. ``exit_code`` is the process status the CLI uses for this kind of failure."""

    exit_code = 1
    #: evidence status for a run that ends with this error: "failed" or "aborted"
    status = "failed"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def one_line(self) -> str:
        text = " ".join(str(self.message).split())
        return f"{type(self).__name__}: {text}"


class ParameterError(RunbookError):
    """A parameter is unknown, ill-typed or inconsistent. Nothing was touched."""

    exit_code = 2

    def __init__(self, message: str, parameter: str | None = None, **fields: Any) -> None:
        super().__init__(message, parameter=parameter, **fields)
        self.parameter = parameter


class UnknownProcedureError(ParameterError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown procedure {name!r}; known procedures: {', '.join(known)}", parameter="procedure")


class TargetError(RunbookError):
    """The target database cannot be reached, refuses the credentials, or is not configured."""

    exit_code = 3


class SchemaMismatchError(RunbookError):
    """A table, column or enum the procedure needs does not exist in the target database."""

    exit_code = 4


class NotFoundError(RunbookError):
    """Named entities (voucher codes, user ids, migrations, backups) do not exist."""

    exit_code = 5


class ApprovalError(RunbookError):
    """Execute mode without an approved plan, or with one that differs from the plan recomputed now."""

    exit_code = 6
    status = "aborted"


class PolicyAbort(RunbookError):
    """A safety policy (negative balances with policy=abort, unexpected dependents, production guard…)."""

    exit_code = 7
    status = "aborted"


class InvariantError(RunbookError):
    """A post-condition failed before COMMIT; the transaction was rolled back."""

    exit_code = 8


class LockTimeoutError(RunbookError):
    """Rows or tables were locked by other sessions longer than lock_timeout, or a deadlock; rolled back."""

    exit_code = 9
    status = "aborted"


class ConcurrentRunError(RunbookError):
    """Another operator is executing the same procedure on this database right now."""

    exit_code = 10
    status = "aborted"


class SessionInterruptedError(RunbookError):
    """The runbook's database session was terminated, its statement canceled by another session, or the
    connection lost while a transaction was open. The server rolls back an uncommitted transaction; if the
    loss came during COMMIT the outcome is unknown until the next review shows it."""

    exit_code = 15


class StatementTimeoutError(RunbookError):
    """A statement ran longer than statement_timeout; the transaction was rolled back. Raise the timeout or
    narrow the scope (a lock wait is LockTimeoutError, exit 9)."""

    exit_code = 16
    status = "aborted"


class KernelDiedError(RunbookError):
    """The notebook's kernel process died (killed, or out of memory) while the runner executed it. The
    runner reports it with this exit status; an open database transaction is rolled back by the server."""

    exit_code = 17


class EvidenceError(RunbookError):
    """The evidence folder cannot be written, or would overwrite an earlier run, or fails verification."""

    exit_code = 11


class ToolMissingError(RunbookError):
    """An external program (pg_dump, pg_restore, node) is missing or too old."""

    exit_code = 12


class VerificationFailed(RunbookError):
    """One or more verification checks failed. After an execute the change was committed already (nothing is
    rolled back): the run is ``failed`` and the message says so, naming the checks."""

    exit_code = 13


class BackupRequiredError(RunbookError):
    """A destructive procedure needs a recent backup of its tables in the same incident."""

    exit_code = 14
    status = "aborted"


#: exit status for the CLI, by name, documented in the README
EXIT_CODES: dict[str, int] = {
    "success": 0,
    "unexpected error": 1,
    **{
        cls.__name__: cls.exit_code
        for cls in (
            ParameterError,
            TargetError,
            SchemaMismatchError,
            NotFoundError,
            ApprovalError,
            PolicyAbort,
            InvariantError,
            LockTimeoutError,
            ConcurrentRunError,
            EvidenceError,
            ToolMissingError,
            VerificationFailed,
            BackupRequiredError,
            SessionInterruptedError,
            StatementTimeoutError,
            KernelDiedError,
        )
    },
}
