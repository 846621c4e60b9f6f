"""Every fixed string of the conversation format, in one place and free of torch and transformers (the exports and
the web process read them too): the special tokens, the system line, the image prefix, and the canonical questions.

The questions come open, with the region mention left as {r} (or {a} and {b}), so one conversation can talk about
many regions; a region is written `regionK <bbox>` at its first mention and `regionK` afterwards. The *_PROMPT forms
are the same questions filled for one region (and a second one), as the describer asks them. The synthetic corpus
trains on these among its paraphrases (regionscribe.training.corpus: each template list starts with the canonical
question)."""

IMAGE = "<image>"
IM_START, IM_END, IM_PATCH, BBOX = "<im_start>", "<im_end>", "<im_patch>", "<bbox>"

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
IMAGE_PREFIX = f"The {IMAGE} provides an overview of the picture.\n"

CAPTION_Q = "Give a short description of {r}."
DETAILED_Q = "Describe {r} in detail."
ATTRIBUTE_Q = "What is the {name} of {r}?"
YESNO_Q = "Is {a} {label} {b}?"
RELATION_Q = "How is {a} related to {b}?"
RELATION_TEXT_Q = "How is {r} related to the objects around it?"  # one region against the rest (the exports)

REGION1, REGION2 = f"region1 {BBOX}", f"region2 {BBOX}"
CAPTION_PROMPT = CAPTION_Q.format(r=REGION1)
DETAILED_PROMPT = DETAILED_Q.format(r=REGION1)
ATTRIBUTE_PROMPT = ATTRIBUTE_Q.format(name="{name}", r=REGION1)
YESNO_PROMPT = YESNO_Q.format(a=REGION1, label="{label}", b=REGION2)
RELATION_TEXT_PROMPT = RELATION_Q.format(a=REGION1, b=REGION2)

# Demonstrations (Cheetah's demonstrative instructions, model/demonstrations.py): accepted regions of other images,
# each written `regionD1 <bbox>: {name}: {value}; caption: {caption}` on its own line, come before the question.
DEMONSTRATIONS_HEAD = "Answers accepted in this project:\n"
DEMONSTRATION_REGION = "regionD{n} " + BBOX
