"""The documentation site: `mkdocs build --strict` builds it, its API page documents every export of
`birth`, and headless Chromium renders the home page and the API page with their headings and
without a broken image.

Chromium is driven through the DevTools protocol on a pipe (`--remote-debugging-pipe`: file
descriptors 3 and 4, NUL-terminated JSON messages), with every host name unresolvable, so the
check reads what a browser shows and reaches no network.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_PAGE = REPO / "docs" / "api.md"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # the site is local files: nothing else is reached
)
# What the page shows once loaded: its headings and, per image, whether it decoded
PAGE_STATE = """
new Promise(done => {
  const report = () => done(JSON.stringify({
    headings: [...document.querySelectorAll("article h1, article h2, article h3, article h4")]
      .map(h => ({level: h.tagName, text: h.textContent.replace("¶", "").trim()})),
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
  }));
  if (document.readyState === "complete") report(); else addEventListener("load", report);
})
"""


def _exports() -> dict[str, tuple[str, str]]:
    """`birth._EXPORTS`, read from the source (importing `birth` would import nothing, but the
    test stays a pure reading of files)."""
    tree = ast.parse((REPO / "birth" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_EXPORTS":
            return ast.literal_eval(node.value)
    raise AssertionError("birth/__init__.py has no _EXPORTS")


def test_the_api_page_documents_every_export_of_birth():
    """Each `birth.NAME` links to its definition (`mkdocs build --strict` fails on a link to an
    object that no longer exists there, so a moved function shows up here and in the build)."""
    text = API_PAGE.read_text()
    linked = set(re.findall(r"\]\[([\w.]+)\]", text))
    rendered = set(re.findall(r"^::: ([\w.]+)", text, flags=re.MULTILINE))
    for name, (module, attr) in _exports().items():
        path = f"{module}.{attr}"
        assert f"| `{name}` |" in text, f"birth.{name} is missing from docs/api.md"
        assert path in linked, f"birth.{name}: docs/api.md does not link {path}"
        assert path in rendered or module in rendered, f"birth.{name}: docs/api.md renders no {path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs tools are not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


class DevTools:
    """A headless Chromium driven through the DevTools protocol on a pipe."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser, self._in = os.pipe()  # we write, the browser reads on fd 3
        self._out, from_browser = os.pipe()  # the browser writes on fd 4, we read

        def fds_3_and_4() -> None:  # in the child, before it closes the other descriptors
            reads, writes = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self.proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds_3_and_4,
            pass_fds=(3, 4),
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout=60.0) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout=60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            self.events.append(self._read(deadline))

    def page_state(self, url: str) -> dict:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        result = self.call(
            "Runtime.evaluate",
            {"expression": PAGE_STATE, "awaitPromise": True, "returnByValue": True},
            session,
        )
        return json.loads(result["result"]["value"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._in)
        os.close(self._out)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install -y chromium): the rendered pages go unchecked"
        )
    tools = DevTools(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield tools
    tools.close()


def _texts(state: dict, level: str) -> list[str]:
    return [h["text"] for h in state["headings"] if h["level"] == level]


def _assert_images_load(state: dict, page: str) -> None:
    broken = [image["src"] for image in state["images"] if not image["ok"]]
    assert broken == [], f"{page}: broken images {broken}"


def test_home_page_renders_its_headings_and_figure(site, browser):
    state = browser.page_state((site / "index.html").as_uri())
    assert _texts(state, "H1") == ["birth"]
    assert "Where to go" in _texts(state, "H2")
    assert any(image["src"].endswith("figures/learning_order.png") for image in state["images"])
    _assert_images_load(state, "index.html")


def test_api_page_renders_the_documented_modules(site, browser):
    state = browser.page_state((site / "api" / "index.html").as_uri())
    assert _texts(state, "H1") == ["Python API"]
    sections = _texts(state, "H2")
    for title in ("The birth package", "The experiment registry", "The task protocol", "The probes"):
        assert title in sections, sections
    documented = " ".join(_texts(state, "H3") + _texts(state, "H4"))
    for name in ("train", "all_probes", "memory_recall", "run_experiment", "Task", "circuit_probes"):
        assert re.search(rf"\b{name}\b", documented), f"{name} is not documented on the API page"
    _assert_images_load(state, "api/index.html")
