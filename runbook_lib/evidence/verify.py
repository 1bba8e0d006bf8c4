"""Checking evidence: ``verify_incident`` (every run, the chain, approvals), ``verify_run`` (one run folder and
its links to its neighbours), ``verify_path`` (``runbook evidence verify``: picks between them and refuses
anything that is not evidence), and the SSH signature and approval checks they share.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvidenceError
from .folders import INDEX_FILES, MANIFEST, RUN_DIR_NAME, is_live, run_dirs
from .manifest import SELF_DIGEST, file_hashes, manifest_digest, sha256_file


@dataclass(frozen=True)
class Verification:
    """What ``verify_path`` checked: a run folder alone, or an incident folder (every run and the chain)."""

    path: Path
    kind: str  # "run" or "incident"
    problems: list[str]
    files: int = 0  # run: the files its manifest lists (all present and matching when no problems)
    runs: int = 0  # incident: its run folders
    link: str | None = None  # run: how its link to the neighbouring runs of its incident was checked
    #: per run: procedure, mode, status, reviewer, approver, operator, signed (who signed, and whether checked)
    people: list[dict[str, str]] = field(default_factory=list)
    signatures_checked: bool = False  # an allowed_signers file was given and every signature was checked


def _check_run(d: Path, m: dict[str, Any]) -> list[str]:
    """One archived run against its own manifest: the manifest's digest, its run name, every file's hash."""
    problems: list[str] = []
    if m.get(SELF_DIGEST) != manifest_digest(m):
        problems.append(f"{d.name}: manifest.json was edited after the run was archived (its "
                        f"{SELF_DIGEST} does not match its content)")
    if m.get("run") != d.name:
        problems.append(f"{d.name}: its manifest belongs to run {m.get('run')!r} (folders renamed or swapped)")
    recorded = m.get("files")
    if not isinstance(recorded, dict):
        return [*problems, f"{d.name}: manifest.json lists no files (it was tampered with)"]
    actual = file_hashes(d)
    for rel, digest in recorded.items():
        if rel not in actual:
            problems.append(f"{d.name}: file {rel} is missing")
        elif actual[rel] != digest:
            problems.append(f"{d.name}: file {rel} changed (sha256 {actual[rel][:16]}…, "
                            f"manifest says {str(digest)[:16]}…)")
    for rel in sorted(set(actual) - set(recorded)):
        problems.append(f"{d.name}: file {rel} was added after the run was archived")
    return problems


def _check_signatures(d: Path, m: dict[str, Any], allowed_signers: Path | None) -> tuple[list[str], str]:
    """The run's SSH signatures (manifest.json.sig, approval.json.sig): (problems, who signed).

    With ``allowed_signers`` every signature is checked with ``ssh-keygen -Y verify`` for the identity the
    signed file records (``signer``), and an unsigned run is a problem; without it they are only listed.
    """
    from .. import approvals

    problems: list[str] = []
    signed: list[str] = []
    targets: list[tuple[Path, str | None]] = [(d / MANIFEST, m.get("signer"))]
    approval = d / approvals.APPROVAL
    if approval.is_file():
        try:
            recorded = json.loads(approval.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            recorded = None
        if not isinstance(recorded, dict):
            problems.append(f"{d.name}: {approvals.APPROVAL} unreadable (not a JSON object: it was tampered with)")
        else:
            targets.append((approval, recorded.get("signer")))
    for data, signer in targets:
        sig = data.with_name(data.name + approvals.SIG_SUFFIX)
        if not sig.is_file():
            if signer:
                problems.append(f"{d.name}: {data.name} names signer {signer!r} but {sig.name} is missing "
                                "(signature deleted)")
                signed.append(f"{data.name}: {signer} (signature MISSING)")
            elif allowed_signers is not None:
                problems.append(f"{d.name}: {data.name} is not signed (no {sig.name}; the run was made without "
                                "--sign-key)")
            continue
        if not signer:
            problems.append(f"{d.name}: {sig.name} present but {data.name} records no signer (tampered with)")
            continue
        if allowed_signers is None:
            signed.append(f"{data.name}: {signer} (not checked)")
            continue
        why = approvals.verify_signature(allowed_signers, str(signer), data, sig)
        if why:
            problems.append(f"{d.name}: {sig.name} is not a valid signature of {data.name} by {signer!r} under "
                            f"{allowed_signers} ({why})")
            signed.append(f"{data.name}: {signer} (BAD signature)")
        else:
            signed.append(f"{data.name}: {signer} (good signature)")
    return problems, ", ".join(signed) if signed else "not signed"


def _check_approval(d: Path, m: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> list[str]:
    """An execute's approval against its manifest and the review run it names (in the same incident)."""
    from .. import approvals

    if m.get("mode") != "execute" or not m.get("review_run"):
        return []
    problems: list[str] = []
    try:
        rec = json.loads((d / approvals.APPROVAL).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [f"{d.name}: names review run {m.get('review_run')!r} but its {approvals.APPROVAL} is missing or "
                "unreadable"]
    if not isinstance(rec, dict):
        return [f"{d.name}: {approvals.APPROVAL} is not a JSON object (tampered with)"]
    approved = (m.get("parameters") or {}).get("approved_plan")
    if m.get("parameters") and rec.get("plan_id") != approved:  # (an interrupted run may have recorded none)
        problems.append(f"{d.name}: {approvals.APPROVAL} approves plan {rec.get('plan_id')!r}, but the run executed "
                        f"with approved_plan {approved!r}")
    for key in ("review_run", "reviewer", "approver"):
        if rec.get(key) != m.get(key):
            problems.append(f"{d.name}: {approvals.APPROVAL} says {key} {rec.get(key)!r}, its manifest "
                            f"{m.get(key)!r}")
    review = by_name.get(str(m.get("review_run")))
    if review is None:
        problems.append(f"{d.name}: the review run it executed, {m.get('review_run')!r}, is not in the incident")
    else:
        if (review.get("mode") != "review" or review.get("procedure") != m.get("procedure")
                or review.get("plan_id") != rec.get("plan_id")):
            problems.append(f"{d.name}: its review run {m.get('review_run')} is not a review of plan "
                            f"{rec.get('plan_id')} by {m.get('procedure')}")
        if (review.get("reviewer") or review.get("operator")) != rec.get("reviewer"):
            problems.append(f"{d.name}: reviewer {rec.get('reviewer')!r} is not who ran {m.get('review_run')} "
                            f"({review.get('reviewer') or review.get('operator')!r})")
        if _chain_index(review) >= _chain_index(m):
            problems.append(f"{d.name}: its review run {m.get('review_run')} comes after it in the chain")
    return problems


def _people(d: Path, m: dict[str, Any] | None, signed: str) -> dict[str, str]:
    m = m or {}
    return {"run": d.name, "procedure": str(m.get("procedure") or "?"), "mode": str(m.get("mode") or "?"),
            "status": str(m.get("status") or "NO MANIFEST"),
            "reviewer": str(m.get("reviewer") or "-"), "approver": str(m.get("approver") or "-"),
            "operator": str(m.get("operator") or "-"), "review_run": str(m.get("review_run") or "-"),
            "signed": signed}


def read_manifest(d: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), or (None, the one-line problem) for a run folder without a readable manifest."""
    mf = d / MANIFEST
    if not mf.is_file():
        if is_live(d):
            return None, f"{d.name}: still running (not archived yet); verify again when it has finished"
        return None, f"{d.name}: manifest.json missing (the run was never archived, or it was tampered with)"
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        m = None
    if not isinstance(m, dict):
        return None, f"{d.name}: manifest.json unreadable (not a JSON object: it was tampered with)"
    return m, None


def verify_incident(incident_dir: Path, allowed_signers: Path | None = None) -> list[str]:
    """Every problem found: changed, missing or extra files; broken, reordered or incomplete chain; an
    execute whose approval does not match the review it names; with ``allowed_signers``, a missing or bad
    SSH signature.

    Raises ``EvidenceError`` for a path that is no incident folder: missing, a file, or a folder holding no
    run folders (and no INDEX.md listing deleted ones) — an empty folder is never "intact".
    """
    return _verify_incident(incident_dir, allowed_signers)[0]


def _verify_incident(incident_dir: Path, allowed_signers: Path | None) -> tuple[list[str], list[dict[str, str]]]:
    if not incident_dir.exists():
        raise EvidenceError(f"{incident_dir}: no such incident folder")
    if not incident_dir.is_dir():
        raise EvidenceError(f"{incident_dir} is a file, not an incident folder")
    listed = _index_runs(incident_dir)
    if not run_dirs(incident_dir) and not listed:
        raise EvidenceError(f"{incident_dir}: no run folders (NNN_<time>_<procedure>_<mode>/) in it: "
                            "not an incident folder, nothing to verify")
    problems: list[str] = []
    people: list[dict[str, str]] = []
    chain: dict[int, tuple[Path, dict[str, Any], str]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for d in run_dirs(incident_dir):
        m, problem = read_manifest(d)
        if m is None:
            problems.append(str(problem))
            people.append(_people(d, None, "-"))
            continue
        problems += _check_run(d, m)
        sig_problems, signed = _check_signatures(d, m, allowed_signers)
        problems += sig_problems
        people.append(_people(d, m, signed))
        by_name[d.name] = m
        idx = _chain_index(m)
        if idx in chain:
            problems.append(f"{d.name}: chain index {idx} is used twice (also {chain[idx][0].name})")
        chain[idx] = (d, m, sha256_file(d / MANIFEST))
    prev_idx = 0
    for idx in sorted(chain):
        d, m, _ = chain[idx]
        if idx != prev_idx + 1:
            missing = ", ".join(str(i) for i in range(prev_idx + 1, idx)) or str(idx)
            problems.append(f"run(s) number {missing} of the chain are missing (before {d.name}, whose previous "
                            f"run is recorded as {m.get('previous_run')!r})")
        prev_entry = chain.get(idx - 1)
        if prev_entry and m.get("previous_manifest_sha256") != prev_entry[2]:
            problems.append(f"{d.name}: previous_manifest_sha256 does not match the manifest of "
                            f"{prev_entry[0].name} (a manifest was edited, replaced or reordered)")
        if idx == 1 and m.get("previous_manifest_sha256") is not None:
            problems.append(f"{d.name}: first run of the chain points at a previous manifest (runs before it "
                            "are missing)")
        prev_idx = idx
    for name, m in by_name.items():
        problems += _check_approval(incident_dir / name, m, by_name)
    present = {d.name for d in run_dirs(incident_dir)}
    for name in sorted(listed - present):
        problems.append(f"{name}: listed in INDEX.md but its folder is missing (run deleted)")
    return problems, people


def _chain_index(m: dict[str, Any]) -> int:
    try:
        return int(m.get("chain_index") or 0)
    except (TypeError, ValueError):
        return 0


def verify_run(run_dir: Path, allowed_signers: Path | None = None) -> Verification:
    """One run folder alone: every file its manifest lists present with its SHA-256, no unlisted file, the
    manifest's own digest. When its parent is an incident folder, also its links to the runs just before
    and after it in the chain (the whole chain is checked by ``verify_incident`` on the parent).

    Raises ``EvidenceError`` when ``run_dir`` is no archived run folder (missing, a file, no manifest.json).
    """
    if not run_dir.exists():
        raise EvidenceError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise EvidenceError(f"{run_dir} is a file, not a run folder")
    m, problem = read_manifest(run_dir)
    if m is None:
        if not (run_dir / MANIFEST).exists():
            raise EvidenceError(f"{run_dir}: no manifest.json: not an archived run folder "
                                f"({str(problem).split(': ', 1)[1]})")
        return Verification(run_dir, "run", [str(problem)], people=[_people(run_dir, None, "-")])
    problems = _check_run(run_dir, m)
    link = _check_links(run_dir, m, problems)
    sig_problems, signed = _check_signatures(run_dir, m, allowed_signers)
    problems += sig_problems
    if m.get("review_run"):
        review_dir = run_dir.parent / str(m["review_run"])
        review, _ = read_manifest(review_dir) if review_dir.is_dir() else (None, None)
        problems += _check_approval(run_dir, m, {review_dir.name: review} if review else {})
    files = m.get("files")
    return Verification(run_dir, "run", problems, files=len(files) if isinstance(files, dict) else 0, link=link,
                        people=[_people(run_dir, m, signed)], signatures_checked=allowed_signers is not None)


def _check_links(run_dir: Path, m: dict[str, Any], problems: list[str]) -> str | None:
    """This run's links to its neighbours in the incident's chain (appends problems; returns a summary)."""
    parent = run_dir.parent
    if not RUN_DIR_NAME.match(run_dir.name) or run_dir not in run_dirs(parent):
        return None
    idx = _chain_index(m)
    prev = m.get("previous_manifest_sha256")
    siblings: dict[int, tuple[Path, dict[str, Any]]] = {}
    for d in run_dirs(parent):
        if d == run_dir:
            continue
        other, _ = read_manifest(d)
        if other is not None:
            siblings.setdefault(_chain_index(other), (d, other))
    said: list[str] = []
    if idx == 1:
        if prev is not None:
            problems.append(f"{run_dir.name}: first run of the chain points at a previous manifest (runs before "
                            "it are missing)")
        said.append("first of the chain")
    elif idx - 1 in siblings:
        d, _ = siblings[idx - 1]
        if prev != sha256_file(d / MANIFEST):
            problems.append(f"{run_dir.name}: previous_manifest_sha256 does not match the manifest of {d.name} "
                            "(a manifest was edited, replaced or reordered)")
        said.append(f"link to {d.name}")
    else:
        problems.append(f"{run_dir.name}: the run before it in the chain (number {idx - 1}, "
                        f"{m.get('previous_run')!r}) is missing from {parent}")
    if idx + 1 in siblings:
        d, nxt = siblings[idx + 1]
        if nxt.get("previous_manifest_sha256") != sha256_file(run_dir / MANIFEST):
            problems.append(f"{run_dir.name}: its manifest is not the one the next run {d.name} recorded "
                            "(manifest edited or replaced)")
        said.append(f"link from {d.name}")
    return " and ".join(said) if said else None


def verify_path(path: Path, allowed_signers: Path | None = None) -> Verification:
    """``runbook evidence verify``: a run folder (it has a manifest.json) alone, or an incident folder; with
    ``allowed_signers`` also every run's SSH signatures (an unsigned run is then a problem).

    Raises ``EvidenceError`` (one line) for anything that is not evidence: a missing path, a file, an empty
    folder, a run folder without manifest.json, a folder with no run folders.
    """
    if not path.exists():
        raise EvidenceError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise EvidenceError(f"{path} is a file, not an evidence folder (give an incident folder or one of its "
                            "run folders)")
    if (path / MANIFEST).exists():
        return verify_run(path, allowed_signers)
    if run_dirs(path) or any((path / marker).exists() for marker in (*INDEX_FILES, ".lock")):
        problems, people = _verify_incident(path, allowed_signers)
        return Verification(path, "incident", problems, runs=len(run_dirs(path)), people=people,
                            signatures_checked=allowed_signers is not None)
    if not any(path.iterdir()):
        raise EvidenceError(f"{path} is an empty folder: no evidence to verify")
    if RUN_DIR_NAME.match(path.name):
        return verify_run(path, allowed_signers)  # raises: no manifest.json
    raise EvidenceError(f"{path}: no manifest.json and no run folders: neither a run folder nor an incident "
                        "folder, nothing to verify")


def _index_runs(incident_dir: Path) -> set[str]:
    p = incident_dir / "INDEX.md"
    if not p.is_file():
        return set()
    return {m.group(1) for m in re.finditer(r"^\| (\d{3,}_[^ |]+) \|", p.read_text(), re.M)}
