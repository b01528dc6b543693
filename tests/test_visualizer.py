"""puzzle_visualizer.html in headless Chromium: it reads a built dataset and draws its puzzles.

The page is served with the dataset by a local http server (127.0.0.1 only) that answers Range
requests, and opened as `puzzle_visualizer.html?base=data/`, the page's second way to load besides
the folder picker. The test reads the drawn cells back from the DOM.
"""

import csv
import functools
import http.server
import json
import os
import re
import shutil
import threading

import numpy as np
import pytest

from dataset.common import dihedral_transform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")

ARC_RGB = ["rgb(0, 0, 0)", "rgb(0, 116, 217)", "rgb(255, 65, 54)", "rgb(46, 204, 64)", "rgb(255, 220, 0)",
           "rgb(170, 170, 170)", "rgb(240, 18, 190)", "rgb(255, 133, 27)", "rgb(127, 219, 255)", "rgb(135, 12, 37)"]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges (python's handler ignores Range); records what was asked."""

    requests: list

    def do_GET(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        self.requests.append((self.path, self.headers.get("Range")))
        if match is None:
            return super().do_GET()
        path = self.translate_path(self.path)
        with open(path, "rb") as f:
            f.seek(int(match[1]))
            body = f.read(int(match[2]) - int(match[1]) + 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {match[1]}-{int(match[1]) + len(body) - 1}/{os.path.getsize(path)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(base URL, request log) of an http server on 127.0.0.1 serving tmp_path/site."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(os.path.join(REPO, "puzzle_visualizer.html"), site)
    requests = []
    handler = functools.partial(type("Handler", (RangeHandler,), {"requests": requests}), directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", site, requests
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Offline machine: without the background-networking flags Chromium waits on refused connections.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,800", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def wait_shown(driver, expected):
    def shown(d):
        status = d.find_element("id", "status")
        if "error" in (status.get_attribute("class") or ""):
            raise AssertionError(f"page error: {status.text}")
        return d.execute_script("return document.body.dataset.shown") == expected

    WebDriverWait(driver, 20).until(shown)


def drawn(driver, role):
    """(values, background colours) of the drawn grid, row by row."""
    return driver.execute_script("""
        const rows = Array.from(document.querySelectorAll(`table[data-role=${arguments[0]}] tr`));
        return [rows.map(r => Array.from(r.cells, c => c.dataset.value)),
                rows.map(r => Array.from(r.cells, c => getComputedStyle(c).backgroundColor))];
    """, role)


def click(driver, element_id):
    driver.find_element("id", element_id).click()


# ----------------------------------------------------------------------------------------------
# Datasets made by our builders: the shipped ARC example (tests/make_arc_example.py runs the ARC
# builder) and sudoku / maze datasets built from the shipped sample CSVs.

ARC_EXAMPLE = os.path.join(REPO, "tests", "data", "arc_example", "data")
RAW_ARC = os.path.join(REPO, "dataset", "raw-data", "ARC-AGI", "data", "evaluation")
SAMPLES = os.path.join(REPO, "dataset", "samples")


def raw_task(name):
    with open(os.path.join(RAW_ARC, f"{name}.json")) as f:
        return json.load(f)


def as_text(grid):
    return [[str(v) for v in row] for row in np.asarray(grid).tolist()]


def first_csv_question(path):
    with open(path) as f:
        return next(csv.DictReader(f))["question"]


def test_arc_dataset_drawn_with_names_and_colours(served, browser, tmp_path):
    url, site, requests = served
    shutil.copytree(ARC_EXAMPLE, site / "data")
    with open(site / "data" / "identifiers.json") as f:
        names = json.load(f)
    task = raw_task("00576224")

    browser.get(url + "puzzle_visualizer.html?base=data/")
    wait_shown(browser, "train/all/0/0/0")
    assert browser.find_element("id", "puzzle-name").text == "00576224"
    assert browser.find_element("id", "augmentation").text.endswith("original")
    # Train examples are translated on the canvas; the page draws the grid itself.
    values, backgrounds = drawn(browser, "input")
    assert values == as_text(task["train"][0]["input"])
    assert backgrounds == [[ARC_RGB[v] for v in row] for row in task["train"][0]["input"]]
    assert drawn(browser, "label")[0] == as_text(task["train"][0]["output"])
    assert browser.find_element("id", "label-size").text == "6x6"

    click(browser, "example-next")
    wait_shown(browser, "train/all/0/0/1")
    assert drawn(browser, "input")[0] == as_text(task["train"][1]["input"])

    # The next puzzle of the group is the first augmented copy: colours mapped, then transformed.
    click(browser, "puzzle-next")
    wait_shown(browser, "train/all/0/1/0")
    name = names[2]
    assert browser.find_element("id", "puzzle-name").text == name
    transform, colour_map = int(name.split("_t")[1][0]), np.array([int(d) for d in name[-10:]])
    expected = dihedral_transform(colour_map[np.array(task["train"][0]["input"])], transform)
    assert drawn(browser, "input")[0] == as_text(expected)

    click(browser, "group-next")
    wait_shown(browser, "train/all/1/0/0")
    assert browser.find_element("id", "puzzle-name").text == "0c786b71"
    assert browser.find_element("id", "group-count").text == "4"

    Select(browser.find_element("id", "split")).select_by_value("test")
    wait_shown(browser, "test/all/0/0/0")
    browser.find_element("id", "group").clear()
    browser.find_element("id", "group").send_keys("3\n")
    wait_shown(browser, "test/all/3/0/0")
    click(browser, "example-next")
    wait_shown(browser, "test/all/3/0/1")
    assert browser.find_element("id", "puzzle-name").text == "da2b0fe3"
    assert drawn(browser, "label")[0] == as_text(raw_task("da2b0fe3")["test"][1]["output"])

    shot = tmp_path / "visualizer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    # inputs/labels are only ever read in ranges (the header, then the rows shown), never whole.
    big = [(path, rng) for path, rng in requests if path.endswith(("__inputs.npy", "__labels.npy"))]
    assert big and all(rng is not None for _, rng in big)


def test_folder_picker_finds_the_dataset_inside_the_picked_folder(served, browser):
    """The user's path: a file:// page and the folder picker (here the dataset's parent folder)."""
    _, site, _ = served
    shutil.copytree(ARC_EXAMPLE, site / "datasets" / "arc-example")
    browser.get("file://" + str(site / "puzzle_visualizer.html"))
    browser.find_element("id", "folder").send_keys(str(site / "datasets"))
    wait_shown(browser, "train/all/0/0/0")
    assert browser.find_element("id", "puzzle-name").text == "00576224"
    assert drawn(browser, "input")[0] == as_text(raw_task("00576224")["train"][0]["input"])
    assert "datasets/arc-example" in browser.find_element("id", "status").text


def test_sudoku_and_maze_drawn_as_characters(served, browser):
    from dataset.build_maze_dataset import MazeBuildConfig, build_maze_dataset
    from dataset.build_sudoku_dataset import SudokuBuildConfig, build_sudoku_dataset

    url, site, _ = served
    sudoku, maze = os.path.join(SAMPLES, "sudoku-extreme"), os.path.join(SAMPLES, "maze-30x30-hard")
    build_sudoku_dataset(SudokuBuildConfig(source_repo=sudoku, output_dir=str(site / "sudoku"), subsample_size=2))
    build_maze_dataset(MazeBuildConfig(source_repo=maze, output_dir=str(site / "maze"), subsample_size=2))

    browser.get(url + "puzzle_visualizer.html?base=sudoku")
    wait_shown(browser, "train/all/0/0/0")
    Select(browser.find_element("id", "split")).select_by_value("test")
    wait_shown(browser, "test/all/0/0/0")
    question = first_csv_question(os.path.join(sudoku, "test.csv"))
    values = drawn(browser, "input")[0]
    assert [cell for row in values for cell in row] == [c if c != "." else "" for c in question]
    assert browser.find_element("id", "puzzle-name").text == "<blank>"

    browser.get(url + "puzzle_visualizer.html?base=maze/")
    wait_shown(browser, "train/all/0/0/0")
    Select(browser.find_element("id", "split")).select_by_value("test")
    wait_shown(browser, "test/all/0/0/0")
    values, backgrounds = drawn(browser, "input")
    assert ["".join(row) for row in values] == [first_csv_question(os.path.join(maze, "test.csv"))[r * 30:(r + 1) * 30]
                                                for r in range(30)]
    walls = [bg for row, bg_row in zip(values, backgrounds) for v, bg in zip(row, bg_row) if v == "#"]
    assert walls and set(walls) == {"rgb(51, 51, 51)"}


def test_empty_split_draws_nothing(served, browser, tmp_path):
    from dataset.build_arc_dataset import ArcBuildConfig, build_arc_dataset

    url, site, _ = served
    training = tmp_path / "training"  # not an `evaluation` folder: the test split stays empty
    training.mkdir()
    shutil.copy(os.path.join(RAW_ARC, "00576224.json"), training)
    build_arc_dataset(ArcBuildConfig(dataset_dirs=[str(training)], output_dir=str(site / "arc"), num_aug=0))
    browser.get(url + "puzzle_visualizer.html?base=arc/")
    wait_shown(browser, "train/all/0/0/0")
    Select(browser.find_element("id", "split")).select_by_value("test")
    wait_shown(browser, "test/all/empty")
    assert "0 puzzles, 0 groups" in browser.find_element("id", "status").text
    assert not browser.find_element("id", "input-figure").is_displayed()


def test_missing_dataset_shows_an_error(served, browser):
    url, _, _ = served
    browser.get(url + "puzzle_visualizer.html?base=nowhere/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "status").get_attribute("class") == "error")
    assert "identifiers.json: HTTP 404" in browser.find_element("id", "status").text
