"""The Hugging Face Hub as a home for runs: ``hfstage push``, ``hfstage pull`` and ``hf://`` references.

This is the one module that talks to ``huggingface_hub``. A pushed run looks like this::

    README.md                  model card: YAML metadata (model-index of every stage) + stages table
    run.json, config.yaml      the run record and its resolved config
    config.json, model.safetensors   the best stage's model, so AutoModel.from_pretrained(repo) works
    stage_<N>_<name>/          every pushed stage: config.json, model.safetensors, stage.json (+ eval/)

and every pushed stage gets a tag ``stage-<N>-<name>`` pointing at the commit that holds it, so
``from_pretrained(repo, subfolder="stage_2_x", revision="stage-2-x")`` pins a stage. Only files whose
content differs from the Hub's copy are uploaded: re-pushing an unchanged run makes no commit, and an
interrupted push is finished by running it again.

References: ``hf://OWNER/NAME[@REVISION][/stage_<N>_<name>]`` (a revision holding ``/`` is written
URL-quoted, ``refs%2Fpr%2F1``). They are downloaded through ``huggingface_hub``'s cache and used like
local folders. The token comes from ``HF_TOKEN`` or ``hf auth login``; hfstage never writes it anywhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import yaml

from hfstage.callbacks import StageCallback
from hfstage.checkpoint import (
    atomic_write_json,
    publish_dir,
    read_json,
    read_run_record,
    staging_dir,
)
from hfstage.errors import CheckpointError, ConfigError, HubError

logger = logging.getLogger("hfstage")

PREFIX = "hf://"
STAGE_DIR_RE = re.compile(r"^stage_(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)$")
REPO_ID_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")
ROOT_FILES = ("README.md", "run.json", "config.yaml")
STAGE_FILES = ("config.json", "model.safetensors", "stage.json")
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


def stage_tag(stage_dir: str) -> str:
    """``stage_2_finetune`` -> ``stage-2-finetune`` (the revision that pins that stage)."""
    return stage_dir.replace("_", "-", 2)


# --------------------------------------------------------------------------------------------------
# References


@dataclass
class HubRef:
    repo_id: str
    revision: str | None = None
    stage: str | None = None  # a stage folder name, or None for the whole run / its best stage

    def __str__(self) -> str:
        rev = f"@{self.revision.replace('/', '%2F')}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{rev}" + (f"/{self.stage}" if self.stage else "")


def is_reference(text: str | os.PathLike) -> bool:
    return str(text).startswith(PREFIX)


def parse_reference(text: str) -> HubRef:
    """``hf://owner/name@rev/stage_2_x`` (or a bare ``owner/name``) -> HubRef."""
    body = text[len(PREFIX):] if is_reference(text) else text
    parts = [p for p in body.split("/") if p]
    stage = parts.pop() if len(parts) > 1 and STAGE_DIR_RE.match(parts[-1]) else None
    repo, _, revision = "/".join(parts).partition("@")
    if not REPO_ID_RE.match(repo) or ".." in repo:
        raise ConfigError(f"{text}: not a Hub reference; expected hf://OWNER/NAME[@REVISION][/stage_<N>_<name>]")
    return HubRef(repo, unquote(revision) or None, stage)


# --------------------------------------------------------------------------------------------------
# Calls with retries and clear errors


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _scrub(text: str) -> str:
    token = _token()
    return text.replace(token, "***") if token else text


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_network_error(exc: Exception) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.TransportError, TimeoutError, ConnectionError))


def _describe(exc: Exception, what: str, repo_id: str) -> str:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = _status(exc)
    if isinstance(exc, RevisionNotFoundError):
        return f"{what} {repo_id}: revision not found on the Hub"
    if isinstance(exc, EntryNotFoundError):
        return f"{what} {repo_id}: file not found on the Hub (is this an hfstage run?)"
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return (f"{what} {repo_id}: repository not found (or it is private and no accepted token was sent; "
                "set HF_TOKEN or run `hf auth login`)")
    if status == 401:
        return f"{what} {repo_id}: the Hub refused the credentials (HTTP 401); set HF_TOKEN or run `hf auth login`"
    if status == 403:
        return f"{what} {repo_id}: the token may not do this (HTTP 403); it needs write access to the repository"
    if isinstance(exc, LocalEntryNotFoundError) or _is_network_error(exc):
        from huggingface_hub import constants

        return f"{what} {repo_id}: could not reach the Hub at {constants.ENDPOINT} ({type(exc).__name__})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{what} {repo_id}: " + (f"HTTP {status}: " if status else "") + first


def call(what: str, repo_id: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; timeouts, 429 and 5xx are retried with exponential backoff
    (``HFSTAGE_HUB_RETRIES`` tries after the first, default 4, from ``HFSTAGE_HUB_BACKOFF`` s, default 1),
    then -- like every other failure -- reported as one HubError that names the operation and repository."""
    retries = int(os.environ.get("HFSTAGE_HUB_RETRIES", "4"))
    delay = float(os.environ.get("HFSTAGE_HUB_BACKOFF", "1.0"))
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except (HubError, CheckpointError, ConfigError):
            raise
        except Exception as exc:  # huggingface_hub and httpx errors: classified below
            transient = _status(exc) in TRANSIENT_STATUS or _is_network_error(exc)
            if transient and attempt < retries:
                wait = delay * 2 ** attempt
                logger.warning("%s %s failed (%s); retry %d/%d in %.1f s", what, repo_id,
                               _scrub(_describe(exc, "", "").strip(": ")), attempt + 1, retries, wait)
                time.sleep(wait)
                continue
            tries = f" after {attempt + 1} tries" if attempt else ""
            raise HubError(_scrub(_describe(exc, what, repo_id)) + tries) from None


def require_token(repo_id: str, what: str, private: bool = False) -> None:
    """Writing needs a token; refuse before anything is done when there is none."""
    if _token() is None:
        kind = "a private repository" if private else "the Hub"
        raise HubError(f"{what}: writing to {kind} ({repo_id}) needs a token: set HF_TOKEN or run `hf auth login`")


def _api():
    from huggingface_hub import HfApi

    return HfApi()


# --------------------------------------------------------------------------------------------------
# Push


def _finished_stages(run_dir: Path, run: dict) -> list[dict]:
    stages = [s for s in run.get("stages", []) if s.get("status") == "finished"]
    for s in stages:
        for name in STAGE_FILES:
            if not (run_dir / s["dir"] / name).is_file():
                raise CheckpointError(f"{run_dir / s['dir']}: missing {name}; the run says this stage finished")
    return stages


def select_stages(run: dict, stages: list[dict], which: str | None, where: str) -> list[dict]:
    """``all`` (or None), ``best``, a stage number, a stage name or a stage folder name."""
    if which in (None, "all"):
        return stages
    if which == "best":
        chosen = [s for s in stages if s["stage_index"] == run.get("best_stage")]
    else:
        chosen = [s for s in stages if which in (str(s["stage_index"]), s["stage_name"], s["dir"])]
    if not chosen:
        names = ", ".join(s["dir"] for s in stages) or "none"
        raise CheckpointError(f"{where}: --stage {which!r} is not a finished stage (finished: {names})")
    return chosen


def _load_run(run_dir: Path) -> dict:
    return read_run_record(run_dir / "run.json")


def push_files(run_dir: Path, run: dict, chosen: list[dict], repo_id: str) -> dict[str, Path | bytes]:
    """path in the repository -> local file (or generated bytes) for a push of ``chosen`` stages."""
    files: dict[str, Path | bytes] = {
        "README.md": model_card(run_dir, run, repo_id).encode(),
        "run.json": (run_dir / "run.json").read_bytes(),
        "config.yaml": yaml.safe_dump(run["config"], sort_keys=False).encode(),
    }
    for s in chosen:
        for path in sorted((run_dir / s["dir"]).rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(run_dir).parts):
                files[path.relative_to(run_dir).as_posix()] = path
        if s["stage_index"] == run.get("best_stage"):  # the best model at the root too
            for path in sorted((run_dir / s["dir"]).iterdir()):
                if path.is_file() and path.name != "stage.json" and not path.name.startswith("."):
                    files[path.name] = path
    return files


def _sha256(src: Path | bytes) -> str:
    if isinstance(src, bytes):
        return hashlib.sha256(src).hexdigest()
    h = hashlib.sha256()
    with open(src, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _git_sha1(src: Path | bytes) -> str:
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def remote_files(repo_id: str, revision: str | None) -> dict[str, tuple[str | None, str | None]]:
    """path -> (git blob id, LFS sha256) of every file at ``revision``."""
    from huggingface_hub.hf_api import RepoFile

    entries = call("list files of", repo_id, lambda: list(_api().list_repo_tree(repo_id, revision=revision, recursive=True)))
    return {e.path: (e.blob_id, e.lfs.sha256 if e.lfs else None) for e in entries if isinstance(e, RepoFile)}


def changed_files(files: dict[str, Path | bytes], remote: dict) -> list[str]:
    """The files whose content differs from (or is missing on) the Hub."""
    changed = []
    for path, src in files.items():
        blob, lfs = remote.get(path, (None, None))
        same = (lfs == _sha256(src)) if lfs else (blob is not None and blob == _git_sha1(src))
        if not same:
            changed.append(path)
    return changed


def commit_changed(api, repo_id: str, files: dict[str, Path | bytes], message: str, revision: str | None = None,
                   create_pr: bool = False) -> tuple[str, list[str], str | None]:
    """Commit the files whose content differs from the Hub's (none: no commit).
    Returns (head commit, changed paths, pull-request URL or None)."""
    from huggingface_hub import CommitOperationAdd

    changed = changed_files(files, remote_files(repo_id, revision))
    if not changed:
        return call("read revision of", repo_id, api.repo_info, repo_id, revision=revision).sha, changed, None
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=files[p]) for p in changed]
    info = call("commit to", repo_id, api.create_commit, repo_id, operations, commit_message=message,
                revision=revision, create_pr=create_pr)
    return info.oid, changed, info.pr_url


def push(run_dir: str | Path, repo_id: str, stage: str | None = "all", private: bool = False,
         revision: str | None = None, create_pr: bool = False, commit_message: str | None = None) -> dict:
    """Push a run (or some of its stages) to ``repo_id``; returns what was uploaded and tagged."""
    run_dir = Path(run_dir)
    if is_reference(repo_id) or not REPO_ID_RE.match(repo_id):
        raise ConfigError(f"--repo-id {repo_id!r}: expected OWNER/NAME")
    run = _load_run(run_dir)
    chosen = select_stages(run, _finished_stages(run_dir, run), stage, str(run_dir))
    if not chosen:
        raise CheckpointError(f"{run_dir}: no finished stage to push")
    require_token(repo_id, f"pushing {run_dir}", private)
    api = _api()
    call("create repository", repo_id, api.create_repo, repo_id, private=private, exist_ok=True)
    if revision and not create_pr:
        call("create branch", repo_id, api.create_branch, repo_id, branch=revision, exist_ok=True)
    files = push_files(run_dir, run, chosen, repo_id)
    message = commit_message or f"hfstage: {', '.join(s['dir'] for s in chosen)}"
    head, changed, pr_url = commit_changed(api, repo_id, files, message, revision, create_pr)
    tags = [] if create_pr else _tag_stages(api, repo_id, chosen, changed, head)
    logger.info("pushed %s to %s: %d file(s) uploaded, %d unchanged%s", run_dir, repo_id, len(changed),
                len(files) - len(changed), f"; pull request {pr_url}" if pr_url else "")
    return {"repo_id": repo_id, "commit": head, "uploaded": changed, "unchanged": len(files) - len(changed),
            "stages": [s["dir"] for s in chosen], "tags": tags, "pr_url": pr_url}


def _tag_stages(api, repo_id: str, chosen: list[dict], changed: list[str], head: str) -> list[str]:
    """Tag every pushed stage at ``head``; a tag moves only when that stage's files changed."""
    refs = call("list tags of", repo_id, api.list_repo_refs, repo_id)
    existing = {t.name for t in refs.tags}
    made = []
    for s in chosen:
        tag = stage_tag(s["dir"])
        moved = any(p.startswith(s["dir"] + "/") for p in changed)
        if tag in existing and not moved:
            continue
        if tag in existing:
            call("move tag of", repo_id, api.delete_tag, repo_id, tag=tag)
        call("tag", repo_id, api.create_tag, repo_id, tag=tag, revision=head, tag_message=f"hfstage {s['dir']}")
        made.append(tag)
    return made


def model_card(run_dir: Path, run: dict, repo_id: str) -> str:
    """README.md: YAML metadata (library, tags, data set, base model, model-index) and the stages table."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = run["config"]
    task = cfg["task"]
    data_name = Path(cfg["data"]["path"]).name or "data"
    results, rows = [], ["| stage | kept | eval loss | eval accuracy | test accuracy |", "|---|---|---|---|---|"]
    for s in run.get("stages", []):
        if s.get("status") != "finished" or not (run_dir / s["dir"] / "stage.json").is_file():
            continue
        record = read_json(run_dir / s["dir"] / "stage.json")
        for split, prefix, metrics in (("validation", "eval_", record.get("metrics", {})),
                                       ("test", "test_", record.get("test_metrics", {}))):
            for key, value in metrics.items():
                name = key[len(prefix):]
                if name in ("accuracy", "f1", "precision", "recall", "loss") and isinstance(value, (int, float)):
                    results.append(EvalResult(task_type=task.replace("_", "-"), dataset_type=data_name,
                                              dataset_name=data_name, dataset_split=split, metric_type=name,
                                              metric_value=round(float(value), 6),
                                              metric_name=f"{s['dir']} {split} {name}"))
        fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        best = " (best)" if s["stage_index"] == run.get("best_stage") else ""
        rows.append(f"| `{s['dir']}`{best} | {'yes' if record.get('kept') else 'no'} | "
                    f"{fmt(record.get('metrics', {}).get('eval_loss'))} | "
                    f"{fmt(record.get('metrics', {}).get('eval_accuracy'))} | "
                    f"{fmt(record.get('test_metrics', {}).get('test_accuracy'))} |")
    base = [s.get("init_from") for s in cfg.get("stages", []) if is_reference(str(s.get("init_from") or ""))]
    data = ModelCardData(library_name="hfstage", tags=["hfstage", "staged-training", task, str(cfg["model"].get("type"))],
                         datasets=[data_name], base_model=parse_reference(base[0]).repo_id if base else None,
                         model_name=repo_id, eval_results=results or None)
    best = run.get("best_stage_dir")
    config_file = run.get("config_file") or "config.yaml"
    body = f"""
# {repo_id}

A model trained with hfstage through a curriculum of
{len(cfg.get('stages', []))} stages (task `{task}`, model `{cfg['model'].get('type')}`, data `{data_name}`).
The repository root holds the best stage{f" (`{best}`)" if best else ""}; every pushed stage is in its own
folder and tagged `stage-<N>-<name>`.

## Stages

{chr(10).join(rows)}

## Use

```python
import hfstage  # registers hfstage's model classes with the Auto classes
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo_id}")  # the best stage
stage = AutoModel.from_pretrained("{repo_id}", subfolder="{best or 'stage_1_<name>'}")
```

or `hfstage evaluate hf://{repo_id}/{best or 'stage_<N>_<name>'} --data DIR`,
`hfstage pull {repo_id} --out DIR`.

## Reproduce

`config.yaml` here is the resolved config (`{config_file}` when it was trained):

```bash
accelerate launch hfstage/train.py --config config.yaml
```
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


# --------------------------------------------------------------------------------------------------
# Pull and references


def _download_run(ref: HubRef, which: str | None) -> tuple[Path, str, dict, list[dict]]:
    """Download run.json and the chosen stages into the Hub cache: (snapshot folder, commit, run, stages)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    api = _api()
    commit = call("read revision of", ref.repo_id, api.repo_info, ref.repo_id, revision=ref.revision).sha
    run_json = call("download run.json of", ref.repo_id, hf_hub_download, ref.repo_id, "run.json", revision=commit)
    run = read_run_record(run_json)
    finished = [s for s in run.get("stages", []) if s.get("status") == "finished"]
    chosen = select_stages(run, finished, which, str(ref))
    patterns = [*ROOT_FILES] + [f"{s['dir']}/*" for s in chosen]
    snapshot = Path(call("download", ref.repo_id, snapshot_download, ref.repo_id, revision=commit,
                         allow_patterns=patterns))
    present = []
    for s in chosen:
        missing = [n for n in STAGE_FILES if not (snapshot / s["dir"] / n).is_file()]
        if missing and which in (None, "all"):
            continue  # a stage that was never pushed
        if missing:
            raise CheckpointError(f"{ref}: {s['dir']} on the Hub lacks {', '.join(missing)}")
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


def pull(name: str, out: str | Path, stage: str | None = None, revision: str | None = None) -> Path:
    """Download a pushed run (or one stage) into ``out`` in the local run layout."""
    ref = parse_reference(name)
    if revision:
        ref.revision = revision
    which = stage or ref.stage or "all"
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out}: exists and is not an empty folder")
    snapshot, commit, run, chosen = _download_run(ref, which)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out)
    keep = {s["dir"] for s in chosen}
    for path in sorted(snapshot.rglob("*")):
        rel = path.relative_to(snapshot)
        if not path.is_file() or not (rel.as_posix() in ROOT_FILES or rel.parts[0] in keep):
            continue
        target = (staged / rel).resolve()
        if staged.resolve() not in target.parents:  # never write outside the output folder
            raise CheckpointError(f"{ref}: file {rel.as_posix()!r} would land outside {out}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # follows the cache's symlinks: real files in the run folder
    run["stages"] = [s for s in run["stages"] if s["dir"] in keep]
    run["config"]["output_dir"] = str(out)
    run["pulled_from"] = {"repo_id": ref.repo_id, "revision": ref.revision or "main", "commit": commit}
    if run.get("best_stage_dir") not in keep:
        best = max(chosen, key=lambda s: s["stage_index"])
        run["best_stage"], run["best_stage_dir"] = best["stage_index"], best["dir"]
    atomic_write_json(staged / "run.json", run)
    publish_dir(staged, out)
    logger.info("pulled %s@%s (%s) into %s", ref.repo_id, commit[:12], ", ".join(sorted(keep)), out)
    return out


# --------------------------------------------------------------------------------------------------
# Push during training


class HubPushCallback(StageCallback):
    """``push_to_hub: true``: each stage is pushed in the background as soon as its files are written
    (training goes on meanwhile); ``finish()`` pushes the whole run (best model at the root, card,
    run.json) and waits for every push. Pushes are ordered and only upload what changed."""

    def __init__(self, run_dir: str | Path, repo_id: str, private: bool = False):
        self.run_dir, self.repo_id, self.private = Path(run_dir), repo_id, private
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfstage-push")
        self.futures: list[Future] = []
        self.lock = threading.Lock()

    def on_stage_end(self, stage_index: int, stage, run_config, record: dict, **kwargs):
        from hfstage.curriculum import stage_dirname

        folder = stage_dirname(stage_index, stage.name)
        self.futures.append(self.pool.submit(self._push_stage, folder))

    def _push_stage(self, folder: str) -> dict:
        """A stage folder alone (run.json is updated by the final push): its files and its tag."""
        api = _api()
        call("create repository", self.repo_id, api.create_repo, self.repo_id, private=self.private, exist_ok=True)
        files = {p.relative_to(self.run_dir).as_posix(): p for p in sorted((self.run_dir / folder).rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
        head, changed, _ = commit_changed(api, self.repo_id, files, f"hfstage: {folder}")
        tags = _tag_stages(api, self.repo_id, [{"dir": folder}], changed, head)
        logger.info("pushed %s to %s (%d file(s))", folder, self.repo_id, len(changed))
        return {"stage": folder, "tags": tags}

    def finish(self, final_push: bool = True) -> dict | None:
        """Wait for the stage pushes; then push the whole run. Raises the first push error."""
        try:
            for future in self.futures:
                future.result()
            return push(self.run_dir, self.repo_id, "all", private=self.private) if final_push else None
        finally:
            self.pool.shutdown(wait=True)
