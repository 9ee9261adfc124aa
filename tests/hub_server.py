"""A small Hugging Face Hub-compatible HTTP server for the tests (stdlib only, in memory).

`huggingface_hub` has no local server to test against offline, so this one implements the endpoints
it calls for what hfstage does: whoami, create_repo, preupload, NDJSON commit (regular files, base64),
repo/revision info, tree listing, paths-info, tags, branches, refs, pull-request refs, YAML
validation and file download (HEAD + GET on ``/{repo}/resolve/{revision}/{path}``).

Writes and private reads need ``Authorization: Bearer <token>``. ``fail(kind, status, times)``
makes the next requests of one kind (``commit``, ``preupload``, ``resolve`` ...) answer an error, to
test retries. Nothing here is a mock of hfstage: the real ``huggingface_hub`` client talks HTTP to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, dict] = field(default_factory=dict)  # oid -> {"parent", "files": {path: bytes}, "message"}
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)  # head commit per pull request (refs/pr/<i+1>)

    def commit(self, parent: str | None, files: dict[str, bytes], message: str) -> str:
        oid = hashlib.sha1(f"{self.repo_id}{parent}{time.time_ns()}{len(self.commits)}".encode()).hexdigest()
        self.commits[oid] = {"parent": parent, "files": files, "message": message}
        return oid

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if revision.startswith("refs/pr/") and revision[8:].isdigit() and 0 < int(revision[8:]) <= len(self.prs):
            return self.prs[int(revision[8:]) - 1]
        if revision.startswith("refs/heads/"):
            return self.branches.get(revision[11:])
        return revision if revision in self.commits else None


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-request is expected
            super().handle_error(request, client_address)


class HubServer:
    """``with HubServer(token) as hub: hub.url``; state lives in ``hub.repos``."""

    def __init__(self, token: str, port: int = 0):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.faults: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, kind, repo_id)
        self.delay: dict[str, float] = {}  # kind -> seconds each such request takes (to be killed mid-way)
        self.in_flight: dict[str, int] = {}  # kind -> requests being answered now
        self.lock = threading.RLock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, kind: str, status: int = 500, times: int = 1000) -> None:
        """The next ``times`` requests of ``kind`` answer ``status``."""
        self.faults[kind] = [status] * times

    def commits_made(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)

    def count(self, kind: str) -> int:
        return sum(1 for _, k, _ in self.requests if k == kind)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None, head=False):
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, head=False):
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else
                   {"X-Error-Message": message}, head=head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body() if method in ("POST", "DELETE") else b""
        try:
            route = self._route(method, parts)
        except LookupError:
            return self._error(404, f"no route for {method} {url.path}")
        kind, repo_id, rest = route
        with self.hub.lock:
            self.hub.in_flight[kind] = self.hub.in_flight.get(kind, 0) + 1
        try:
            if self.hub.delay.get(kind):
                time.sleep(self.hub.delay[kind])
            with self.hub.lock:
                self.hub.requests.append((method, kind, repo_id or ""))
                faults = self.hub.faults.get(kind)
                if faults:
                    return self._error(faults.pop(0), f"injected failure of {kind}", head=method == "HEAD")
                return getattr(self, f"_{kind}")(method, repo_id, rest, query, body)
        finally:
            with self.hub.lock:
                self.hub.in_flight[kind] -= 1

    @staticmethod
    def _route(method: str, parts: list[str]):
        if parts[:2] == ["api", "whoami-v2"]:
            return "whoami", None, []
        if parts[:3] == ["api", "repos", "create"]:
            return "create", None, []
        if parts[:2] == ["api", "validate-yaml"]:
            return "validate", None, []
        if parts[:2] in (["api", "models"], ["api", "datasets"]) and len(parts) >= 4:
            # dataset repositories live beside model repositories under "datasets/OWNER/NAME"
            repo_id = ("datasets/" if parts[1] == "datasets" else "") + f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            if not rest:
                return "info", repo_id, ["main"]
            names = {"revision": "info", "tree": "tree", "paths-info": "paths_info", "preupload": "preupload",
                     "commit": "commit", "tag": "tag", "branch": "branch", "refs": "refs"}
            if rest[0] in names:
                return names[rest[0]], repo_id, rest[1:]
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            return "resolve", f"datasets/{parts[1]}/{parts[2]}", parts[4:]
        if len(parts) >= 5 and parts[2] == "resolve":
            return "resolve", f"{parts[0]}/{parts[1]}", parts[3:]
        raise LookupError

    def _repo(self, repo_id: str, write: bool, head=False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if write and not self._authorized():
            self._error(401, "Invalid credentials in Authorization header", head=head)
            return None
        if repo is None or (repo.private and not self._authorized()):
            self._error(404 if self._authorized() else 401, "Repository not found", "RepoNotFound", head=head)
            return None
        return repo

    def _revision(self, repo: Repo, revision: str, head=False) -> str | None:
        oid = repo.resolve(revision)
        if oid is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return oid

    # -- endpoints --------------------------------------------------------------------------------
    def _whoami(self, method, repo_id, rest, query, body):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}})

    def _create(self, method, repo_id, rest, query, body):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        req = json.loads(body or b"{}")
        repo_id = ("datasets/" if req.get("type") == "dataset" else "") + f"{req.get('organization') or USER}/{req['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(repo_id, bool(req.get("private")) or req.get("visibility") == "private")
        repo.branches["main"] = repo.commit(None, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                                            "initial commit")
        self.hub.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id})

    def _validate(self, method, repo_id, rest, query, body):
        self._send(200, {"errors": [], "warnings": []})

    def _info(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=False)
        if repo is None:
            return
        oid = self._revision(repo, "/".join(rest) or "main")
        if oid is None:
            return
        files = repo.commits[oid]["files"]
        self._send(200, {"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private, "tags": [],
                         "siblings": [{"rfilename": p} for p in sorted(files)], "downloads": 0, "likes": 0,
                         "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})

    @staticmethod
    def _entry(path: str, data: bytes) -> dict:
        return {"type": "file", "oid": git_sha1(data), "size": len(data), "path": path}

    def _tree(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=False)
        if repo is None or (oid := self._revision(repo, rest[0] if rest else "main")) is None:
            return
        prefix = "/".join(rest[1:]).strip("/")
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries, dirs = [], set()
        for path, data in sorted(repo.commits[oid]["files"].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            tail = path[len(prefix) + 1:] if prefix else path
            segments = tail.split("/")
            for i in range(1, len(segments) if recursive else min(2, len(segments))):
                dirs.add("/".join(([prefix] if prefix else []) + segments[:i]))
            if recursive or len(segments) == 1:
                entries.append(self._entry(path, data))
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        self._send(200, entries)

    def _paths_info(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=False)
        if repo is None or (oid := self._revision(repo, rest[0] if rest else "main")) is None:
            return
        try:
            paths = json.loads(body)["paths"]
        except (ValueError, KeyError):
            paths = parse_qs(body.decode()).get("paths", [])
        files = repo.commits[oid]["files"]
        self._send(200, [self._entry(p, files[p]) for p in paths if p in files])

    def _preupload(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        oid = repo.resolve(rest[0]) if rest else None
        files = repo.commits[oid]["files"] if oid else {}
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                   "oid": git_sha1(files[f["path"]]) if f["path"] in files else None}
                  for f in json.loads(body)["files"]]
        self._send(200, {"files": answer, "commitOid": oid})

    def _commit(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        revision = "/".join(rest) or "main"
        base = self._revision(repo, revision)
        if base is None:
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        files = dict(repo.commits[base]["files"])
        message = ""
        for line in lines:
            value = line["value"]
            if line["key"] == "header":
                message = value.get("summary", "")
            elif line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self._error(400, f"unsupported commit operation {line['key']}")
        oid = repo.commit(base, files, message)
        answer = {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
        if query.get("create_pr") == "1":
            repo.prs.append(oid)
            answer["pullRequestUrl"] = f"{self.hub.url}/{repo_id}/discussions/{len(repo.prs)}"
        elif revision in repo.branches or revision.startswith("refs/heads/"):
            repo.branches[revision.removeprefix("refs/heads/")] = oid
        else:
            return self._error(400, f"cannot commit to {revision}: not a branch")
        self._send(200, answer)

    def _tag(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        if method == "DELETE":
            if repo.tags.pop(rest[0], None) is None:
                return self._error(404, f"tag {rest[0]} not found", "RevisionNotFound")
            return self._send(200, {})
        oid = self._revision(repo, rest[0] if rest else "main")
        if oid is None:
            return
        tag = json.loads(body)["tag"]
        if tag in repo.tags:
            return self._error(409, f"tag {tag} already exists")
        repo.tags[tag] = oid
        self._send(200, {})

    def _branch(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        name = "/".join(rest)
        if method == "DELETE":
            repo.branches.pop(name, None)
            return self._send(200, {})
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        oid = self._revision(repo, start)
        if oid is None:
            return
        if name in repo.branches:
            return self._error(409, f"branch {name} already exists")
        repo.branches[name] = oid
        self._send(200, {})

    def _refs(self, method, repo_id, rest, query, body):
        repo = self._repo(repo_id, write=False)
        if repo is None:
            return
        answer = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
            "converts": [],
        }
        if query.get("include_prs"):
            answer["pullRequests"] = [{"name": f"refs/pr/{i}", "ref": f"refs/pr/{i}", "targetCommit": o}
                                      for i, o in enumerate(repo.prs, 1)]
        self._send(200, answer)

    def _resolve(self, method, repo_id, rest, query, body):
        head = method == "HEAD"
        repo = self._repo(repo_id, write=False, head=head)
        if repo is None or (oid := self._revision(repo, rest[0], head=head)) is None:
            return
        path = "/".join(rest[1:])
        data = repo.commits[oid]["files"].get(path)
        if data is None:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound", head=head)
        self._send(200, raw=data, head=head, headers={"X-Repo-Commit": oid, "ETag": f'"{git_sha1(data)}"'})
