"""regionscribe in Label Studio 1.23.2's own labeling page, in headless Chromium (Selenium): what an annotator sees.

With labeling_configs/region_attributes.xml and the backend connected as an interactive ML backend, an annotator
logs in, opens a task, switches on Auto-Annotation, picks the smart tool ("Auto-Detect") and drags a box round the
red circle:
- Auto-Accept on: the box comes back with its caption and choices filled in. The annotator edits the caption and
  corrects the colour, then draws a second box round the blue square: the second box is filled, and the first keeps
  the annotator's caption and colour (issue 15: every new box used to re-describe, and overwrite, the others).
- Auto-Accept off: the answer for the first box is a suggestion, accepted with the bar's ✓; after the same edits the
  second box raises exactly one suggestion (its own), and accepting it leaves the first box as the annotator has it.
Each annotation is then submitted, and the backend's feedback store (fed by Label Studio's ANNOTATION_CREATED webhook)
holds both regions: the edited one `changed`, the accepted one not, both pre-filled by the backend's model version.
And with labeling_configs/region_relations.xml two smart boxes keep the page (an interactive answer with a
<Relations> result made it go blank).

Everything is checked in the DOM (the region list's caption fields, the per-region choice checkboxes, the
suggestions bar), then through Label Studio's API and the backend's store. A screenshot per step goes to the test's
tmp_path (the failure report names the folder).
"""
from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageDraw
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.e2e

CONFIGS = Path(__file__).resolve().parents[2] / "labeling_configs"
IMAGE_SIZE = (320, 240)
RED_CIRCLE = (30, 40, 130, 140)  # pixels of the image below, xyxy
BLUE_SQUARE = (190, 100, 290, 200)
MARGIN = 6  # the box is dragged this many pixels outside the shape
ANSWER_TIMEOUT = 60  # seconds for a drawn box to come back described (the worker answers in well under 1 s)
EDIT = " (edited)"


def scene_png() -> bytes:
    image = Image.new("RGB", IMAGE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse(RED_CIRCLE, fill=(220, 20, 20))
    draw.rectangle(BLUE_SQUARE, fill=(20, 40, 220))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


class Api:
    """Label Studio's REST API with the legacy token (the set-up the annotator does not see)."""

    def __init__(self, label_studio):
        self.base = label_studio.url
        self.session = requests.Session()
        self.session.headers.update(label_studio.headers)

    def call(self, method: str, path: str, expect=(200, 201), **kwargs):
        r = self.session.request(method, f"{self.base}{path}", timeout=60, **kwargs)
        assert r.status_code in expect, f"{method} {path} -> {r.status_code}: {r.text[:1000]}"
        return r.json() if r.content else None

    def new_task(self, project_id: int) -> int:
        self.call("POST", f"/api/projects/{project_id}/import", files={"file": ("scene.png", scene_png(), "image/png")})
        body = self.call("GET", f"/api/tasks?project={project_id}&page_size=100")
        tasks = body["tasks"] if isinstance(body, dict) else body
        return max(t["id"] for t in tasks)

    def annotations(self, task_id: int) -> list[dict]:
        return self.call("GET", f"/api/tasks/{task_id}/annotations/")


class LabelingPage:
    """Label Studio's labeling page, driven the way an annotator does it. Elements are found by visible text, the
    editor's data-testid and alt attributes, ARIA roles, and the editor's BEM class names where it has nothing else
    (the smart tool, the region list); every step waits explicitly for what the page shows."""

    def __init__(self, driver, base: str, image_name: str, label: str):
        self.d = driver
        self.base = base
        self.image_name = image_name
        self.label = label
        self.wait = lambda timeout=30: WebDriverWait(driver, timeout, poll_frequency=0.1)
        self.steps = 0

    # -- bookkeeping

    def shot(self, name: str) -> None:
        self.steps += 1
        self.d.save_screenshot(str(self.d.shots / f"{self.steps:02d}-{name}.png"))

    def find(self, css: str):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def xpath(self, path: str):
        return self.d.find_element(By.XPATH, path)

    def click(self, element) -> None:
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    # -- pages

    def login(self, email: str, password: str) -> None:
        self.d.get(f"{self.base}/user/login/")
        self.wait().until(lambda d: self.finds("#email"), "no login form")
        self.find("#email").send_keys(email)
        self.find("#password").send_keys(password)
        self.find("button[type=submit]").click()
        self.wait().until(lambda d: "/user/login" not in d.current_url, "the login was refused")
        self.shot("logged-in")

    def open_task(self, project_id: int, task_id: int) -> None:
        self.d.get(f"{self.base}/projects/{project_id}/data?task={task_id}")
        # the editor draws the task's image (a blob: copy of /data/upload/...) once it has loaded it
        self.wait(60).until(lambda d: self.image_rect() is not None, "the task's image was not drawn")
        self.wait().until(lambda d: self.finds("[data-testid=bottombar-auto-annotation-toggle]"),
                          "no Auto-Annotation toggle: is the backend connected as interactive?")
        self.shot(f"task-{task_id}")

    def switch(self, text: str, testid: str, on: bool) -> None:
        """The bottom bar's toggles ("Auto-Annotation", "Auto-Accept Suggestions"): click the visible label."""
        box = self.find(f"[data-testid={testid}]")
        if box.is_selected() != on:
            self.xpath(f"//label[.//*[normalize-space(text())='{text}']]").click()
        self.wait(10).until(lambda d: self.find(f"[data-testid={testid}]").is_selected() == on,
                            f"{text} did not switch {'on' if on else 'off'}")

    # -- drawing

    def image_rect(self) -> dict | None:
        return self.d.execute_script("""
            const img = document.querySelector(`img[alt="${arguments[0]}"]`);
            if (!img || !(img.getAttribute('src') || '').startsWith('blob:')) return null;
            const r = img.getBoundingClientRect();
            return r.width > 50 ? {x: r.x, y: r.y, width: r.width, height: r.height} : null;""", self.image_name)

    def smart_box(self, xyxy: tuple[int, int, int, int]) -> None:
        """Pick the label and the smart tool ("Auto-Detect") and drag a box round `xyxy` (image pixels)."""
        self.find("body").send_keys(Keys.ESCAPE)  # nothing selected: a click on the label must not relabel a region
        self.wait(10).until(lambda d: not self.finds("[role=treeitem].lsf-tree-treenode-selected"),
                            "Escape did not unselect the region")
        image = self.find(f'img[alt="{self.image_name}"]')
        self.d.execute_script("arguments[0].scrollIntoView({block: 'start'})", image)
        label = self.xpath(f"//span[contains(@class, 'lsf-label__text') and normalize-space(text())='{self.label}']/..")
        if "lsf-label_selected" not in label.get_attribute("class"):  # a click on a selected label unselects it
            label.click()
        tool = self.find("button.lsf-tool_smart")
        ActionChains(self.d).move_to_element(tool).perform()
        self.wait(10).until(lambda d: any("Auto-Detect" in e.text for e in self.finds(".lsf-tool__tooltip-body")),
                            "the smart tool's tooltip does not say Auto-Detect")
        if "lsf-tool_active" not in tool.get_attribute("class"):
            tool.click()
        rect = self.image_rect()
        scale = rect["width"] / IMAGE_SIZE[0]
        x1, y1, x2, y2 = xyxy

        def offset(x, y):  # from the element's centre, as W3C actions count
            return (round((x * scale) - rect["width"] / 2), round((y * scale) - rect["height"] / 2))

        chain = ActionChains(self.d, duration=50)
        chain.move_to_element_with_offset(image, *offset(x1 - MARGIN, y1 - MARGIN)).click_and_hold()
        for k in range(1, 6):
            chain.move_to_element_with_offset(image, *offset(x1 - MARGIN + (x2 - x1 + 2 * MARGIN) * k / 5,
                                                             y1 - MARGIN + (y2 - y1 + 2 * MARGIN) * k / 5))
        chain.release().perform()

    # -- the region list (the caption is a region-list TextArea) and the per-region controls

    def regions(self) -> list:
        return self.finds("[role=treeitem].lsf-tree__node_type_rectangleregion")

    def captions(self) -> list[str]:
        """The caption field of every region in the list, in order (empty while the page re-renders)."""
        try:
            return [item.find_element(By.CSS_SELECTOR, "textarea").get_attribute("value") for item in self.regions()]
        except StaleElementReferenceException:
            return []

    def caption(self, index: int) -> str:
        return self.captions()[index]

    def wait_described(self, count: int) -> None:
        """`count` regions in the list, each with a caption (Auto-Accept on: the answer is applied at once)."""
        try:
            self.wait(ANSWER_TIMEOUT).until(
                lambda d: len(shown := self.captions()) == count and all(c.strip() for c in shown))
        except TimeoutException:
            editor = bool(self.finds(f'img[alt="{self.image_name}"]'))
            raise AssertionError(
                f"not {count} region(s) with a caption within {ANSWER_TIMEOUT} s: the region list shows "
                f"{self.captions()}"
                + ("" if editor else "; the labeling editor is gone from the page (see console.log)")) from None

    def select(self, index: int) -> None:
        self.click(self.regions()[index].find_element(By.CSS_SELECTOR, ".lsf-outliner-item__index"))
        self.wait(10).until(lambda d: "lsf-tree-treenode-selected" in self.regions()[index].get_attribute("class"),
                            f"region {index + 1} was not selected")

    def checked(self, names) -> set[str]:
        """The per-region choices (checkbox `name`s among `names`) checked for the selected region."""
        return {n for n in names if self.finds(f'input[name="{n}"]') and self.find(f'input[name="{n}"]').is_selected()}

    def choose(self, value: str) -> None:
        box = self.find(f'input[name="{value}"]')
        self.click(box.find_element(By.XPATH, "./ancestor::label[1]"))
        self.wait(10).until(lambda d: self.find(f'input[name="{value}"]').is_selected(), f"{value} was not checked")

    def edit_caption(self, index: int, extra: str) -> str:
        area = self.regions()[index].find_element(By.CSS_SELECTOR, "textarea")
        self.click(area)
        area.send_keys(Keys.END, extra)
        area.send_keys(Keys.TAB)  # leaving the field commits it
        self.wait(10).until(lambda d: self.caption(index).endswith(extra), "the caption edit did not take")
        return self.caption(index)

    # -- suggestions and submit

    def suggestions(self) -> str:
        found = self.finds(".lsf-auto-accept__info")
        return found[0].text.strip() if found else ""

    def accept_suggestions(self) -> None:
        self.find("[data-testid=bottombar-accept-suggestions-button]").click()
        self.wait(10).until(lambda d: not self.finds("[data-testid=bottombar-accept-suggestions-button]"),
                            "the suggestions were not accepted")

    def submit(self) -> None:
        self.find("[data-testid=bottombar-submit-button]").click()


def read_config(name: str) -> dict:
    root = ET.fromstring((CONFIGS / f"{name}.xml").read_text())
    return {"image": next(root.iter("Image")).attrib["name"],
            "label": next(next(root.iter("RectangleLabels")).iter("Label")).attrib["value"],
            "choices": {c.attrib["name"]: [v.attrib["value"] for v in c.iter("Choice")] for c in root.iter("Choices")}}


@pytest.fixture(scope="module")
def project_on(label_studio, backend):
    """project_on(config name) -> (api, project id): one project per labeling config, with the backend connected
    for interactive pre-annotation."""
    api = Api(label_studio)
    made: dict[str, int] = {}

    def make(name: str) -> tuple[Api, int]:
        if name not in made:
            project = api.call("POST", "/api/projects", expect=(201,), json={
                "title": f"e2e browser {name}", "label_config": (CONFIGS / f"{name}.xml").read_text()})
            ml = api.call("POST", "/api/ml", expect=(201,), json={"url": backend.url, "project": project["id"],
                                                                "is_interactive": True, "title": "regionscribe"})
            assert ml["is_interactive"] is True, ml
            made[name] = project["id"]
        return api, made[name]

    return make


def store_regions(backend, project_id: int, task_id: int, timeout: float = 30.0) -> dict:
    """region id → the backend's store record, once the annotation's regions are there."""
    deadline = time.monotonic() + timeout
    while True:
        records = {r.region_id: r for r in backend.store().records(project_id) if r.task_id == task_id}
        if len(records) >= 2 or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def label_two_boxes(page: LabelingPage, config: dict, auto_accept: bool) -> tuple[str, str]:
    """Draw, edit, draw again; returns (the edited caption, the corrected colour) of box 1."""
    colors = config["choices"]["color"]
    page.switch("Auto-Annotation", "bottombar-auto-annotation-toggle", True)
    page.switch("Auto-Accept Suggestions", "bottombar-auto-accept-toggle", auto_accept)
    page.shot("switches")

    page.smart_box(RED_CIRCLE)
    started = time.monotonic()  # mouse-up
    if not auto_accept:
        page.wait(ANSWER_TIMEOUT).until(lambda d: page.suggestions() == "1 suggestions",
                                        f"no suggestion for box 1 within {ANSWER_TIMEOUT} s")
        page.shot("box1-suggested")
        assert page.caption(0) == "", "a suggestion filled the field before it was accepted"
        page.accept_suggestions()
    page.wait_described(1)
    took = time.monotonic() - started
    page.shot("box1-described")
    first = page.caption(0)
    page.select(0)
    model_colors = page.checked(colors)
    assert len(model_colors) == 1, f"box 1 should come back with one colour checked, got {model_colors}"
    for control in ("shape", "size"):
        assert page.checked(config["choices"][control]), f"box 1 came back without a {control}"
    print(f"\n[e2e] browser, Auto-Accept {'on' if auto_accept else 'off'}: box 1 filled in on the page {took:.2f} s "
          f"after mouse-up: {first!r}, colour {model_colors}")

    # the annotator's corrections
    corrected = next(c for c in reversed(colors) if c not in model_colors)
    page.choose(corrected)
    assert page.checked(colors) == {corrected}
    edited = page.edit_caption(0, EDIT)
    assert edited == first + EDIT
    page.shot("box1-edited")

    page.smart_box(BLUE_SQUARE)
    if not auto_accept:
        # one answer brings all its suggestions at once, so the first count the bar shows is the final one
        page.wait(ANSWER_TIMEOUT).until(lambda d: len(page.regions()) == 2 and page.suggestions(),
                                        f"no suggestion for box 2 within {ANSWER_TIMEOUT} s")
        page.shot("box2-suggested")
        assert page.suggestions() == "1 suggestions", \
            f"the bar shows {page.suggestions()!r}: box 1, already accepted and edited, must not be suggested again"
        assert page.caption(0) == edited
        page.accept_suggestions()
    page.wait_described(2)
    page.shot("box2-described")

    assert page.caption(0) == edited, f"box 1's edited caption was replaced by {page.caption(0)!r}"
    assert page.caption(1) and page.caption(1) != edited
    page.select(0)
    assert page.checked(colors) == {corrected}, f"box 1's corrected colour became {page.checked(colors)}"
    page.select(1)
    assert len(page.checked(colors)) == 1, "box 2 came back without a colour"
    page.shot("both-boxes")
    return edited, corrected


def open_new_task(config_name: str, browser, label_studio, project_on):
    """A new task in a project on labeling_configs/<config_name>.xml, opened in the labeling page after logging in.
    Returns (api, project id, task id, the config's names, the page)."""
    api, project_id = project_on(config_name)
    task_id = api.new_task(project_id)
    config = read_config(config_name)
    page = LabelingPage(browser, label_studio.url, config["image"], config["label"])
    page.login(label_studio.user, label_studio.password)
    page.open_task(project_id, task_id)
    return api, project_id, task_id, config, page


def submitted(api, task_id: int, timeout: float = 30.0) -> list:
    """The task's annotations once Label Studio lists any (a submit is saved asynchronously)."""
    deadline = time.monotonic() + timeout
    while not (annotations := api.annotations(task_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return annotations


@pytest.mark.parametrize("auto_accept", [True, False], ids=["auto-accept-on", "auto-accept-off"])
def test_the_next_box_keeps_the_annotators_edits(auto_accept, browser, label_studio, backend, project_on, e2e_logs):
    api, project_id, task_id, config, page = open_new_task("region_attributes", browser, label_studio, project_on)
    edited, corrected = label_two_boxes(page, config, auto_accept)

    page.submit()
    annotations = submitted(api, task_id)
    page.shot("submitted")
    [annotation] = annotations
    captions = {r["id"]: r["value"]["text"][0] for r in annotation["result"] if r.get("from_name") == "caption"}
    assert len(captions) == 2, annotation["result"]
    first = next(rid for rid, text in captions.items() if text == edited)
    second = next(rid for rid in captions if rid != first)

    records = store_regions(backend, project_id, task_id)
    assert set(records) == {first, second}, f"the store holds {sorted(records)} for the task"
    assert records[first].caption == edited and records[first].attributes.get("color") == [corrected]
    assert records[first].prefilled_by == backend.model_version and records[first].changed is True
    assert records[second].caption == captions[second]
    assert records[second].prefilled_by == backend.model_version and records[second].changed is False


def test_two_smart_boxes_on_a_relations_config_keep_the_page(browser, label_studio, backend, project_on, e2e_logs):
    """region_relations.xml: the second box's answer holds relation text but no <Relations> result (one in an
    interactive answer makes Label Studio's editor drop the page: "Failed to resolve reference"); the page stays,
    and the submitted annotation carries both boxes."""
    api, _, task_id, _, page = open_new_task("region_relations", browser, label_studio, project_on)
    page.switch("Auto-Annotation", "bottombar-auto-annotation-toggle", True)
    page.switch("Auto-Accept Suggestions", "bottombar-auto-accept-toggle", True)
    page.smart_box(RED_CIRCLE)
    page.wait_described(1)
    page.smart_box(BLUE_SQUARE)
    page.wait_described(2)
    page.shot("both-boxes")
    page.select(1)  # the editor still answers clicks
    page.submit()
    [annotation] = submitted(api, task_id)
    result = annotation["result"]
    assert len({r["id"] for r in result if r.get("from_name") == "caption"}) == 2, result
    assert [r for r in result if r.get("from_name") == "relation_text" and r["value"]["text"][0].strip()], \
        "the second box came without its relation text"
    assert [r for r in result if r.get("type") == "relation"] == []
