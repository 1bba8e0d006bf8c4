"""Approvals that name people, and evidence signed with the operator's SSH key.

An execute is approved by a person (``approver``) for a plan id that a review run of the same incident
produced (``review_run``; its operator is the ``reviewer``). ``approve`` finds that review run, checks its
files against its manifest (a tampered review is refused) and, with four eyes, that the approver is not the
reviewer. All of it happens in the runner before papermill starts, so a refusal changes nothing.

Signing uses ``ssh-keygen -Y sign`` / ``-Y verify`` (the mechanism git uses for SSH-signed commits) with the
namespace ``runbook-evidence``: ``approval.json.sig`` and ``manifest.json.sig`` next to the signed files,
checked against an ``allowed_signers`` file (``ssh-keygen(1)``, "ALLOWED SIGNERS") by ``evidence verify``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ApprovalError, EvidenceError, ParameterError, ToolMissingError
from .redact import redact_obj

NAMESPACE = "runbook-evidence"
APPROVAL = "approval.json"
SIG_SUFFIX = ".sig"
FOUR_EYES_ENV = "RUNBOOK_FOUR_EYES"
SIGNING_KEY_ENV = "RUNBOOK_SIGNING_KEY"
SIGNER_ENV = "RUNBOOK_SIGNER"
_TRUE = ("1", "true", "yes", "on")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def four_eyes(params: Any, requested: bool | None = None) -> tuple[bool, str | None]:
    """(required, why): asked for with ``--four-eyes`` / ``RUNBOOK_FOUR_EYES=1``, always on a production target
    (marked by its parameters or the environment, as the driver's production guard decides it: the database itself
    is only known inside the notebook)."""
    from .guards import production_marked  # lazy: guards pulls pandas, the runner's process needs none

    if production_marked(params):
        return True, "the target is marked production"
    if requested:
        return True, "--four-eyes"
    if requested is None and _truthy(os.environ.get(FOUR_EYES_ENV)):
        return True, f"{FOUR_EYES_ENV}=1"
    return False, None


def _same_person(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and str(a).strip().casefold() == str(b).strip().casefold()


# ------------------------------------------------------------------------------------------ the review
@dataclass(frozen=True)
class ReviewRun:
    run_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str

    @property
    def reviewer(self) -> str | None:
        value = self.manifest.get("reviewer") or self.manifest.get("operator")
        return str(value) if value else None


def find_review(incident_dir: Path, procedure: str, plan_id: str) -> ReviewRun:
    """The incident's most recent succeeded review of ``procedure`` whose plan id is ``plan_id``, verified
    against its manifest. ``ApprovalError`` when there is none or when it was altered after it was archived."""
    from .evidence.folders import MANIFEST, run_dirs
    from .evidence.manifest import sha256_file
    from .evidence.verify import read_manifest, verify_run

    incident = incident_dir.name
    for d in reversed(run_dirs(incident_dir)):
        if not (d / MANIFEST).is_file():
            continue
        m, _ = read_manifest(d)
        if not m or m.get("mode") != "review" or m.get("procedure") != procedure or m.get("plan_id") != plan_id:
            continue
        if m.get("status") != "succeeded":
            continue
        problems = verify_run(d).problems
        if problems:
            raise ApprovalError(
                f"the review run {d.name} that produced plan {plan_id} was altered after it was archived "
                f"({problems[0]}; {len(problems)} problem(s), see runbook evidence verify {d}): run the review "
                f"again with --incident {incident} and approve its plan id", plan_id=plan_id)
        return ReviewRun(d, m, sha256_file(d / MANIFEST))
    raise ApprovalError(
        f"plan {plan_id} was not produced by any review in incident {incident}: run the review with --incident "
        f"{incident} first (runbook run {procedure} … --incident {incident}), then execute with the plan id it "
        "prints; nothing was changed", plan_id=plan_id)


def approve(incident_dir: Path, procedure: str, params: Any, *, approver: str, operator: str,
            four_eyes_requested: bool | None = None, signer: str | None = None) -> dict[str, Any]:
    """The approval record of an execute (``approval.json``), or ``ApprovalError`` (exit 6), nothing changed."""
    plan_id = params.approved_plan
    incident = incident_dir.name
    if not plan_id:
        raise ApprovalError(f"mode=execute needs approved_plan: run a review first with --incident {incident} and "
                            "pass the plan id it prints (CLI: --approve PLAN_ID)")
    review = find_review(incident_dir, procedure, plan_id)
    required, why = four_eyes(params, four_eyes_requested)
    reviewer = review.reviewer
    if required and _same_person(approver, reviewer):
        raise ApprovalError(
            f"four eyes ({why}): the approver {approver!r} is also the reviewer {reviewer!r} of {review.run_dir.name}; "
            "another person must approve (--approver NAME), or another person must review", plan_id=plan_id)
    review_signer = review.manifest.get("signer")
    if required and _same_person(signer, review_signer):
        raise ApprovalError(
            f"four eyes ({why}): the approval would be signed by {signer!r}, who also signed the review "
            f"{review.run_dir.name}; the approver signs with their own key (--sign-key, --signer)", plan_id=plan_id)
    record: dict[str, Any] = {
        "procedure": procedure,
        "incident": incident,
        "plan_id": plan_id,
        "review_run": review.run_dir.name,
        "review_manifest_sha256": review.manifest_sha256,
        "reviewer": reviewer,
        "review_signer": review_signer,
        "approver": approver,
        "operator": operator,
        "four_eyes": required,
        "four_eyes_reason": why,
        "approved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "signer": signer,
    }
    return dict(redact_obj(record))


def write_approval(run_dir: Path, record: dict[str, Any], signing: Signing | None) -> Path:
    """``approval.json`` in the run folder (before papermill starts), signed when a key is given."""
    path = run_dir / APPROVAL
    with path.open("x", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True))
    if signing is not None:
        sign_file(signing, path)
    return path


# ------------------------------------------------------------------------------------------ signing
def ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if not exe:
        raise ToolMissingError("ssh-keygen is missing: signing and checking evidence signatures need OpenSSH 8.2 "
                               "or newer (Debian: apt-get install openssh-client)")
    return exe


@dataclass(frozen=True)
class Signing:
    key: Path  # a private key, or a public key whose private half is in ssh-agent
    signer: str  # the identity (principal) the allowed_signers file names for this key


def signing_from(key: str | Path | None, signer: str | None, operator: str) -> Signing | None:
    """The signing settings from the options or ``RUNBOOK_SIGNING_KEY`` / ``RUNBOOK_SIGNER``; None: unsigned."""
    key = key or os.environ.get(SIGNING_KEY_ENV) or None
    if not key:
        return None
    path = Path(key).expanduser()
    if not path.is_file():
        raise ParameterError(f"signing key {path} does not exist: give --sign-key (or {SIGNING_KEY_ENV}) the path "
                             "of your SSH private key, e.g. ~/.ssh/id_ed25519", "sign_key")
    who = signer or os.environ.get(SIGNER_ENV) or operator
    if not who.strip() or any(c.isspace() for c in who.strip()):
        raise ParameterError(f"signer {who!r} must be one word, the identity your allowed_signers line names "
                             "(e.g. alice@example.com)", "signer")
    return Signing(path, who.strip())


def sign_file(signing: Signing, path: Path) -> Path:
    """``ssh-keygen -Y sign`` ``path`` into ``path.sig``; ``EvidenceError`` when the key cannot sign."""
    sig = path.with_name(path.name + SIG_SUFFIX)
    if sig.exists():
        raise EvidenceError(f"{sig} exists already; evidence is never overwritten")
    try:
        res = subprocess.run([ssh_keygen(), "-Y", "sign", "-f", str(signing.key), "-n", NAMESPACE, str(path)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise EvidenceError(f"signing {path.name} with {signing.key} timed out (a passphrase prompt?): load the "
                            "key into ssh-agent (ssh-add) and give its public key to --sign-key") from None
    if res.returncode != 0 or not sig.is_file():
        said = " ".join(res.stderr.split())[:300]
        raise EvidenceError(f"cannot sign {path.name} with {signing.key}: {said or 'ssh-keygen failed'}; give "
                            "--sign-key an SSH private key without a passphrase prompt (or one loaded in ssh-agent)")
    return sig


def preflight(signing: Signing) -> None:
    """Sign a throwaway file first, so a key that cannot sign is found before anything runs."""
    with tempfile.TemporaryDirectory(prefix="runbook-sign-") as tmp:
        probe = Path(tmp) / "probe"
        probe.write_text("runbook signing check\n")
        sign_file(signing, probe)


def load_allowed_signers(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ParameterError(f"allowed signers file {p} does not exist: give --allowed-signers a file of lines "
                             "'IDENTITY KEYTYPE PUBLICKEY' (ssh-keygen(1), ALLOWED SIGNERS)", "allowed_signers")
    return p


def verify_signature(allowed_signers: Path, signer: str, data: Path, sig: Path) -> str | None:
    """None when ``sig`` is ``signer``'s valid signature of ``data`` under ``allowed_signers``; else why not."""
    with data.open("rb") as f:
        res = subprocess.run([ssh_keygen(), "-Y", "verify", "-f", str(allowed_signers), "-I", signer, "-n",
                              NAMESPACE, "-s", str(sig)], stdin=f, capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        return None
    said = " ".join((res.stderr or res.stdout).split())[:200]
    return said or "ssh-keygen -Y verify failed"
