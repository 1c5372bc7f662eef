"""The pages people look at, in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium; ``.ci/run`` installs them): the page of ``xcam
serve`` (an image chosen, the prediction the API gives, the overlay drawn, the opacity
slider, a bad file's error) and the ``report.html`` of ``xcam explain --report`` (opened
from disk: sorted, filtered, its rows and links).

``XCAM_SCREENSHOTS=docs`` keeps each page's screenshot there (the README's pictures)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
from serving import call, png, serving

from xcam.pipeline.dataset import make_explainer
from xcam.serve import make_app

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)

# the red channel's spread over the heat canvas, and its size
_CANVAS = """
const c = document.getElementById('heat');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lo = 255, hi = 0;
for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
return [c.width, c.height, hi - lo];
"""


@contextlib.contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1000,900")
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def test_the_page_explains_a_chosen_image(grad_file, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    picture = tmp_path / "sample.png"
    picture.write_bytes(png(0, (120, 160)))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not a picture")
    with serving(make_app(make_explainer(grad_file))) as url, chromium() as browser:
        browser.get(url + "/")
        model = browser.find_element(By.ID, "model")
        WebDriverWait(browser, 30).until(lambda _b: "gradcam" in model.text)
        assert "block3" in model.text and "64×64" in model.text

        browser.find_element(By.ID, "file").send_keys(str(picture))
        heat = browser.find_element(By.ID, "heat")
        WebDriverWait(browser, 60).until(lambda _b: heat.get_attribute("data-drawn") == "1")
        _, api = call(url + "/v1/explain", picture.read_bytes(), "image/png")
        answer = api["images"][0]
        top = answer["predictions"][0]
        shown = browser.find_element(By.ID, "prediction").text
        assert shown.startswith(f"prediction: {top['name']} ({100 * top['probability']:.1f} %")
        assert answer["target_name"] in browser.find_element(By.ID, "explained").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#topk tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == [
            p["name"] for p in answer["predictions"]
        ]
        width, height, spread = browser.execute_script(_CANVAS)
        assert (width, height) == (160, 120) and spread > 50  # the map drawn in colour
        slider = browser.find_element(By.ID, "opacity")
        browser.execute_script(
            "arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'));", slider
        )
        assert heat.value_of_css_property("opacity") == "0.8"
        if os.environ.get("XCAM_SCREENSHOTS"):
            browser.save_screenshot(str(Path(os.environ["XCAM_SCREENSHOTS"]) / "serve_page.png"))

        browser.find_element(By.ID, "file").send_keys(str(bad))
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 30).until(lambda _b: error.is_displayed())
        assert "not a readable image" in error.text


def test_the_report_sorts_filters_and_links_its_rows(grad_file, tmp_path, runner) -> None:
    """A labelled job with ``--report`` (two labels wrong on purpose), its page opened from
    disk: a card per image, sorted by score, filtered by right / wrong and by class, each
    overlay shown and linking to its map."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from xcam.cli import main
    from xcam.demo import sample_images

    rows = ["path,label"]
    for sample in sample_images():
        true = sample.stem.rsplit("_", 1)[0]
        wrong = {"circle_2": "square", "cross_2": "triangle"}.get(sample.stem)
        rows.append(f"{sample},{wrong or true}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ["explain", str(grad_file), str(tmp_path / "labels.csv"), "--target-column", "label"]
    result = runner.invoke(main, [*args, "--out", str(out), "--report"])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output
    images = json.loads((out / "predictions.json").read_text())["images"]
    wrong = [r for r in images if r["correct"] is False]
    assert len(images) == len(sample_images()) and len(wrong) >= 2

    with chromium() as browser:
        browser.get((out / "report.html").as_uri())
        cards = browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
        assert len(cards) == len(images)
        assert (
            f"{len(images) - len(wrong)} predicted right"
            in browser.find_element(By.ID, "summary").text
        )
        Select(browser.find_element(By.ID, "sort")).select_by_value("score-asc")
        scores = [
            float(c.get_attribute("data-score"))
            for c in browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
        ]
        assert scores == sorted(r["score"] for r in images)
        Select(browser.find_element(By.ID, "verdict")).select_by_value("wrong")
        shown = browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
        assert sorted(
            c.find_element(By.CSS_SELECTOR, ".muted").text.split(" · ")[0] for c in shown
        ) == sorted(Path(r["image"]).name for r in wrong)
        assert all("wrong" in c.get_attribute("class") for c in shown)
        Select(browser.find_element(By.ID, "verdict")).select_by_value("")
        Select(browser.find_element(By.ID, "klass")).select_by_value("circle")
        shown = browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
        want = [r for r in images if "circle" in (r["target_name"], r["predictions"][0]["name"])]
        assert len(shown) == len(want) > 0
        first = shown[0]
        assert (
            browser.execute_script("return arguments[0].querySelector('img').naturalWidth", first)
            > 0
        )  # the overlay loaded from disk
        href = first.find_element(By.TAG_NAME, "a").get_attribute("href")
        assert href.endswith(".npy") and Path(href.removeprefix("file://")).is_file()
        if os.environ.get("XCAM_SCREENSHOTS"):
            Select(browser.find_element(By.ID, "klass")).select_by_value("")
            browser.save_screenshot(str(Path(os.environ["XCAM_SCREENSHOTS"]) / "report.png"))
