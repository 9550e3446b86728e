"""The notebooks in a real JupyterLab and a real browser, and the offline HTML edition.

Debian's chromium, driven by Playwright (never `playwright install`), headless, offline: every
request that is not to localhost is blocked and recorded, and the tests assert there were none.
JupyterLab runs on copies of the notebooks in a temporary folder, with figures and checkpoints
redirected there, so that no tracked file changes. Screenshots, the server log and the browser
console go to artifacts/browser/.
"""

import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

import nbformat



ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Blocking: every request goes to a proxy that is not there, except those to localhost, which
# chromium never proxies. (Not Playwright's routing: with any route set, JupyterLab's kernel
# never runs a cell.)
NO_PROXY = "--proxy-server=127.0.0.1:9"
# Running all cells: JupyterLab sometimes loses a "Run All" (see run_all_cells), so the test
# watches for progress rather than waiting for one long deadline.
SETTLE_S = 12  # the page's kernel connection unchanged this long (JupyterLab polls sessions every 10 s)
START_TIMEOUT_S = 180  # the first cell (imports) has finished by then, or the click was lost
STALL_TIMEOUT_S = 600  # no prompt changed this long: the run hangs (notebook 03's longest cell takes ~1 min)
WIDGET_TROUBLE = ("Error displaying widget", "Loading widget")


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        message = "the browser tests need Debian's chromium: `sudo apt-get install chromium` (.ci/run does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but chromium is missing; {message}")
        pytest.skip(message)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=[*CHROMIUM_FLAGS, NO_PROXY])
        yield browser
        browser.close()


class OfflinePage:
    """A page in a fresh browser context that only reaches localhost; records what it had to block,
    failed requests and error responses, uncaught page errors and console messages."""

    def __init__(self, browser, name: str):
        self.name, self.blocked, self.failed, self.errors, self.console = name, [], [], [], []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, service_workers="block")
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self._record(request.url))
        self.page.on("websocket", lambda websocket: self._record(websocket.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("requestfailed", lambda request: self.failed.append(f"{request.url} {request.failure}"))
        self.page.on("response", lambda response: response.status >= 400 and self.failed.append(response.url))

    def _record(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            self.blocked.append(url)

    def close(self) -> None:
        """Save how the page looks now (for a failed test) and its console, then close it."""
        self.page.screenshot(path=ARTIFACTS / f"{self.name}_last.png")
        (ARTIFACTS / f"{self.name}_console.log").write_text("\n".join(self.console) + "\n")
        self.context.close()

    def assert_clean(self) -> None:
        assert not self.blocked, f"requests that would have left localhost: {self.blocked}"
        assert not self.errors, f"uncaught errors in the page: {self.errors}"
        assert not self.failed, f"failed requests: {self.failed}"
        text = self.page.evaluate("document.body.textContent")
        for trouble in WIDGET_TROUBLE:
            assert trouble not in text, f"{trouble!r} is shown on the page"


@contextmanager
def offline_page(browser, name: str):
    page = OfflinePage(browser, name)
    try:
        yield page
    finally:
        page.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` (Linux /proc): the kernels a Jupyter server started."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def write_without_outputs(source: Path, target: Path) -> None:
    """Copy a notebook with no outputs, execution counts or saved widget state, as a reader's
    "Clear Outputs of All Cells" leaves it. (Clearing in the page instead sometimes took JupyterLab
    over two minutes for notebook 03's many widget outputs on a busy CI machine.)"""
    notebook = json.loads(source.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["metadata"].pop("widgets", None)
    target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False))


class JupyterLab:
    """`jupyter lab` as `make lab` starts it (the project's jupyter_config/), on 127.0.0.1, a free port
    and no token, serving copies of `notebooks` from `folder`, without their outputs; its log goes
    to artifacts/browser/."""

    def __init__(self, folder: Path, notebooks: list[str]):
        for name in notebooks:
            write_without_outputs(ROOT / "notebooks" / name, folder / name)
        environment = {
            **os.environ,
            "JUPYTER_CONFIG_PATH": str(ROOT / "jupyter_config"),
            "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
            "HELPERS_FIGURES": str(folder / "figures"),
            "HELPERS_CHECKPOINTS": str(folder / "checkpoints"),
        }
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = ARTIFACTS / "jupyterlab.log"
        self.kernels: set[int] = set()
        with open(self.log_path, "w") as log:
            self.server = subprocess.Popen(
                [
                    sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                    f"--port={urlsplit(self.url).port}", "--ServerApp.port_retries=0",
                    "--IdentityProvider.token=", "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={folder}",
                    f"--LabApp.user_settings_dir={folder / 'user_settings'}",
                    f"--LabApp.workspaces_dir={folder / 'workspaces'}",
                ],
                env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(self._answers, 120, f"JupyterLab at {self.url} (log: {self.log_path})")

    def _answers(self) -> bool:
        assert self.server.poll() is None, f"JupyterLab exited; see {self.log_path}"
        try:
            return self.api("status") is not None
        except OSError:
            return False

    def api(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/{path}", data=data, method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def kernels_of(self, notebook: str) -> list[dict]:
        """The server's kernels for `notebook`: id, execution state and open connections each."""
        return [
            {key: session["kernel"][key] for key in ("id", "execution_state", "connections")}
            for session in self.api("sessions") if session["path"] == notebook
        ]

    def note_kernels(self) -> None:
        self.kernels.update(child_pids(self.server.pid))

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        """SIGTERM to the server, then to any kernel still running; wait until every PID is gone."""
        self.note_kernels()
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(timeout=60)
        for pid in self.kernels:
            if is_running(pid):
                os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(map(is_running, self.kernels)), 30, f"the kernels {sorted(self.kernels)} to exit")


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    server = JupyterLab(tmp_path_factory.mktemp("lab"), [f"{name}.ipynb" for name, *_ in SLIDERS])
    yield server
    server.stop()
    assert server.server.returncode is not None and not any(map(is_running, server.kernels))


def click_menu(page, menu: str, item: str) -> None:
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


PROMPTS_JS = "[...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim())"
IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
ERROR_OUTPUT = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
SCRUBBER_IMAGE_JS = "document.querySelector('.widget-output img')?.src"  # the figure the step scrubber shows


STATE_JS = f"""() => ({{
    prompts: {PROMPTS_JS},
    status: document.querySelector(".jp-Notebook-ExecutionIndicator")?.dataset.status ?? null,
    failed: document.querySelector("{ERROR_OUTPUT}") !== null,
}})"""


def settle(page, lab, notebook: str) -> None:
    """Wait until the page shows every cell unrun and an idle kernel, and the server's record of the
    notebook's kernels (which one the page is connected to) has not changed for SETTLE_S seconds.

    On a busy machine JupyterLab can open a notebook on a kernel of its own and then switch to
    another one for the same path; a "Run All" clicked before the switch is lost with the first
    connection (the cells stay unrun and the test waited out its whole deadline in CI)."""
    ready = f"{PROMPTS_JS}.length > 0 && {PROMPTS_JS}.every(p => p === '[ ]:')"
    deadline = time.monotonic() + 180
    stable_since, last = time.monotonic(), None
    while time.monotonic() < deadline:
        kernels = lab.kernels_of(notebook)
        connected = [kernel["id"] for kernel in kernels if kernel["connections"] > 0]
        record = (connected, sorted(kernel["id"] for kernel in kernels))
        if record != last:
            stable_since, last = time.monotonic(), record
        page_ready = page.locator(IDLE).count() == 1 and page.evaluate(ready)
        if len(connected) == 1 and page_ready and time.monotonic() - stable_since >= SETTLE_S:
            return
        time.sleep(1)
    raise AssertionError(f"{notebook}: the page never settled on one idle kernel; the server's kernels: {kernels}")


def watch(page, lab, notebook: str, clicked: float) -> list[str] | None:
    """Follow a run of all cells until the kernel is idle with no cell queued and either the last
    cell has run or a cell failed; return the input prompts ('[1]:', ...). Return None if no cell
    finished within START_TIMEOUT_S (the click was lost); fail if the prompts stop changing for
    STALL_TIMEOUT_S, saying what the page and the server show."""
    changed, last = time.monotonic(), None
    while True:
        state = page.evaluate(STATE_JS)
        prompts, now = state["prompts"], time.monotonic()
        if state != last:
            changed, last = now, state
        finished = [prompt for prompt in prompts if re.fullmatch(r"\[\d+\]:", prompt)]
        if state["status"] == "idle" and "[*]:" not in prompts and (state["failed"] or prompts[-1] in finished):
            return prompts
        if not finished and not state["failed"] and now - clicked > START_TIMEOUT_S:
            return None
        if now - changed > STALL_TIMEOUT_S:
            counts = {prompt: prompts.count(prompt) for prompt in dict.fromkeys(prompts)}
            raise AssertionError(
                f"{notebook}: no prompt changed for {STALL_TIMEOUT_S} s; prompts {counts}, execution "
                f"indicator {state['status']!r}, the server's kernels for it: {lab.kernels_of(notebook)} "
                f"(log: {lab.log_path}; screenshot: {ARTIFACTS})"
            )
        time.sleep(1)


def run_all_cells(page, lab, notebook: str) -> list[str]:
    """Run all cells of a notebook opened without outputs, as a reader would: Run > Run All Cells,
    once the page has settled on its kernel. If that click was lost anyway, reload the page and
    use Kernel > Restart Kernel and Run All Cells (the restart drops anything the lost click left
    queued, so the prompts still count from 1). Returns the input prompts ('[1]:', ...)."""
    settle(page, lab, notebook)
    click_menu(page, "Run", "Run All Cells")
    prompts = watch(page, lab, notebook, time.monotonic())
    if prompts is None:
        page.reload()
        settle(page, lab, notebook)
        click_menu(page, "Kernel", "Restart Kernel and Run All Cells…")
        page.get_by_role("button", name="Confirm Kernel Restart").click()
        prompts = watch(page, lab, notebook, time.monotonic())
    assert prompts is not None, f"{notebook}: no cell ran after Run All, nor after a reload and Restart Kernel and Run All"
    return prompts


# The notebooks with a slider: (notebook, the slider's label, its readout before and after three ArrowRight presses).
SLIDERS = [
    ("01_registration_background", "λ", "0.05", "0.5"),         # the per-pair optimiser, redrawn for each λ
    ("03_training_on_fives", "step", "0", "3"),
    ("04_out_of_distribution", "step", "0", "3"),
    ("05_generality_and_optimisation", "step", "0", "3"),        # 64 steps, past the nine it was trained for
]


@pytest.mark.parametrize(("notebook", "label", "start", "after"), SLIDERS)
def test_notebook_runs_in_jupyterlab_and_the_slider_redraws(browser, lab, notebook, label, start, after):
    with offline_page(browser, f"{notebook}_lab") as tab:
        page = tab.page
        page.goto(f"{lab.url}/lab/workspaces/{notebook}/tree/{notebook}.ipynb")
        prompts = run_all_cells(page, lab, f"{notebook}.ipynb")
        lab.note_kernels()
        assert prompts == [f"[{n}]:" for n in range(1, len(prompts) + 1)], f"not every cell ran: {prompts}"
        errors = page.locator(ERROR_OUTPUT)
        assert errors.count() == 0, errors.first.inner_text()

        slider = page.locator(".widget-slider", has=page.locator("label", has_text=re.compile(f"^{label}$")))
        slider.scroll_into_view_if_needed()
        readout = slider.locator(".widget-readout")
        expect(readout).to_have_text(start)
        before = page.evaluate(SCRUBBER_IMAGE_JS)
        slider.locator(".noUi-handle").focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        expect(readout).to_have_text(after)
        changed = f"before => {SCRUBBER_IMAGE_JS} !== before && {SCRUBBER_IMAGE_JS}"
        after = page.wait_for_function(changed, arg=before, timeout=60_000).json_value()
        assert after.startswith("data:image/png;base64,") and after != before
        page.locator(IDLE).wait_for(timeout=60_000)  # every slider step drawn, for the screenshot
        page.screenshot(path=ARTIFACTS / f"{notebook}_jupyterlab_slider.png")
        tab.assert_clean()

    errors = [line for line in lab.log().splitlines() if line.startswith(("[E ", "[C ")) or "Traceback" in line]
    assert not errors, f"errors in the JupyterLab log {lab.log_path}: {errors}"


@contextmanager
def serve(folder: Path, address: str = "127.0.0.1"):
    """A static HTTP server for `folder` on `address`; yields its URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer((address, 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://{address}:{server.server_address[1]}"
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def html_edition(tmp_path_factory):
    """Every notebook exported to the offline HTML edition, served on localhost; yields its URL."""
    folder = tmp_path_factory.mktemp("html")
    subprocess.run([sys.executable, ROOT / "scripts" / "export_html.py", "--out", folder,
                    *sorted((ROOT / "notebooks").glob("*.ipynb"))], check=True, capture_output=True)
    with serve(folder) as url:
        yield url


def test_offline_html_edition_renders_the_slider_and_the_figures(browser, html_edition):
    notebook = ROOT / "notebooks" / "03_training_on_fives.ipynb"
    figures = sum("image/png" in output.get("data", {}) for cell in nbformat.read(notebook, as_version=4).cells
                  for output in cell.get("outputs", []))
    assert figures >= 4
    with offline_page(browser, "03_html") as tab:
        page = tab.page
        page.goto(f"{html_edition}/{notebook.stem}.html")
        slider = page.locator(".widget-slider", has=page.locator("label", has_text=re.compile("^step$")))
        expect(slider.locator(".widget-readout")).to_have_text("0", timeout=60_000)
        expect(page.locator(".widget-output img")).to_have_count(1)
        images = page.locator(".jp-OutputArea-output img")
        expect(images).to_have_count(figures + 1)  # + the scrubber's figure
        page.wait_for_load_state("load")
        widths = images.evaluate_all("images => images.map(image => image.complete && image.naturalWidth)")
        assert all(width > 100 for width in widths), f"figures that did not render: {widths}"
        slider.scroll_into_view_if_needed()
        page.screenshot(path=ARTIFACTS / f"{notebook.stem}_html.png")
        tab.assert_clean()


def formulas(notebook: Path) -> int:
    """How many formulas ($...$ and $$...$$) the notebook's markdown holds, outside code spans and
    escaped dollars: its markdown cells and the markdown its code cells rendered (the sentences
    built from computed values, see tests/test_notebook_numbers.py)."""
    sources = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown":
            sources.append(cell.source)
        for output in cell.get("outputs", []):
            if "text/markdown" in output.get("data", {}):
                sources.append(output["data"]["text/markdown"])
    count = 0
    for source in sources:
        text = re.sub(r"`[^`]*`", "", source.replace(r"\$", ""))
        count += len(re.findall(r"\$\$.+?\$\$|\$[^$\n]+?\$", text, flags=re.DOTALL))
    return count


@pytest.mark.parametrize("notebook", sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb")))
def test_offline_html_edition_typesets_every_formula(browser, html_edition, notebook):
    expected = formulas(ROOT / "notebooks" / f"{notebook}.ipynb")
    with offline_page(browser, f"{notebook}_html_maths") as tab:
        page = tab.page
        page.goto(f"{html_edition}/{notebook}.html")
        page.wait_for_function("window.MathJax?.startup?.promise !== undefined", timeout=60_000)
        page.evaluate("MathJax.startup.promise")  # resolves when the first typesetting is done
        assert page.locator("mjx-container").count() == expected
        errors = page.locator("mjx-merror").all_inner_texts()
        assert not errors, f"formulas MathJax could not typeset: {errors}"
        tab.assert_clean()


def test_the_browser_cannot_leave_localhost(browser, tmp_path):
    """A server that Python reaches by this machine's host name, the browser does not."""
    (tmp_path / "page.txt").write_text("reached")
    with serve(tmp_path, "0.0.0.0") as url:
        outside = url.replace("0.0.0.0", socket.gethostname()) + "/page.txt"
        with urllib.request.urlopen(outside, timeout=10) as response:
            assert response.read() == b"reached"
        with offline_page(browser, "offline") as tab:
            outcome = tab.page.evaluate("url => fetch(url, {mode: 'no-cors'}).then(() => 'reached', () => 'blocked')", outside)
            assert outcome == "blocked"
            assert tab.blocked == [outside]
