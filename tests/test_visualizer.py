"""puzzle_visualizer.html in headless Chromium: it reads a built dataset and draws its puzzles.

The page is served with the dataset by a local http server (127.0.0.1 only) that answers Range
requests, and opened as `puzzle_visualizer.html?base=data/`, the page's second way to load besides
the folder picker. The test reads the drawn cells back from the DOM.
"""

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
    from selenium.webdriver.chrome.service import Service

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
    from selenium.webdriver.support.ui import WebDriverWait

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
# Small datasets written by hand in the builders' format (SPEC section 2).


def write_split(folder, puzzles, groups, seq_len, vocab_size, identifiers):
    """puzzles: list of (name, [(input tokens, label tokens)]); groups: puzzles per group."""
    os.makedirs(folder)
    rows = [example for _, examples in puzzles for example in examples]
    arrays = {
        "inputs": np.array([r[0] for r in rows], dtype=np.uint8),
        "labels": np.array([r[1] for r in rows], dtype=np.uint8),
        "puzzle_identifiers": np.array([identifiers.index(name) for name, _ in puzzles], dtype=np.int32),
        "puzzle_indices": np.cumsum([0] + [len(e) for _, e in puzzles]).astype(np.int32),
        "group_indices": np.cumsum([0] + groups).astype(np.int32),
    }
    for key, value in arrays.items():
        np.save(os.path.join(folder, f"all__{key}.npy"), value)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size, seq_len=seq_len,
                       num_puzzle_identifiers=len(identifiers), total_groups=len(groups),
                       mean_puzzle_examples=len(rows) / len(puzzles), sets=["all"]), f)


def write_dataset(root, splits, seq_len, vocab_size):
    """splits: split -> (puzzles, groups)."""
    names = {name for puzzles, _ in splits.values() for name, _ in puzzles} - {"<blank>"}
    identifiers = ["<blank>"] + sorted(names)
    os.makedirs(root)
    with open(os.path.join(root, "identifiers.json"), "w") as f:
        json.dump(identifiers, f)
    for split, (puzzles, groups) in splits.items():
        write_split(os.path.join(root, split), puzzles, groups, seq_len, vocab_size, identifiers)


def arc_tokens(grid, top=0, left=0):
    grid = np.asarray(grid, dtype=np.uint8)
    h, w = grid.shape
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[top:top + h, left:left + w] = grid + 2
    if top + h < 30:
        canvas[top + h, left:left + w] = 1
    if left + w < 30:
        canvas[top:top + h, left + w] = 1
    return canvas.reshape(-1)


# ----------------------------------------------------------------------------------------------


def test_arc_dataset_drawn_with_names_and_colours(served, browser, tmp_path):
    url, site, requests = served
    a_in, a_out = np.array([[0, 1, 2], [3, 4, 5]]), np.array([[6, 7], [8, 9]])
    b_in, b_out = np.array([[5]]), np.array([[1, 1, 1]])
    perm = "0987654321"
    colours = np.array([int(d) for d in perm])
    aug = lambda g: dihedral_transform(colours[g], 1)
    train = ([("task_a", [(arc_tokens(a_in, 3, 4), arc_tokens(a_out, 3, 4)), (arc_tokens(b_in), arc_tokens(b_out))]),
              (f"task_a_t1_{perm}", [(arc_tokens(aug(a_in)), arc_tokens(aug(a_out)))]),
              ("task_b", [(arc_tokens(b_out), arc_tokens(b_in))])], [2, 1])
    test = ([("task_b", [(arc_tokens(b_in), arc_tokens(b_out))])], [1])
    write_dataset(str(site / "data"), {"train": train, "test": test}, 900, 12)

    browser.get(url + "puzzle_visualizer.html?base=data/")
    wait_shown(browser, "train/all/0/0/0")
    assert browser.find_element("id", "puzzle-name").text == "task_a"
    values, backgrounds = drawn(browser, "input")
    # Translated by (3, 4) in the canvas; drawn as the grid itself.
    assert values == [[str(v) for v in row] for row in a_in.tolist()]
    assert backgrounds == [[ARC_RGB[v] for v in row] for row in a_in.tolist()]
    assert drawn(browser, "label")[0] == [[str(v) for v in row] for row in a_out.tolist()]
    assert browser.find_element("id", "label-size").text == "2x2"

    click(browser, "example-next")
    wait_shown(browser, "train/all/0/0/1")
    assert drawn(browser, "label")[0] == [["1", "1", "1"]]

    click(browser, "puzzle-next")
    wait_shown(browser, "train/all/0/1/0")
    assert browser.find_element("id", "puzzle-name").text == f"task_a_t1_{perm}"
    assert "augmented copy of task_a: rot90" in browser.find_element("id", "augmentation").text
    values, backgrounds = drawn(browser, "input")
    assert values == [[str(v) for v in row] for row in aug(a_in).tolist()]
    assert backgrounds[0][0] == ARC_RGB[aug(a_in)[0, 0]]

    click(browser, "group-next")
    wait_shown(browser, "train/all/1/0/0")
    assert browser.find_element("id", "puzzle-name").text == "task_b"
    assert browser.find_element("id", "group-count").text == "2"

    from selenium.webdriver.support.ui import Select
    Select(browser.find_element("id", "split")).select_by_value("test")
    wait_shown(browser, "test/all/0/0/0")
    assert browser.find_element("id", "puzzle-name").text == "task_b"
    assert drawn(browser, "input")[0] == [["5"]]

    shot = tmp_path / "visualizer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    # inputs/labels are only ever read in ranges (the header, then the rows shown), never whole.
    big = [(path, rng) for path, rng in requests if path.endswith(("__inputs.npy", "__labels.npy"))]
    assert big and all(rng is not None for _, rng in big)


def test_folder_picker_finds_the_dataset_inside_the_picked_folder(served, browser):
    """The user's path: a file:// page and the folder picker (here the dataset's parent folder)."""
    _, site, _ = served
    b_in, b_out = np.array([[7, 0], [0, 7]]), np.array([[2]])
    write_dataset(str(site / "data" / "arc-tiny"), {"test": ([("only", [(arc_tokens(b_in), arc_tokens(b_out))])], [1])},
                  900, 12)
    browser.get("file://" + str(site / "puzzle_visualizer.html"))
    browser.find_element("id", "folder").send_keys(str(site / "data"))
    wait_shown(browser, "test/all/0/0/0")
    assert browser.find_element("id", "puzzle-name").text == "only"
    assert drawn(browser, "input")[0] == [["7", "0"], ["0", "7"]]
    assert "data/arc-tiny" in browser.find_element("id", "status").text


def test_sudoku_and_maze_drawn_as_characters(served, browser):
    url, site, _ = served
    question = np.array([0, 5, 3] + [0] * 78) + 1  # digit d stored as d + 1, blank as 1
    answer = np.arange(81) % 9 + 2
    write_dataset(str(site / "sudoku"), {"test": ([("<blank>", [(question, answer)])], [1])}, 81, 11)
    maze = np.full(900, 2)
    maze[:30] = 1
    maze[31], maze[32], maze[33] = 3, 5, 4
    write_dataset(str(site / "maze"), {"train": ([("<blank>", [(maze, maze)])], [1])}, 900, 6)

    browser.get(url + "puzzle_visualizer.html?base=sudoku")
    wait_shown(browser, "test/all/0/0/0")
    values = drawn(browser, "input")[0]
    assert len(values) == 9 and values[0][:3] == ["", "5", "3"]
    assert drawn(browser, "label")[0][1] == [str(d) for d in range(1, 10)]
    assert browser.find_element("id", "puzzle-name").text == "<blank>"

    browser.get(url + "puzzle_visualizer.html?base=maze/")
    wait_shown(browser, "train/all/0/0/0")
    values, backgrounds = drawn(browser, "input")
    assert len(values) == 30 and values[0] == ["#"] * 30 and values[1][:5] == [" ", "S", "o", "G", " "]
    assert backgrounds[0][0] == "rgb(51, 51, 51)"


def test_missing_dataset_shows_an_error(served, browser):
    url, _, _ = served
    browser.get(url + "puzzle_visualizer.html?base=nowhere/")
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "status").get_attribute("class") == "error")
    assert "identifiers.json: HTTP 404" in browser.find_element("id", "status").text
