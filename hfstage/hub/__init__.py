"""The Hugging Face Hub as a home for runs: ``hfstage push``, ``hfstage pull`` and ``hf://`` references.

This package is the only code that talks to ``huggingface_hub``:

- ``refs.py``: ``hf://OWNER/NAME[@REVISION][/stage_<N>_<name>]`` references and stage tags;
- ``client.py``: every call with retries and one clear error, and "commit only what changed";
- ``push.py``: a run or some of its stages, with the model card;
- ``pull.py``: a pushed run into the local run layout, and references resolved to the Hub cache;
- ``callback.py``: ``push_to_hub: true``, each stage pushed in the background while training goes on.
"""

from hfstage.hub.callback import HubPushCallback
from hfstage.hub.client import require_token
from hfstage.hub.pull import pull, resolve
from hfstage.hub.push import push
from hfstage.hub.refs import HubRef, is_reference, parse_reference, stage_tag

__all__ = ["HubPushCallback", "HubRef", "is_reference", "parse_reference", "pull", "push", "require_token", "resolve",
           "stage_tag"]
