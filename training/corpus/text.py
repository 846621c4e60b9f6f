"""The corpus' text: the question templates (the first of each list is the canonical one, regionscribe.model.prompts'
where the describer asks the same), the answer texts of an object or a pair, and the vocabulary a tokenizer learns.
"""
from __future__ import annotations

from regionscribe.model.prompts import (
    ATTRIBUTE_Q, BBOX, CAPTION_Q, DETAILED_Q, IMAGE, IMAGE_PREFIX, REGION1, REGION2, RELATION_Q, YESNO_Q,
)
from regionscribe.training.corpus.concepts import (
    _PLURALS, ATTRIBUTE_VALUES, ATTRIBUTE_WORDS, ATTRIBUTES, LABEL_PHRASES, MAX_REGIONS, NUMBER_WORDS, POSITIONS,
    RELATION_LABELS, SIZES, TEXTURES,
)
from regionscribe.training.corpus.scenes import SceneObject, position_name

# "{r}" / "{a}" / "{b}" stand for a region mention ("region1 <bbox>" or "region1"). The first template of each
# list is the canonical one used by eval_samples().

PHRASE_TEMPLATES = [
    "What is in {r}? Answer with a short phrase.",
    "Name the object in {r} with a short phrase.",
    "What object is in {r}? Answer briefly.",
]
CAPTION_TEMPLATES = [
    CAPTION_Q,
    "What can you tell me about the region marked by {r}?",
    "Describe {r} briefly.",
    "Can you describe {r} in a few words?",
    "Briefly describe the object in {r}.",
    "What object is shown in {r}?",
    "Write a short caption for {r}.",
    "Summarize what {r} contains.",
    "Provide a brief description of {r}.",
    "What do you see in {r}?",
]
DETAILED_TEMPLATES = [
    DETAILED_Q,
    "Give a detailed description of {r}, including where it is in the image.",
    "Where is {r} in the image and what does it look like?",
    "Please describe {r} and its position in the image.",
]
ATTRIBUTE_TEMPLATES = [
    ATTRIBUTE_Q.format(name="{word}", r="{r}"),  # "What is the {word} of {r}?"
    "Tell me the {word} of {r}.",
]
RELATION_TEMPLATES: dict[str, list[str]] = {
    "horizontal": ["Is {a} left of or right of {b}?", "Is {a} to the left or to the right of {b}?"],
    "vertical": ["Is {a} above or below {b}?", "Is {a} higher or lower than {b}, above or below?"],
    "size": ["Is {a} bigger or smaller than {b}?", "Is {a} bigger than or smaller than {b}?"],
    "color": ["Does {a} have the same colour as {b}?", "Is {a} the same colour as or a different colour from {b}?"],
    "overlap": ["Does {a} overlap {b}?", "Is {a} overlapping or not overlapping {b}?"],
}
YESNO_TEMPLATE = YESNO_Q
RELATION_TEXT_TEMPLATES = [RELATION_Q, "Describe the relation between {a} and {b}."]
WHICH_TEMPLATES = {"color": "Which of {group} is {value}?", "shape": "Which of {group} is a {value}?"}
COUNT_TEMPLATES = {"color": "How many of {group} are {value}?", "shape": "How many of {group} are {value}?"}
EXTREME_TEMPLATES = {"biggest": "Which of {group} is the biggest?", "smallest": "Which of {group} is the smallest?"}


# --------------------------------------------------------------------------------------------- answer texts

def phrase_text(obj: SceneObject) -> str:
    """Stage-1 phrase: "red circle"."""
    return f"{obj.color} {obj.shape}"


def caption_text(obj: SceneObject) -> str:
    """Short caption, always "a {size} {color} {texture} {shape}"."""
    return f"a {obj.size} {obj.color} {obj.texture} {obj.shape}"


def detailed_text(obj: SceneObject, image_size: tuple[int, int]) -> str:
    """Detailed caption with the position; solid objects read "a {size} solid {color} {shape} in the ..."."""
    where = f"in the {position_name(obj.box, image_size)} of the image"
    if obj.texture == "solid":
        return f"a {obj.size} solid {obj.color} {obj.shape} {where}"
    return f"a {obj.size} {obj.color} {obj.shape} with a {obj.texture} pattern {where}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def relation_text(rels: dict[str, str], a_name: str, b_name: str) -> str | None:
    """"region1 is left of, above and bigger than region2": the unambiguous horizontal/vertical/size labels, then
    "the same colour as" when the colours match, then "overlapping" when the boxes intersect. None when nothing
    is worth saying."""
    parts = [rels[axis] for axis in ("horizontal", "vertical", "size") if axis in rels]
    if rels.get("color") == "same colour as":
        parts.append("the same colour as")
    if rels.get("overlap") == "overlapping":
        parts.append("overlapping")
    if not parts:
        return None
    return f"{a_name} is {_join(parts)} {b_name}"


def vocabulary_text() -> list[str]:
    """Every template (filled with example regions), every concept word (base and withheld), every answer form,
    region1..region16 and the number words: the text a byte-level BPE tokenizer should be trained on."""
    r, a, b = REGION1, REGION1, REGION2
    out: list[str] = [IMAGE_PREFIX, IMAGE, BBOX]
    out += [t.format(r=r) for t in PHRASE_TEMPLATES + CAPTION_TEMPLATES + DETAILED_TEMPLATES]
    out += [t.format(word=w, r=r) for t in ATTRIBUTE_TEMPLATES for ws in ATTRIBUTE_WORDS.values() for w in ws]
    out += [t.format(a=a, b=b) for ts in RELATION_TEMPLATES.values() for t in ts]
    out += [YESNO_TEMPLATE.format(a=a, label=LABEL_PHRASES[label], b=b) for label in RELATION_LABELS]
    out += [t.format(a=a, b=b) for t in RELATION_TEXT_TEMPLATES]
    group = f"region1 {BBOX}, region2 {BBOX} and region3 {BBOX}"
    out += [t.format(group=group, value=v) for attr, t in WHICH_TEMPLATES.items() for v in ATTRIBUTE_VALUES[attr]]
    out += [COUNT_TEMPLATES["color"].format(group=group, value=v) for v in ATTRIBUTE_VALUES["color"]]
    out += [COUNT_TEMPLATES["shape"].format(group=group, value=_PLURALS[v]) for v in ATTRIBUTE_VALUES["shape"]]
    out += [t.format(group=group) for t in EXTREME_TEMPLATES.values()]
    for attr in ATTRIBUTES:
        out += ATTRIBUTE_WORDS[attr] + ATTRIBUTE_VALUES[attr]
    out += list(_PLURALS.values())
    out += RELATION_LABELS + list(LABEL_PHRASES.values())
    out += [p for row in POSITIONS for p in row]
    out += [f"region{k}" for k in range(1, MAX_REGIONS + 1)]
    out += NUMBER_WORDS + ["yes", "no"]
    for size in SIZES:
        for color in ATTRIBUTE_VALUES["color"]:
            for texture in TEXTURES:
                for shape in ATTRIBUTE_VALUES["shape"]:
                    obj = SceneObject((0.0, 0.0, 1.0, 1.0), color, shape, size, texture)
                    out.append(caption_text(obj))
    for pos in [p for row in POSITIONS for p in row]:
        out.append(f"a large red circle with a striped pattern in the {pos} of the image")
        out.append(f"a small solid purple star in the {pos} of the image")
    out.append("region1 is left of, above, bigger than, the same colour as and overlapping region2")
    out.append("region2 is right of, below and smaller than region1")
    return list(dict.fromkeys(out))
