"""``push_to_hub: true``: the curriculum's stages pushed to the Hub while training goes on."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from hfstage.callbacks import StageCallback
from hfstage.hub.client import call, commit_changed, hub_api, tag_stages
from hfstage.hub.push import push

logger = logging.getLogger("hfstage")


class HubPushCallback(StageCallback):
    """Each stage is pushed in the background as soon as its files are written (training goes on meanwhile);
    ``finish()`` pushes the whole run (best model at the root, card, run.json) and waits for every push.
    Pushes are ordered and only upload what changed."""

    def __init__(self, run_dir: str | Path, repo_id: str, private: bool = False):
        self.run_dir, self.repo_id, self.private = Path(run_dir), repo_id, private
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfstage-push")
        self.futures: list[Future] = []

    def on_stage_end(self, stage_index: int, stage, run_config, record, **kwargs):
        self.futures.append(self.pool.submit(self._push_stage, record.dir))

    def _push_stage(self, folder: str) -> dict:
        """A stage folder alone (run.json is updated by the final push): its files and its tag."""
        api = hub_api()
        call("create repository", self.repo_id, api.create_repo, self.repo_id, private=self.private, exist_ok=True)
        files = {p.relative_to(self.run_dir).as_posix(): p for p in sorted((self.run_dir / folder).rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
        head, changed, _ = commit_changed(api, self.repo_id, files, f"hfstage: {folder}")
        tags = tag_stages(api, self.repo_id, [folder], changed, head)
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
