"""What the model suggested per region, as the store remembers it at /predict time (`Suggestion` rows), so that ingest
can tell a confirmed suggestion from a corrected one (the edit rate per model version).

The rows come straight from what the prediction was built from (the regions asked about and the worker's answer,
regionscribe.backend.labelstudio.predictions.suggested), read with the same reader as an annotation: the prediction
sent to Label Studio is not parsed back.
"""
from __future__ import annotations

from collections.abc import Collection

from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
from regionscribe.backend.labelstudio.predictions import suggested
from regionscribe.backend.labelstudio.results import Region
from regionscribe.backend.store import Suggestion


def suggestions_from_answer(config: ProjectConfig, regions: list[Region], answer: dict, task_id: int, *,
                            multiple_threshold: float = 0.3,
                            describe: Collection[int] | None = None) -> list[Suggestion]:
    """The Suggestion rows of the prediction `config.build_prediction(regions, answer, ...)` makes with the same
    `multiple_threshold` and `describe`: one per region it fills with a caption, a text or an attribute, stamped with
    the prediction's model_version, with the demonstrations the worker showed the model for it (DEMONSTRATIONS)."""
    version = str(answer.get("model_version")) or "unknown"  # the prediction's, as build_prediction stamps it
    shown = {region.id: list(got.get("demonstrations") or []) for region, got in zip(regions, answer["regions"])}
    return [Suggestion(task_id=int(task_id), region_id=region_id, model_version=version, caption=content.caption,
                       detailed_caption=content.detailed_caption, relation_text=content.relation_text,
                       attributes=content.attributes, demonstrations=shown.get(region_id, []))
            for region_id, content in suggested(config, regions, answer, multiple_threshold=multiple_threshold,
                                                describe=describe).items()]
