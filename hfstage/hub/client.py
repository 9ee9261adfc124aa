"""The one client of the Hub: every call goes through ``call`` (retries, one clear error), and uploads go
through ``commit_changed`` (only files whose content differs from the Hub's copy are committed, so a
re-push of an unchanged run makes no commit and an interrupted push is finished by running it again).

The token comes from ``HF_TOKEN`` or ``hf auth login``; hfstage never writes it anywhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from hfstage.errors import CheckpointError, ConfigError, HubError, first_line
from hfstage.hub.refs import stage_tag

logger = logging.getLogger("hfstage")

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _scrub(text: str) -> str:
    token = _token()
    return text.replace(token, "***") if token else text


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _http_errors(name: str) -> tuple[type, ...]:
    """``name`` (TransportError, ConnectError) of the HTTP libraries installed: huggingface_hub's 2.x releases
    use httpx2, its 1.x releases httpx, and both can be installed side by side."""
    import importlib

    found = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _is_network_error(exc: Exception) -> bool:
    return isinstance(exc, (*_http_errors("TransportError"), TimeoutError, ConnectionError))


def _is_unreachable(exc: Exception) -> bool:
    """No connection at all (DNS failure, connection refused): retrying will not help, so fail at once.
    Timeouts, dropped connections, 429 and 5xx are transient and retried."""
    refused = (*_http_errors("ConnectError"), ConnectionRefusedError)
    seen, link = set(), exc
    while link is not None and id(link) not in seen:  # huggingface_hub wraps the transport error
        seen.add(id(link))
        if isinstance(link, refused) or (
                isinstance(link, OSError) and "Name or service not known" in str(link)):
            return True
        link = link.__cause__ or link.__context__
    return False


def offline() -> bool:
    """``HF_HUB_OFFLINE=1``: hf:// references resolve from the Hub cache and nothing is requested."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _describe(exc: Exception, what: str, repo_id: str) -> str:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = _status(exc)
    if isinstance(exc, LocalEntryNotFoundError) and offline():
        from huggingface_hub import constants

        return (f"{what} {repo_id}: HF_HUB_OFFLINE is set and this is not in the Hub cache ({constants.HF_HUB_CACHE}); "
                "fetch it once with access to the Hub (`hfstage pull`, `hfstage evaluate hf://...`), or unset HF_HUB_OFFLINE")
    if isinstance(exc, LocalEntryNotFoundError):  # (an EntryNotFoundError too) nothing cached, no connection
        from huggingface_hub import constants

        return f"{what} {repo_id}: could not reach the Hub at {constants.ENDPOINT} ({type(exc).__name__})"
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
    return f"{what} {repo_id}: " + (f"HTTP {status}: " if status else "") + first_line(exc)


def call(what: str, repo_id: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; timeouts, 429 and 5xx are retried with exponential backoff
    (``HFSTAGE_HUB_RETRIES`` tries after the first, default 4, from ``HFSTAGE_HUB_BACKOFF`` s, default 1),
    then -- like every other failure, and at once when the endpoint cannot be reached at all (DNS, connection
    refused) -- reported as one HubError that names the operation, the repository and the endpoint."""
    retries = int(os.environ.get("HFSTAGE_HUB_RETRIES", "4"))
    delay = float(os.environ.get("HFSTAGE_HUB_BACKOFF", "1.0"))
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except (HubError, CheckpointError, ConfigError):
            raise
        except Exception as exc:  # huggingface_hub and httpx errors: classified below
            transient = _status(exc) in TRANSIENT_STATUS or (_is_network_error(exc) and not _is_unreachable(exc))
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


def hub_api():
    from huggingface_hub import HfApi

    return HfApi()


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

    entries = call("list files of", repo_id, lambda: list(hub_api().list_repo_tree(repo_id, revision=revision, recursive=True)))
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


def commit_to_repo(repo_id: str, files: dict[str, Path | bytes], message: str, what: str, private: bool = False,
                   revision: str | None = None, create_pr: bool = False) -> tuple[str, list[str], str | None]:
    """A push: refuse without a token, create the repository (and the branch ``revision``) when missing, and commit
    the files whose content differs from the Hub's. Returns (head commit, changed paths, pull-request URL or None)."""
    require_token(repo_id, what, private)
    api = hub_api()
    call("create repository", repo_id, api.create_repo, repo_id, private=private, exist_ok=True)
    if revision and not create_pr:
        call("create branch", repo_id, api.create_branch, repo_id, branch=revision, exist_ok=True)
    return commit_changed(api, repo_id, files, message, revision, create_pr)


def tag_stages(api, repo_id: str, stage_dirs: list[str], changed: list[str], head: str) -> list[str]:
    """Tag every pushed stage at ``head``; a tag moves only when that stage's files changed."""
    refs = call("list tags of", repo_id, api.list_repo_refs, repo_id)
    existing = {t.name for t in refs.tags}
    made = []
    for folder in stage_dirs:
        tag = stage_tag(folder)
        moved = any(p.startswith(folder + "/") for p in changed)
        if tag in existing and not moved:
            continue
        if tag in existing:
            call("move tag of", repo_id, api.delete_tag, repo_id, tag=tag)
        call("tag", repo_id, api.create_tag, repo_id, tag=tag, revision=head, tag_message=f"hfstage {folder}")
        made.append(tag)
    return made
