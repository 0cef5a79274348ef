"""A small Hugging Face Hub-compatible HTTP server for tests (no internet needed).

It implements the endpoints that huggingface_hub 2.x calls to create a repository, create a
branch, upload a folder (``validate-yaml``, ``preupload`` answered in the regular, non-LFS
mode, ``commit`` with base64 ndjson files), open pull requests (``discussions`` with
``pullRequest``, whose ``refs/pr/N`` branch later commits go to, as huggingface_hub's hf_xet
upload pipeline does; or ``commit?create_pr=1`` as its legacy path does), read repository info
and download files
(``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` with the ``ETag`` / ``X-Repo-Commit``
headers ``hf_hub_download`` needs). Files live in memory, one snapshot per commit.

Every request must carry ``Authorization: Bearer <token>`` with the server's token; others get
401. ``refuse_all`` answers 401 to everything, ``fail_next`` injects transient errors (an HTTP
status, or ``DROP``: the connection is closed without an answer), and ``requests`` records what
was asked (method, path, whether the token matched) for assertions. A commit whose header names
a ``parentCommit`` that is no longer the branch head is refused with 412, as the Hub does.

Usage::

    with HubServer(token='hf_test') as hub:
        os.environ['HF_ENDPOINT'] = hub.url   # before huggingface_hub is imported
"""
import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ['HubServer', 'Repo', 'git_blob_oid', 'DROP']

DROP = 0  # fail_next status: close the connection without answering (a dropped connection)


def git_blob_oid(content: bytes) -> str:
    """The git blob id of ``content`` (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b'blob %d\0' % len(content) + content).hexdigest()


class Repo:
    """A model repository: branches -> list of commits, each commit a full snapshot {path: bytes}."""

    def __init__(self, repo_id: str, private: bool):
        self.repo_id = repo_id
        self.private = private
        first = _commit_oid(repo_id, 'initial', time.time())
        gitattributes = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n'
        self.commits: Dict[str, Dict[str, bytes]] = {first: {'.gitattributes': gitattributes}}
        self.branches: Dict[str, str] = {'main': first}
        self.messages: Dict[str, str] = {first: 'initial commit'}
        self.pull_requests: List[str] = []  # branch of each pull request (refs/pr/1, ...)

    def resolve(self, revision: str) -> Optional[str]:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        return None

    def files(self, revision: str = 'main') -> Dict[str, bytes]:
        oid = self.resolve(revision)
        return dict(self.commits[oid]) if oid else {}


def _commit_oid(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()


class HubServer:
    """The server; start with ``start()`` or as a context manager, stop with ``stop()``."""

    def __init__(self, token: str = 'hf_test_token', host: str = '127.0.0.1', user: str = 'tester'):
        self.token = token
        self.user = user
        self.repos: Dict[str, Repo] = {}
        self.requests: List[Tuple[str, str, bool]] = []
        self.refuse_all = False
        self._failures: List[Tuple[str, int, Optional[str]]] = []  # (path fragment, status, message), in order
        self._lock = threading.RLock()
        self._httpd = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # -- control ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}'

    def start(self) -> 'HubServer':
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='hub-server', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> 'HubServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_next(self, path_fragment: str, status: int = 500, times: int = 1, message: Optional[str] = None) -> None:
        """Answer ``status`` to the next ``times`` requests whose path contains ``path_fragment``.

        ``status`` ``DROP`` closes the connection without answering. ``message`` is the error
        message sent (header and body; default "injected error STATUS").
        """
        with self._lock:
            self._failures.extend([(path_fragment, status, message)] * times)

    def reset(self) -> None:
        """Forget recorded requests and pending failures; stop refusing (repositories are kept)."""
        with self._lock:
            self.requests.clear()
            self._failures.clear()
            self.refuse_all = False

    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        with self._lock:
            repo = self.repos.get(repo_id)
            return repo.files(revision) if repo else {}

    def edit(self, repo_id: str, path: str, content: bytes, revision: str = 'main') -> None:
        """Commit ``content`` as ``path`` to ``revision``, as a user editing a file on the Hub would."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches[revision]
            snapshot = {**repo.commits[parent], path: content}
            oid = _commit_oid(repo_id, parent, 'edit', time.time(), sorted(snapshot))
            repo.commits[oid] = snapshot
            repo.messages[oid] = f'Update {path}'
            repo.branches[revision] = oid

    def _take_failure(self, path: str) -> Optional[Tuple[int, Optional[str]]]:
        with self._lock:
            for i, (fragment, status, message) in enumerate(self._failures):
                if fragment in path:
                    del self._failures[i]
                    return status, message
        return None


def _make_handler(server: HubServer):

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args):  # quiet
            pass

        # -- plumbing ------------------------------------------------------------------------

        def _body(self) -> bytes:
            if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
                data = b''
                while True:
                    size = int(self.rfile.readline().strip().split(b';')[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get('Content-Length') or 0)
            return self.rfile.read(length) if length else b''

        def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
                  content_length: Optional[int] = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header('Content-Length', str(len(body) if content_length is None else content_length))
            self.end_headers()
            if self.command != 'HEAD' and body:
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None):
            self._send(status, json.dumps(obj).encode(), {'Content-Type': 'application/json', **(headers or {})})

        def _error(self, status: int, message: str, code: Optional[str] = None, extra: Optional[Dict[str, str]] = None):
            headers = {'X-Error-Message': message, **(extra or {})}
            if code:
                headers['X-Error-Code'] = code
            self._json(status, {'error': message}, headers)

        def _handle(self):
            url = urlsplit(self.path)
            path = unquote(url.path)
            self.query = parse_qs(url.query)
            authorized = self.headers.get('Authorization') == f'Bearer {server.token}'
            with server._lock:
                server.requests.append((self.command, path, authorized))
            body = self._body() if self.command in ('POST', 'PUT') else b''
            if server.refuse_all or not authorized:
                return self._error(401, 'Invalid credentials in Authorization header')
            failure = server._take_failure(path)
            if failure is not None:
                status, message = failure
                if status == DROP:  # the client sees the connection closed without a response
                    self.close_connection = True
                    return None
                return self._error(status, message or f'injected error {status}')
            try:
                self._route(path, body)
            except Exception as e:  # a server bug must show up as a clear 500, not a hang
                self._error(500, f'test hub server error: {type(e).__name__}: {e}')

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

        # -- routes --------------------------------------------------------------------------

        def _route(self, path: str, body: bytes):
            parts = [p for p in path.split('/') if p]
            if self.command == 'POST' and path == '/api/repos/create':
                return self._create_repo(json.loads(body or b'{}'))
            if self.command == 'POST' and path == '/api/validate-yaml':
                return self._validate_yaml(json.loads(body or b'{}'))
            if self.command == 'GET' and path in ('/api/whoami-v2', '/api/whoami'):
                return self._json(200, {'type': 'user', 'name': server.user, 'auth': {'type': 'access_token'}})
            if len(parts) >= 4 and parts[0] == 'api' and parts[1] == 'models':
                repo_id = f'{parts[2]}/{parts[3]}'
                rest = parts[4:]
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._error(404, 'Repository not found', 'RepoNotFound')
                if self.command == 'GET' and not rest:
                    return self._model_info(repo, 'main')
                if self.command == 'GET' and rest[0] == 'revision' and len(rest) >= 2:
                    return self._model_info(repo, '/'.join(rest[1:]))
                if self.command == 'POST' and rest[0] == 'preupload':
                    return self._preupload(repo, '/'.join(rest[1:]), json.loads(body or b'{}'))
                if self.command == 'POST' and rest[0] == 'commit':
                    return self._commit(repo, '/'.join(rest[1:]), body)
                if self.command == 'POST' and rest[0] == 'branch':
                    return self._branch(repo, '/'.join(rest[1:]), json.loads(body or b'{}'))
                if self.command == 'POST' and rest == ['discussions']:
                    return self._open_pull_request(repo, json.loads(body or b'{}'))
                if self.command == 'GET' and len(rest) == 2 and rest[0] == 'discussions':
                    return self._pull_request(repo, int(rest[1]))
            if self.command in ('GET', 'HEAD') and len(parts) >= 5 and parts[2] == 'resolve':
                return self._resolve(f'{parts[0]}/{parts[1]}', parts[3], '/'.join(parts[4:]))
            return self._error(404, f'no such endpoint: {self.command} {path}')

        def _create_repo(self, payload):
            name, org = payload.get('name'), payload.get('organization') or server.user
            repo_id = f'{org}/{name}'
            with server._lock:
                if repo_id in server.repos:  # the Hub's 409 carries the url (create_repo(exist_ok=True) reads it)
                    message = 'You already created this model repo'
                    return self._json(409, {'error': message, 'url': f'{server.url}/{repo_id}'},
                                      {'X-Error-Message': message})
                private = payload.get('visibility') == 'private' or bool(payload.get('private'))
                server.repos[repo_id] = Repo(repo_id, private=private)
            self._json(200, {'url': f'{server.url}/{repo_id}', 'name': repo_id, 'id': repo_id})

        def _validate_yaml(self, payload):
            content = payload.get('content', '')
            if content.startswith('---'):
                end = content.find('\n---', 3)
                try:
                    meta = yaml.safe_load(content[3:end]) if end > 0 else None
                    if end < 0 or not isinstance(meta, dict):
                        raise ValueError('metadata is not a mapping')
                except Exception as e:
                    return self._json(400, {'errors': [{'message': f'Invalid YAML: {e}'}], 'warnings': []})
            self._json(200, {'errors': [], 'warnings': []})

        def _model_info(self, repo: Repo, revision: str):
            oid = repo.resolve(revision)
            if oid is None:
                return self._error(404, 'Revision not found', 'RevisionNotFound')
            files = repo.commits[oid]
            self._json(200, {
                'id': repo.repo_id, 'modelId': repo.repo_id, 'sha': oid, 'private': repo.private,
                'author': repo.repo_id.split('/')[0], 'tags': [], 'lastModified': '2026-01-01T00:00:00.000Z',
                'siblings': [{'rfilename': p} for p in sorted(files)],
            })

        def _preupload(self, repo: Repo, revision: str, payload):
            oid = repo.resolve(revision)
            current = repo.commits[oid] if oid else {}
            files = []
            for f in payload.get('files', []):
                existing = current.get(f['path'])
                files.append({'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False,
                              'oid': git_blob_oid(existing) if existing is not None else None})
            self._json(200, {'files': files, 'commitOid': oid})

        def _branch(self, repo: Repo, branch: str, payload):
            with server._lock:
                if branch in repo.branches:
                    return self._error(409, 'Reference already exists')
                start = repo.resolve(payload.get('startingPoint') or 'main')
                if start is None:
                    return self._error(404, 'Revision not found', 'RevisionNotFound')
                repo.branches[branch] = start
            self._json(200, {})

        def _commit(self, repo: Repo, revision: str, body: bytes):
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            with server._lock:
                parent = repo.resolve(revision)
                if parent is None or revision not in repo.branches:
                    return self._error(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
                if self.query.get('create_pr') == ['1']:  # the commit goes to a new pull-request branch
                    revision = self._new_pull_request_branch(repo, parent)
                snapshot = dict(repo.commits[parent])
                summary = ''
                for item in lines:
                    key, value = item['key'], item['value']
                    if key == 'header':
                        summary = value.get('summary', '')
                        expected = value.get('parentCommit')
                        if expected and expected != parent:  # the Hub's compare-and-swap on the branch head
                            return self._error(412, 'A commit has happened since. Please refresh and try again.')
                    elif key == 'file':
                        if value.get('encoding') != 'base64':
                            return self._error(400, 'only base64 file content is supported')
                        snapshot[value['path']] = base64.b64decode(value['content'])
                    elif key == 'deletedFile':
                        snapshot.pop(value['path'], None)
                    elif key == 'deletedFolder':
                        prefix = value['path'].rstrip('/') + '/'
                        snapshot = {p: c for p, c in snapshot.items() if not p.startswith(prefix)}
                    else:  # lfsFile: this server answered "regular" to every preupload
                        return self._error(400, f'unsupported commit operation {key!r} (LFS is not served)')
                oid = _commit_oid(repo.repo_id, parent, summary, time.time(), sorted(snapshot))
                repo.commits[oid] = snapshot
                repo.messages[oid] = summary
                repo.branches[revision] = oid
            answer = {'success': True, 'commitOid': oid, 'commitUrl': f'{server.url}/{repo.repo_id}/commit/{oid}'}
            if revision.startswith('refs/pr/'):
                answer['pullRequestUrl'] = f'{server.url}/{repo.repo_id}/discussions/{revision.split("/")[-1]}'
            self._json(200, answer)

        def _new_pull_request_branch(self, repo: Repo, start: str) -> str:
            with server._lock:
                branch = f'refs/pr/{len(repo.pull_requests) + 1}'
                repo.pull_requests.append(branch)
                repo.branches[branch] = start
            return branch

        def _open_pull_request(self, repo: Repo, payload):
            if not payload.get('pullRequest'):
                return self._error(400, 'this test server opens pull requests only')
            branch = self._new_pull_request_branch(repo, repo.branches['main'])
            self._json(200, {'num': int(branch.split('/')[-1])})

        def _pull_request(self, repo: Repo, num: int):
            if not 1 <= num <= len(repo.pull_requests):
                return self._error(404, 'Discussion not found')
            self._json(200, {
                'title': f'pull request {num}', 'num': num, 'author': {'name': server.user},
                'createdAt': '2026-01-01T00:00:00.000Z', 'status': 'draft',
                'repo': {'name': repo.repo_id, 'type': 'model'}, 'isPullRequest': True,
                'changes': {'base': 'refs/heads/main'}, 'filesWithConflicts': [], 'events': [], 'diff': ''})

        def _resolve(self, repo_id: str, revision: str, filename: str):
            repo = server.repos.get(repo_id)
            if repo is None:
                return self._error(404, 'Repository not found', 'RepoNotFound')
            oid = repo.resolve(revision)
            if oid is None:
                return self._error(404, 'Revision not found', 'RevisionNotFound')
            content = repo.commits[oid].get(filename)
            if content is None:
                return self._error(404, 'Entry not found', 'EntryNotFound', {'X-Repo-Commit': oid})
            self._send(200, content, {
                'ETag': f'"{git_blob_oid(content)}"', 'X-Repo-Commit': oid,
                'Content-Type': 'application/octet-stream', 'Accept-Ranges': 'none'})

    return Handler
