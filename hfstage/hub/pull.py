"""``hfstage pull`` and ``hf://`` references: pushed runs and stages downloaded through ``huggingface_hub``'s
cache and used like local folders."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hfstage.checkpoint import publish_dir, staging_dir
from hfstage.errors import CheckpointError, ConfigError
from hfstage.hub.client import call, hub_api, offline
from hfstage.hub.push import ROOT_FILES
from hfstage.hub.refs import HubRef, parse_reference
from hfstage.run_dir import RUN_JSON, STAGE_FILES, RunDir, RunRecord, StageEntry

logger = logging.getLogger("hfstage")

AUTO_JSON = "auto.json"  # hfstage.automl.AUTO_JSON (hub/ imports nothing above it)


def _download_run(ref: HubRef, which: str | None) -> tuple[Path, str, RunRecord, list[StageEntry]]:
    """Download run.json and the chosen stages into the Hub cache: (snapshot folder, commit, run, stages)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    # by the revision's name, so the cache records where it points (refs/<name>) for a later HF_HUB_OFFLINE=1 use;
    # the file lands in snapshots/<commit>/, which pins everything else to that commit
    if not offline():  # one light request first: an unreachable Hub or a missing repository fails clearly, at once
        call("read revision of", ref.repo_id, hub_api().repo_info, ref.repo_id, revision=ref.revision)
    what = "find run.json (in the Hub cache) of" if offline() else "download run.json of"
    run_json = call(what, ref.repo_id, hf_hub_download, ref.repo_id, RUN_JSON, revision=ref.revision)
    commit = Path(run_json).parent.name
    run = RunDir(Path(run_json).parent).read()
    chosen = run.select(which, str(ref))
    patterns = [*ROOT_FILES] + [f"{s.dir}/*" for s in chosen]
    snapshot = Path(call("download", ref.repo_id, snapshot_download, ref.repo_id, revision=commit,
                         allow_patterns=patterns))
    present = []
    for s in chosen:
        missing = [n for n in STAGE_FILES if not (snapshot / s.dir / n).is_file()]
        if missing and which in (None, "all"):
            continue  # a stage that was never pushed
        if missing:
            where = "in the Hub cache (HF_HUB_OFFLINE is set)" if offline() else "on the Hub"
            raise CheckpointError(f"{ref}: {s.dir} {where} lacks {', '.join(missing)}")
        present.append(s)
    if not present:
        raise CheckpointError(f"{ref}: no pushed stage to download")
    return snapshot, commit, run, present


def resolve(text: str) -> tuple[Path, str]:
    """An ``hf://`` reference -> (local folder in the Hub cache, the reference pinned to its commit).

    The folder is the run (when the reference names no stage, its best stage is downloaded) or the stage.
    """
    ref = parse_reference(text)
    snapshot, commit, run, _ = _download_run(ref, ref.stage or "best")
    pinned = HubRef(ref.repo_id, commit, ref.stage)
    return (snapshot / ref.stage if ref.stage else snapshot), str(pinned)


def _copy_snapshot(snapshot: Path, staged: Path, wanted, ref: HubRef, out: Path) -> None:
    """Copy the snapshot's files that ``wanted(relative path)`` accepts into the staging folder."""
    for path in sorted(snapshot.rglob("*")):
        rel = path.relative_to(snapshot)
        if not path.is_file() or not wanted(rel):
            continue
        target = (staged / rel).resolve()
        if staged.resolve() not in target.parents:  # never write outside the output folder
            raise CheckpointError(f"{ref}: file {rel.as_posix()!r} would land outside {out}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # follows the cache's symlinks: real files in the run folder


def _is_auto_answer(ref: HubRef) -> bool:
    """Whether the repository holds an ``hfstage auto`` answer (auto.json at its root): it is pulled whole."""
    from huggingface_hub import try_to_load_from_cache

    if offline():
        return isinstance(try_to_load_from_cache(ref.repo_id, AUTO_JSON, revision=ref.revision), str)
    api = hub_api()
    return bool(call("read files of", ref.repo_id, api.file_exists, ref.repo_id, AUTO_JSON, revision=ref.revision))


def _pull_auto_answer(ref: HubRef, out: Path, stage: str | None) -> Path:
    from huggingface_hub import snapshot_download

    if stage:
        raise ConfigError(f"--stage {stage}: {ref.repo_id} holds an hfstage auto answer, pulled whole; leave --stage out")
    snapshot = Path(call("download", ref.repo_id, snapshot_download, ref.repo_id, revision=ref.revision))
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out)
    _copy_snapshot(snapshot, staged, lambda rel: True, ref, out)
    publish_dir(staged, out)
    logger.info("pulled the hfstage auto answer %s@%s into %s", ref.repo_id, snapshot.name[:12], out)
    return out


def pull(name: str, out: str | Path, stage: str | None = None, revision: str | None = None) -> Path:
    """Download a pushed run (or one stage) into ``out`` in the local run layout; a pushed ``hfstage auto`` answer
    into an auto folder that ``hfstage predict``/``evaluate`` answer from."""
    ref = parse_reference(name)
    if revision:
        ref.revision = revision
    which = stage or ref.stage or "all"
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out}: exists and is not an empty folder")
    if _is_auto_answer(ref):
        return _pull_auto_answer(ref, out, stage or ref.stage)
    snapshot, commit, run, chosen = _download_run(ref, which)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out)
    keep = {s.dir for s in chosen}
    _copy_snapshot(snapshot, staged, lambda rel: rel.as_posix() in ROOT_FILES or rel.parts[0] in keep, ref, out)
    run.stages = [s for s in run.stages if s.dir in keep]
    run.config["output_dir"] = str(out)
    run.pulled_from = {"repo_id": ref.repo_id, "revision": ref.revision or "main", "commit": commit}
    if run.best_stage_dir not in keep:
        best = max(chosen, key=lambda s: s.stage_index)
        run.best_stage, run.best_stage_dir = best.stage_index, best.dir
    RunDir(staged).write(run)
    publish_dir(staged, out)
    logger.info("pulled %s@%s (%s) into %s", ref.repo_id, commit[:12], ", ".join(sorted(keep)), out)
    return out
