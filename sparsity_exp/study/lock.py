"""Pre-registration: a study folder's ``lock.json``, written before its first run.

The lock holds the suite's full text and its sha256, the package version and git commit, the verdict
rule's settings (alpha, correction, seeds or ``auto`` with max seeds, stages and spending function) and
the fingerprint of the machine the runs get (study/machine.py) with the mode (default or reproducible).
Its hash (``lock_hash``: sha256 of that content as canonical JSON) is shown at the top of the report.

Every later ``sparsity-exp study`` on the folder compares the suite and the rule with the lock and
refuses a change (exit 2, ``error:`` saying what changed) unless given ``--amend "why"``; an amendment
is recorded in the lock (when, why, the suite's hash before and after, the rule's settings before and
after, which claims it touched, the text before) and the suite and rule in force become the amended
ones. The report lists every amendment and marks the verdicts of the claims an amendment touched as
decided after it. A lock written when runs were already there (a study from before locks existed)
says so: it is not a pre-registration.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import ConfigError

LOCK_NAME = "lock.json"
EVERY_CLAIM = "every claim"  # an amendment of the rule or of suite-wide keys touches all of them


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_info() -> dict:
    """The package's version and the git commit of its tree (and whether the tree had changes)."""
    from .. import __version__

    tree = Path(__file__).resolve().parents[2]
    info = {"version": __version__, "git_commit": "n/a", "git_dirty": None}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, timeout=20)
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree,
                                    capture_output=True, text=True, timeout=20)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def rule_settings(args, auto: list[int] | None, seeds: list[int]) -> dict:
    """The verdict rule's settings of this invocation (what a lock holds and compares)."""
    rule = {"alpha": float(args.alpha), "correction": args.correction}
    if auto is not None:
        rule.update(seeds="auto", max_seeds=int(args.max_seeds), stages=int(args.stages), spending=args.spending)
    else:
        rule.update(seeds=list(seeds), max_seeds=None, stages=None, spending=None)
    return rule


def lock_hash(lock: dict) -> str:
    core = {k: lock[k] for k in ("created", "suite_sha256", "suite_text", "package", "rule", "machine", "mode",
                                 "runs_before_lock")}
    return sha256(_canonical(core))


def read(out: Path) -> dict | None:
    path = out / LOCK_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}): restore it from version control, or give --out "
                          f"NEW_DIR for a new study") from None


def write(out: Path, lock: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    path.write_text(json.dumps(lock, indent=1, sort_keys=False) + "\n")
    return path


def new_lock(suite_text: str, suite_path: Path, rule: dict, machine: dict, mode: str, runs_before: int) -> dict:
    lock = {"created": _now(), "suite_name": suite_path.stem, "suite_path": str(suite_path),
            "suite_sha256": sha256(suite_text), "suite_text": suite_text, "package": package_info(),
            "rule": rule, "machine": machine, "mode": mode, "runs_before_lock": int(runs_before)}
    lock["lock_hash"] = lock_hash(lock)
    lock["current"] = {"suite_sha256": lock["suite_sha256"], "suite_text": suite_text, "rule": rule}
    lock["amendments"] = []
    lock["launches"] = []
    return lock


def _resolved_arms(raw: dict) -> dict:
    from .suite import _resolve_arm

    arms = raw.get("arms") or {}
    out = {}
    for name in arms:
        try:
            out[name] = _resolve_arm(name, arms)
        except ConfigError:
            out[name] = ("unresolvable", repr(arms[name]))
    return out


def _claim_arms(claim: dict) -> set:
    return {a if isinstance(a, str) else (a or {}).get("arm") for a in claim.get("arms") or []}


def changed_claims(old_text: str, new_text: str) -> list[str]:
    """Claim ids an edit of the suite touches: claims added, removed or edited, claims on an arm whose
    overrides changed, and every claim (EVERY_CLAIM) when a suite-wide key (seeds, alpha, accuracy,
    datasets, test) changed."""
    old = OmegaConf.to_container(OmegaConf.create(old_text), resolve=False) or {}
    new = OmegaConf.to_container(OmegaConf.create(new_text), resolve=False) or {}
    suite_wide = set(old) | set(new)
    suite_wide -= {"arms", "claims"}
    if any(old.get(k) != new.get(k) for k in suite_wide):
        return [EVERY_CLAIM]
    by_id = lambda raw: {str(c.get("id")): c for c in raw.get("claims") or []}  # noqa: E731
    before, after = by_id(old), by_id(new)
    arms_before, arms_after = _resolved_arms(old), _resolved_arms(new)
    arms_changed = {a for a in set(arms_before) | set(arms_after) if arms_before.get(a) != arms_after.get(a)}
    touched = [i for i in dict.fromkeys([*before, *after])
               if before.get(i) != after.get(i) or _claim_arms(after.get(i) or before.get(i)) & arms_changed]
    return touched


def _rule_changes(old: dict, new: dict) -> list[str]:
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check(out: Path, suite_text: str, suite_path: Path, rule: dict, amend: str | None, *, machine, mode: str,
          runs_before: int, write_new: bool = True) -> dict | None:
    """The lock of the study folder ``out`` after this invocation: written when there is none (before
    the first run), compared otherwise. A changed suite or rule is refused unless ``amend`` gives the
    reason, which is then recorded. ``machine`` is a callable giving the runs' fingerprint (taken only when
    a lock is written). Returns the lock (None when there is none and ``write_new`` is False)."""
    lock = read(out)
    if lock is None:
        if amend is not None:
            raise ConfigError(f"--amend: {out} has no {LOCK_NAME} yet, so there is nothing to amend; run without "
                              f"--amend (the first run writes the lock)")
        if not write_new:
            return None
        lock = new_lock(suite_text, suite_path, rule, machine(), mode, runs_before)
        write(out, lock)
        return lock
    current = lock["current"]
    text_changed = sha256(suite_text) != current["suite_sha256"]
    rule_changes = _rule_changes(current["rule"], rule)
    if not text_changed and not rule_changes:
        if amend is not None:
            raise ConfigError(f"--amend {amend!r}: the suite and the rule are as locked in {out / LOCK_NAME}; "
                              f"nothing to amend, drop --amend")
        return lock
    claims = changed_claims(current["suite_text"], suite_text) if text_changed else []
    if rule_changes:
        claims = [EVERY_CLAIM]
    what = []
    if text_changed:
        what.append(f"the suite {suite_path} (sha256 {current['suite_sha256'][:12]} -> {sha256(suite_text)[:12]}; "
                    f"claims touched: {', '.join(claims) or 'none (comments or layout only)'})")
    if rule_changes:
        what.append("the rule: " + "; ".join(rule_changes))
    if amend is None:
        raise ConfigError(
            f"this study was locked (pre-registered) in {out / LOCK_NAME} on {lock['created']} and "
            f"{' and '.join(what)} changed since: give --amend \"why\" to record the change as an amendment "
            f"(the report lists it and marks the verdicts it touched), restore the locked suite and settings "
            f"(the locked text is in the lock, key `current.suite_text`), or give --out NEW_DIR for a new study")
    if not amend.strip():
        raise ConfigError("--amend needs a reason in words, e.g. --amend \"SESOI of claim 9 set from the paper's "
                          "Fig. 5 before any run of claim 9\"")
    lock["amendments"].append({
        "n": len(lock["amendments"]) + 1, "when": _now(), "why": amend,
        "suite_sha256_before": current["suite_sha256"], "suite_sha256_after": sha256(suite_text),
        "rule_before": current["rule"], "rule_after": rule, "rule_changes": rule_changes,
        "claims": claims, "suite_text_before": current["suite_text"]})
    lock["current"] = {"suite_sha256": sha256(suite_text), "suite_text": suite_text, "rule": rule}
    write(out, lock)
    return lock


def record_launch(out: Path, lock: dict | None, mode: str, fingerprint: dict, launched: int) -> None:
    """Which machine and mode produced runs (appended to the lock's ``launches``; not part of its hash)."""
    if lock is None or not launched:
        return
    lock.setdefault("launches", []).append({"when": _now(), "mode": mode, "runs": int(launched),
                                            "machine": fingerprint})
    write(out, lock)


def amended_rows(lock: dict | None, verdicts) -> dict:
    """verdict row -> the numbers of the amendments that touched its claim."""
    out: dict = {}
    if not lock:
        return out
    for a in lock.get("amendments", []):
        for v in verdicts:
            if EVERY_CLAIM in a["claims"] or v.claim.id in a["claims"]:
                out.setdefault(v.row, []).append(a["n"])
    return out


def header_lines(lock: dict | None) -> list[str]:
    """The report's lines under its title: the lock's hash and state."""
    if not lock:
        return ["Pre-registration: none (no lock.json in this folder).", ""]
    pkg = lock["package"]
    state = ("written before any run (pre-registered)" if not lock["runs_before_lock"] else
             f"written when {lock['runs_before_lock']} run(s) were already there: NOT a pre-registration")
    amends = lock.get("amendments", [])
    return [f"Pre-registration lock `{lock['lock_hash'][:16]}` ({lock['created']}, {state}; `lock.json` holds the "
            f"suite's text, sha256 `{lock['suite_sha256'][:16]}`, package {pkg['version']} at commit "
            f"`{str(pkg['git_commit'])[:12]}`{' with uncommitted changes' if pkg.get('git_dirty') else ''}, the rule "
            f"{_canonical(lock['rule'])}); amendments since: {len(amends)}"
            + (f" (section \"Amendments\"; suite in force sha256 `{lock['current']['suite_sha256'][:16]}`)"
               if amends else "") + ".", ""]


def amendments_section(lock: dict | None) -> str:
    amends = (lock or {}).get("amendments", [])
    if not amends:
        return ""
    lines = ["## Amendments", "",
             "Changes to the locked suite or rule, each given with its reason (`--amend`). Verdicts of the claims "
             "an amendment touched are marked `after amendment N` in the table: they were decided under a suite "
             "or rule changed after the lock, possibly after results were seen.", "",
             "| # | when | why | claims touched | suite sha256 | rule changes |", "|---|---|---|---|---|---|"]
    for a in amends:
        lines.append(f"| {a['n']} | {a['when']} | {a['why']} | {', '.join(a['claims']) or 'none'} | "
                     f"`{a['suite_sha256_before'][:12]}` → `{a['suite_sha256_after'][:12]}` | "
                     f"{'; '.join(a['rule_changes']) or 'none'} |")
    return "\n".join(lines + [""])
