"""The Label Studio ML-backend model, in label-studio-ml v2's shape: `predict(tasks, context)`, `fit(event, data)`,
`model_version`. The HTTP routes call it; it never touches the model itself: jobs go to the inference workers through
Redis, and this class turns their answers into Label Studio predictions.

Per-task errors (image missing or unreadable, worker timeout, a prediction that fails validation) never fail the
other tasks, and the answer always has one item per task:
- batch mode: `{"model_version", "score": 0, "error": "..."}` with NO `result` key. Label Studio skips an item
  without `result`, so nothing is stored and the task is predicted again next time (an empty `result` would be stored
  as an empty prediction, and the skip rule would then never re-predict it).
- interactive mode: `{"result": [], "model_version", "score": 0, "error": "..."}`: interactive answers are shown
  as suggestions and never stored, and the editor expects a `result` list.
Per-region errors (a polygon with fewer than 3 points or self-intersecting, an empty mask, a brush RLE of another
size: regionscribe.backend.labelstudio.shapes) never fail the task's other regions: the prediction lists them in
`region_errors` (`[{"id", "error"}]`) and describes the rest; a task none of whose regions can be described gets the
task error.

Interactive mode describes only the boxes of `context.result` that carry none of the per-region results regionscribe
fills (the box just drawn; Label Studio sends every box with the drawn one's label, described or not). A box that has
a caption or choices already, accepted from an earlier answer or typed by the annotator, is left out of the answer:
the editor then raises no suggestion for it and overwrites nothing. Leaving it out does not delete it: accepting
suggestions deletes only `dynamic` regions (smart-tool boxes whose own suggestion was never accepted), and a box
replaced by an accepted suggestion is not dynamic any more. All boxes still go to the worker, as the partners the new
box's relation text may talk about. When every box is filled already the answer is an empty `result`, without asking
a worker. Batch mode describes every box.
"""
from __future__ import annotations

import logging
import time

import redis

from regionscribe.backend.core.liveness import live_workers, read_model_version
from regionscribe.backend.core.prometheus import Metrics
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.inference.submit import Outcome, inference_queue, make_payload, submit, wait_for
from regionscribe.backend.labelstudio.labeling_config import ConfigError, ProjectConfig

log = logging.getLogger(__name__)


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached: the whole backend is down for predictions (the route answers 503)."""


class RegionScribeBackend:
    """The Label Studio ML-backend model (not the torch model, regionscribe.model.modeling.RegionScribeModel). One per
    request (cheap: the config parse is cached). `label_config` is the project's XML."""

    def __init__(self, settings: Settings, connection: redis.Redis | None, label_config: str | None,
                 project: str | None = None, metrics: Metrics | None = None, request_id: str | None = None,
                 store=None):
        self.settings = settings
        self.request_id = request_id
        self.connection = connection
        self.label_config = label_config
        self.project = project
        self.metrics = metrics or Metrics(connection)
        self._store = store

    @property
    def store(self):
        """The feedback store (regionscribe.backend.store), opened once per process on first use."""
        if self._store is None:
            from regionscribe.backend.store import Store

            self._store = Store.shared(self.settings)
        return self._store

    @property
    def model_version(self) -> str:
        return read_model_version(self.connection, self.settings)

    def setup(self) -> dict:
        """What /setup answers. A config regionscribe cannot fill is reported, not fatal: Label Studio shows it."""
        answer = {"model_version": self.model_version}
        if self.label_config:
            try:
                ProjectConfig.parse(self.label_config)
            except ConfigError as exc:
                answer["warning"] = str(exc)
        return answer

    # ----------------------------------------------------------------------------------------------- predict

    def predict(self, tasks: list[dict], context: dict | None = None) -> list[dict]:
        interactive = bool(isinstance(context, dict) and context.get("result"))
        version = self.model_version

        def error(message: str) -> dict:
            item = {"model_version": version, "score": 0.0, "error": message}
            if interactive:
                item["result"] = []
            return item

        if not isinstance(tasks, list) or not tasks:
            return []
        try:
            config = ProjectConfig.parse(self.label_config or "")
        except ConfigError as exc:
            return [error(str(exc)) for _ in tasks]

        answers: list[dict | None] = [None] * len(tasks)
        region_errors: dict[int, list[dict]] = {}  # task index → regions left out before the worker
        work: list[tuple[int, list, list[int] | None, dict]] = []  # (task index, regions, which to describe, payload)
        asks = config.asks(interactive=interactive)
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                answers[i] = error("the task is not a JSON object")
                continue
            if interactive:
                regions = config.regions_from_results(context["result"])
            else:
                regions, _source = config.regions_from_task(task)
            if not regions:
                answers[i] = error("no regions to describe: draw one with "
                                   f"{' or '.join(config.region_controls)} first" if interactive else
                                   "no regions on this task yet (no annotation, draft or prediction with regions)")
                continue
            # a region whose shape cannot be described (a polygon with 2 points, self-intersecting...) is reported
            # in the answer's region_errors; the others are described all the same
            broken = [{"id": r.id, "error": r.error} for r in regions if r.error]
            if broken:
                log.warning("task %s: %s", task.get("id"), "; ".join(b["error"] for b in broken))
                self.metrics.count("region_errors", len(broken))
                regions = [r for r in regions if not r.error]
                if not regions or (interactive and all(r.filled for r in regions)):
                    answers[i] = error("; ".join(b["error"] for b in broken))
                    continue
            describe = None
            if interactive:
                # only the boxes with nothing filled in yet (the one just drawn); every box goes to the worker all
                # the same, as the partners the new box's relation text may talk about
                describe = [k for k, region in enumerate(regions) if not region.filled]
                if not describe:
                    answers[i] = {"result": [], "model_version": version, "score": 0.0}
                    continue
                if len(describe) == len(regions):
                    describe = None
            data = task.get("data")
            ref = data.get(config.image_key) if isinstance(data, dict) else None
            if not isinstance(ref, str) or not ref:
                answers[i] = error(f"the task has no image under data.{config.image_key}")
                continue
            region_errors[i] = broken
            work.append((i, regions, describe, make_payload(task.get("id"), ref, [r.to_job() for r in regions], asks,
                                                            interactive, request_id=self.request_id,
                                                            describe=describe,
                                                            project_id=int(self.project) if self.project else None)))

        if work:
            outcomes = self._run([payload for *_, payload in work])
            for (i, regions, describe, _payload), outcome in zip(work, outcomes):
                answers[i] = self._prediction(config, regions, outcome, interactive, version, error, describe)
                if region_errors.get(i) and "result" in answers[i] and not answers[i].get("error"):
                    answers[i]["region_errors"] = region_errors[i] + answers[i].get("region_errors", [])
            described = {i: (regions, outcome.value, describe)
                         for (i, regions, describe, _payload), outcome in zip(work, outcomes) if outcome.ok}
            self._remember_suggestions(config, tasks, answers, described)
        return [a if a is not None else error("not processed") for a in answers]

    def _remember_suggestions(self, config: ProjectConfig, tasks: list, answers: list, described: dict) -> None:
        """Keep what was suggested per (project, task, region id), so ingest can tell a confirmed suggestion from a
        corrected one (the edit rate per model version). `described`: task index → (regions, the worker's answer,
        which regions the prediction is about), what each prediction was built from. One store transaction; never
        fails the prediction."""
        if not self.project:
            return
        try:
            from regionscribe.backend.feedback.suggestions import suggestions_from_answer

            items = []
            for i, (task, answer) in enumerate(zip(tasks, answers)):
                if (not isinstance(answer, dict) or answer.get("error") or not answer.get("result")
                        or i not in described):
                    continue
                task_id = task.get("id") if isinstance(task, dict) else None
                if isinstance(task_id, bool) or not isinstance(task_id, (int, str)) or not str(task_id).isdigit():
                    continue
                regions, value, describe = described[i]
                items += suggestions_from_answer(config, regions, value, int(task_id), describe=describe,
                                                 multiple_threshold=self.settings.multiple_choice_threshold)
            if items:
                self.store.record_suggestions(int(self.project), items)
        except Exception as exc:  # the store is for learning; predictions go out regardless
            log.warning("suggestions not remembered: %s", exc)

    def _run(self, payloads: list[dict]) -> list[Outcome]:
        if self.connection is None:
            raise QueueUnavailable("REDIS_URL is not set: the backend has no queue to send work to")
        try:
            if not live_workers(self.connection, self.settings.inference_queue):
                return [Outcome(error="no inference worker is running: start one with `regionscribe worker` (same "
                                      "REDIS_URL)")] * len(payloads)
            queue = inference_queue(self.connection, self.settings)
            started = time.perf_counter()
            jobs = submit(queue, payloads, self.settings)
            outcomes = wait_for(self.connection, jobs, self.settings.predict_timeout)
            log.info("%d job(s) answered in %.3f s", len(jobs), time.perf_counter() - started)
        except redis.RedisError as exc:
            log.error("Redis error while predicting: %s", exc)
            raise QueueUnavailable(f"the job queue (Redis) is unreachable: {type(exc).__name__}") from None
        for outcome in outcomes:
            self.metrics.count("jobs", outcome="ok" if outcome.ok else "error")
        return outcomes

    def _prediction(self, config: ProjectConfig, regions, outcome: Outcome, interactive: bool, version: str,
                    error, describe: list[int] | None = None) -> dict:
        if not outcome.ok:
            log.warning("task error: %s", outcome.message)
            return error(outcome.message)
        try:
            prediction = config.build_prediction(
                regions, outcome.value, interactive=interactive,
                multiple_threshold=self.settings.multiple_choice_threshold,
                relation_threshold=self.settings.relation_threshold, describe=describe)
        except (KeyError, TypeError, ValueError) as exc:
            log.exception("cannot turn the worker's answer into a prediction")
            return error(f"the worker's answer could not be turned into a prediction: {exc}")
        problems = config.validate(prediction)
        if problems:
            self.metrics.count("predictions_invalid")
            log.error("prediction refused by validation, not sent: %s", "; ".join(problems[:5]))
            return error("the prediction did not pass Label Studio's validation: " + "; ".join(problems[:3]))
        return prediction

    # ------------------------------------------------------------------------------------------------- fit

    def fit(self, event: str, data: dict) -> dict:
        """Webhook events (label-studio-ml v2's `fit(event, data)`): annotation events become records in the
        feedback store (durable before this returns), START_TRAINING asks the retraining policy for a run. Nothing
        slow happens here: images are cached by the ingest queue, training runs on the training queue.
        Raises regionscribe.backend.feedback.events.BadEvent for a malformed payload; returns {"status": "Unknown event"} for actions
        the feedback loop does not use."""
        from regionscribe.backend.feedback.events import UNAVAILABLE, handle_event

        annotation = data.get("annotation") if isinstance(data, dict) else None
        task = data.get("task") if isinstance(data, dict) else None
        log.info("webhook %s (task %s, annotation %s)", event, (task or {}).get("id") if isinstance(task, dict) else None,
                 (annotation or {}).get("id") if isinstance(annotation, dict) else None)
        payload = data if data.get("action") == event else {**data, "action": event}
        answer = handle_event(self.settings, payload, store=self._store)
        if answer.get("queue") != UNAVAILABLE:  # a Redis call failed during the event: no more of them
            self.metrics.count("webhooks", action=str(event)[:64])
            if self.settings.demonstrations > 0:
                self._queue_demonstrations(answer)
        return answer

    def _queue_demonstrations(self, answer: dict) -> None:
        """DEMONSTRATIONS: an annotation stored (or deleted) changes its task's accepted regions; queue the job that
        computes their region tokens on the inference workers (regionscribe.backend.inference.demonstration_jobs).
        Never fails the webhook: a job lost here is made up by the workers' own refresh of the project."""
        from regionscribe.backend.core.connections import fast_redis
        from regionscribe.backend.inference.demonstration_jobs import enqueue_refresh

        result = answer.get("result") if isinstance(answer.get("result"), dict) else {}
        tasks: dict[int, set[int]] = {}
        if result.get("outcome") in ("applied", "deleted"):  # the store names the tasks it changed
            for project_id, task_id in result.get("tasks") or []:
                tasks.setdefault(int(project_id), set()).add(int(task_id))
        connection = fast_redis(self.settings.redis_url)
        if not tasks or connection is None:
            return
        try:
            for project_id, task_ids in sorted(tasks.items()):
                enqueue_refresh(connection, self.settings, project_id, sorted(task_ids))
        except redis.RedisError as exc:
            log.warning("demonstrations of project(s) %s not queued: %s", sorted(tasks), exc)
