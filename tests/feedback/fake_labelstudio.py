"""A small stand-in for Label Studio 1.23's REST API, for the sync and webhook-repair unit tests (the e2e tests run the
same code against the real Label Studio): projects, tasks with their annotations (`fields=all`, page-number pages,
404 past the last page as Label Studio answers), one annotation by id, the project's webhooks (list, PATCH, DELETE)
and ML backends. Every call needs `Authorization: Token <token>`; every request is logged in `calls`."""
from __future__ import annotations

import base64
import itertools
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


# ids (projects, tasks, annotations, webhooks) unique across every fake of the session: tests share one Redis, where
# per-project keys (the training policy's) must not collide
# the Basic auth a backend under test is protected with, and the header Label Studio's webhook must carry for it
USER, PASSWORD = "ls-robot", "s3cret-pass"
HEADER = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
_IDS = itertools.count(int(datetime.now().timestamp()) % 100000 * 1000 + 500_000_000)


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(1714564800 + seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeLabelStudio:
    def __init__(self, token: str):
        self.token = token
        self.lock = threading.Lock()
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}  # id -> {"id", "project", "data", "updated": seconds}
        self.annotations: dict[int, dict] = {}  # id -> annotation as Label Studio serializes it
        self.webhooks: dict[int, dict] = {}
        self.ml: dict[int, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.hidden: set[int] = set()  # annotation ids left out of task listings (a page that shifted)
        self.fail_pages: set[int] = set()  # task pages answered with 500
        self.clock = itertools.count(1)
        self.ids = _IDS
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------------------------------- the data

    def new_id(self) -> int:
        return next(self.ids)

    def add_project(self, label_config: str, project_id: int | None = None) -> int:
        pid = project_id or self.new_id()
        with self.lock:
            self.projects[pid] = {"id": pid, "title": f"project {pid}", "label_config": label_config,
                                  "created_at": stamp(-1000)}
        return pid

    def add_task(self, project_id: int, image: str = "/data/upload/1/x.png") -> int:
        tid = self.new_id()
        with self.lock:
            self.tasks[tid] = {"id": tid, "project": project_id, "data": {"image": image}, "updated": next(self.clock)}
        return tid

    def annotate(self, task_id: int, result: list, user: int = 1, annotation_id: int | None = None) -> dict:
        aid = annotation_id or self.new_id()
        with self.lock:
            now = next(self.clock)
            task = self.tasks[task_id]
            task["updated"] = now
            self.annotations[aid] = {
                "id": aid, "result": result, "created_username": f"annotator{user}@example.com, {user}",
                "completed_by": user, "was_cancelled": False, "ground_truth": False, "created_at": stamp(now),
                "updated_at": stamp(now), "draft_created_at": None, "lead_time": 12.5, "task": task_id,
                "project": task["project"], "updated_by": user, "parent_prediction": None,
                "parent_annotation": None, "last_action": None, "bulk_created": False, "import_id": None}
            return dict(self.annotations[aid])

    def update(self, annotation_id: int, result: list) -> dict:
        with self.lock:
            now = next(self.clock)
            ann = self.annotations[annotation_id]
            ann.update(result=result, updated_at=stamp(now))
            self.tasks[ann["task"]]["updated"] = now
            return dict(ann)

    def delete(self, annotation_id: int) -> None:
        with self.lock:
            ann = self.annotations.pop(annotation_id)
            self.tasks[ann["task"]]["updated"] = next(self.clock)

    def add_webhook(self, project_id: int, url: str, headers: dict | None = None, active: bool = True) -> int:
        wid = self.new_id()
        with self.lock:
            self.webhooks[wid] = {"id": wid, "project": project_id, "organization": 1, "url": url,
                                  "send_payload": True, "send_for_all_actions": True, "headers": headers or {},
                                  "is_active": active, "actions": [], "created_at": stamp(0), "updated_at": stamp(0)}
        return wid

    def add_ml(self, project_id: int, url: str) -> int:
        mid = self.new_id()
        with self.lock:
            self.ml[mid] = {"id": mid, "project": project_id, "url": url, "title": "regionscribe", "state": "CO",
                            "auth_method": "BASIC_AUTH", "is_interactive": True}
        return mid

    def task_json(self, task: dict) -> dict:
        annotations = [dict(a) for a in self.annotations.values()
                       if a["task"] == task["id"] and a["id"] not in self.hidden]
        return {"id": task["id"], "data": task["data"], "project": task["project"], "annotations": annotations,
                "predictions": [], "total_annotations": len(annotations), "updated_at": stamp(task["updated"]),
                "created_at": stamp(0), "is_labeled": bool(annotations), "meta": {}}


def _handler(ls: FakeLabelStudio):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body=None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            ls.calls.append((method, self.path))
            if self.headers.get("Authorization") != f"Token {ls.token}":
                return self._send(401, {"detail": "Authentication credentials were not provided."})
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            path = [p for p in parts.path.split("/") if p]
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with ls.lock:
                return self._answer(method, path, query, body)

        def _answer(self, method, path, query, body):
            if path[:2] == ["api", "projects"] and len(path) == 3 and method == "GET":
                project = ls.projects.get(int(path[2]))
                return self._send(200, project) if project else self._send(404, {"detail": "Not found."})
            if path == ["api", "tasks"] and method == "GET":
                return self._tasks(query)
            if path[:2] == ["api", "tasks"] and len(path) == 4 and path[3] == "annotations":
                tid = int(path[2])
                return self._send(200, [dict(a) for a in ls.annotations.values() if a["task"] == tid])
            if path[:2] == ["api", "annotations"] and len(path) == 3 and method == "GET":
                ann = ls.annotations.get(int(path[2]))
                return self._send(200, ann) if ann else self._send(404, {"detail": "Not found."})
            if path == ["api", "webhooks"] and method == "GET":
                pid = int(query["project"]) if query.get("project") else None
                return self._send(200, [w for w in ls.webhooks.values() if pid is None or w["project"] == pid])
            if path[:2] == ["api", "webhooks"] and len(path) == 3:
                wid = int(path[2])
                if wid not in ls.webhooks:
                    return self._send(404, {"detail": "Not found."})
                if method == "PATCH":
                    ls.webhooks[wid].update(body or {})
                    return self._send(200, ls.webhooks[wid])
                if method == "DELETE":
                    del ls.webhooks[wid]
                    return self._send(204)
            if path == ["api", "ml"] and method == "GET":
                pid = int(query["project"])
                return self._send(200, [m for m in ls.ml.values() if m["project"] == pid])
            return self._send(404, {"detail": "Not found."})

        def _tasks(self, query):
            pid = int(query["project"])
            page, size = int(query.get("page", 1)), int(query.get("page_size", 30))
            if page in ls.fail_pages:
                return self._send(500, {"detail": "server error"})
            chosen = sorted((t for t in ls.tasks.values() if t["project"] == pid), key=lambda t: t["id"])
            if query.get("query"):
                for item in json.loads(query["query"]).get("filters", {}).get("items", []):
                    assert item["filter"] == "filter:tasks:updated_at" and item["operator"] == "greater", item
                    after = datetime.fromisoformat(item["value"].replace("Z", "+00:00"))
                    chosen = [t for t in chosen if datetime.fromisoformat(
                        stamp(t["updated"]).replace("Z", "+00:00")) > after]
            items = chosen[(page - 1) * size: page * size]
            if page > 1 and not items:
                return self._send(404, {"detail": "Invalid page."})
            tasks = [ls.task_json(t) for t in items]
            return self._send(200, {"tasks": tasks, "total": len(chosen),
                                    "total_annotations": sum(len(t["annotations"]) for t in tasks),
                                    "total_predictions": 0})

        def do_GET(self):
            self._route("GET")

        def do_PATCH(self):
            self._route("PATCH")

        def do_DELETE(self):
            self._route("DELETE")

    return Handler
