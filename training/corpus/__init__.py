"""The synthetic corpus: scenes drawn with PIL, with known boxes, and GPT4RoI-format conversations.

No dataset can be downloaded where regionscribe is built, so the embedded default model learns from scenes this
package draws itself: 2-4 objects on a grey, slightly noisy background, each with a colour, a shape, a size class
and a texture that must be read from pixels, and pairwise relations (left of / above / bigger than / same colour as
/ overlapping) that follow from the boxes.

A withheld colour (``WITHHELD_COLOR``) and a withheld shape (``WITHHELD_SHAPE``) never appear in the "train",
"val" and "test" splits; every scene of the "novel" split has at least one of them. They exist so that an
annotator's corrections can be shown to teach the model something it has never seen.

Conversations follow GPT4RoI: the first human turn starts with ``IMAGE_PREFIX``; a region is introduced as
``regionK <bbox>`` at its first mention and later mentioned as plain ``regionK``; the k-th ``<bbox>`` of the whole
conversation stands for ``Sample.boxes[k-1]``. Everything is deterministic per seed.

The package, as nanoGPT keeps data apart: concepts.py (what an object can be, the relation axes), scenes.py (the
records, their geometry and the drawing), text.py (question templates, answer texts, the tokenizer's vocabulary) and
samples.py (the conversations). Every name stays importable from regionscribe.training.corpus.
"""
from __future__ import annotations

from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.prompts import BBOX, IMAGE, IMAGE_PREFIX
from regionscribe.training.corpus.concepts import (
    ATTRIBUTE_VALUES, ATTRIBUTE_WORDS, ATTRIBUTES, BASE_VALUES, COLORS, LABEL_PHRASES, MAX_REGIONS, NUMBER_WORDS,
    POSITIONS, RELATION_AXES, RELATION_LABELS, SHAPES, SIZE_RANGES, SIZES, SPLITS, TEXTURES, WITHHELD_COLOR,
    WITHHELD_COLOR_RGB, WITHHELD_SHAPE,
)
from regionscribe.training.corpus.samples import (
    TURN_KINDS, check_axes, check_share, eval_samples, iter_samples, relation_samples, with_masks,
)
from regionscribe.training.corpus.scenes import (
    Box, Scene, SceneObject, make_scenes, position_name, relations, render_overlapping_pair, render_scene, size_class,
    visible_masks,
)
from regionscribe.training.corpus.text import (
    ATTRIBUTE_TEMPLATES, CAPTION_TEMPLATES, COUNT_TEMPLATES, DETAILED_TEMPLATES, EXTREME_TEMPLATES, PHRASE_TEMPLATES,
    RELATION_TEMPLATES, RELATION_TEXT_TEMPLATES, WHICH_TEMPLATES, YESNO_TEMPLATE, caption_text, detailed_text,
    phrase_text, relation_text, vocabulary_text,
)

__all__ = [
    "COLORS", "WITHHELD_COLOR", "WITHHELD_COLOR_RGB", "SHAPES", "WITHHELD_SHAPE", "TEXTURES", "SIZES",
    "SIZE_RANGES", "ATTRIBUTES", "ATTRIBUTE_WORDS", "ATTRIBUTE_VALUES", "BASE_VALUES", "RELATION_AXES",
    "RELATION_LABELS", "LABEL_PHRASES", "POSITIONS", "NUMBER_WORDS", "IMAGE_PREFIX", "BBOX", "IMAGE", "SPLITS",
    "MAX_REGIONS", "SceneObject", "Scene", "Turn", "Sample", "render_scene", "make_scenes", "size_class",
    "visible_masks", "render_overlapping_pair", "with_masks",
    "position_name", "relations", "phrase_text", "caption_text", "detailed_text", "relation_text",
    "iter_samples", "check_axes", "check_share", "relation_samples", "eval_samples", "vocabulary_text",
    "Box", "TURN_KINDS", "PHRASE_TEMPLATES", "CAPTION_TEMPLATES", "DETAILED_TEMPLATES", "ATTRIBUTE_TEMPLATES",
    "RELATION_TEMPLATES", "YESNO_TEMPLATE", "RELATION_TEXT_TEMPLATES", "WHICH_TEMPLATES", "COUNT_TEMPLATES",
    "EXTREME_TEMPLATES",
]
