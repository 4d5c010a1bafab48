"""The README, walked as a newcomer walks it: every ```sh / ```bash and ```python block, in
order, in one bash session (`set -euo pipefail`), against a real server started here.

- A block right after the line `<!-- readme-test: skip -->` is not run (it starts a server,
  needs a cluster, Docker or grpcurl); it must still parse (`bash -n`).
- A ```python block runs as `python <block>` in the same session: it sees what the shell
  blocks before it exported (GRAFT_URL, GRAFT_KEY, PATH with .venv/bin first).
- `curl` is the real curl with `--fail-with-body`: an error answer fails the walk, with its
  body; one that prints its status with `-w` (an error shown on purpose) runs as written.
- The walk runs in a fresh directory laid out like the repository root for the README: the
  shipped `examples/`, a `.venv` link to this checkout's, and `.graft/admin.key` holding this
  server's admin key; GRAFT_URL and GRAFT_GRPC point at this server.
- The ```json block after `<!-- readme-test: keys of GET /readyz -->` must have the keys the
  server's /readyz really answers (top level, each backbone kind, the int8 gate).

A failure names the block (its README line), shows its text and what it printed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.server import ADMIN_KEY, ROOT, Server

README = ROOT / "README.md"
SKIP = "<!-- readme-test: skip -->"
READYZ_SAMPLE = "<!-- readme-test: keys of GET /readyz -->"
RUN_LANGS = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "py"}
MARK = "@@readme-block"
WALK_TIMEOUT_S = 420
# Every curl fails on an error answer, showing its body; one that prints its own status
# (`-w '%{http_code}'`: the README showing an error on purpose) runs as written.
CURL = """curl() {
  case " $* " in *" -w "*|*" --write-out "*) command curl "$@" ;; *) command curl --fail-with-body "$@" ;; esac
}"""


@dataclass
class Block:
    n: int
    line: int  # where its code starts in README.md (1-based)
    lang: str  # "sh" or "py"; anything else is "" and is not run
    code: str
    marker: str  # the comment right before its fence, if any

    @property
    def label(self) -> str:
        return f"README block {self.n} (README.md line {self.line}, {self.lang})"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i, last_text = 0, ""
    while i < len(lines):
        fence = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not fence:
            if lines[i].strip():
                last_text = lines[i].strip()
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        lang = RUN_LANGS.get(fence.group(1).lower(), fence.group(1).lower())
        marker = last_text if last_text.startswith("<!-- readme-test:") else ""
        blocks.append(Block(len(blocks) + 1, start + 1, lang, "\n".join(body) + "\n", marker))
        last_text, i = "", i + 1
    return blocks


def test_the_readme_is_well_formed_for_the_walk():
    """Fences close, markers sit on something, and there is enough left to walk."""
    text = README.read_text()
    assert text.count("\n```") % 2 == 0, "an unclosed ``` fence in README.md"
    blocks = readme_blocks(text)
    for marker in (SKIP, READYZ_SAMPLE):
        lines = sum(line.strip() == marker for line in text.splitlines())
        assert lines == sum(b.marker == marker for b in blocks), f"{marker} not right before a fence"
    runnable = [b for b in blocks if b.lang in ("sh", "py") and b.marker != SKIP]
    assert len(runnable) >= 10 and any(b.lang == "py" for b in runnable), [b.label for b in runnable]
    for b in blocks:
        if b.lang == "sh":
            r = subprocess.run(["bash", "-n"], input=b.code, capture_output=True, text=True)
            assert r.returncode == 0, f"{b.label} does not parse:\n{b.code}\n{r.stderr}"


@pytest.fixture(scope="module")
def readme_server(graft_home, tmp_path_factory):
    """A server as `make serve` runs it (default settings), on its own ports and registry."""
    tmp = tmp_path_factory.mktemp("readme-server")
    srv = Server(graft_home, tmp / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry.db",
                 GRAFT_JOB_POLL_MS="100").start()
    yield srv
    srv.stop()


def walk_dir(tmp: Path) -> Path:
    """A directory laid out like the repository root, as far as the README needs."""
    work = tmp / "walk"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    (work / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    (work / ".graft").mkdir(mode=0o700)
    (work / ".graft" / "admin.key").write_text(ADMIN_KEY + "\n")
    return work


def walk(blocks: list[Block], work: Path, url: str, grpc_target: str) -> tuple[Block | None, str, int]:
    """Runs the blocks in one bash session. Returns (the failing block or None, its output, rc)."""
    for tool in ("bash", "curl", "jq"):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is not installed: the README's examples need it (e.g. apt-get install {tool})")
    scripts = work / ".readme-walk"
    scripts.mkdir()
    driver = ["set -euo pipefail", CURL]
    for b in blocks:
        path = scripts / f"{b.n:02d}.{b.lang}"
        path.write_text(b.code)
        driver.append(f"printf '\\n{MARK} {b.n}\\n'")  # on a line of its own: answers end without a newline
        driver.append(f"source {path}" if b.lang == "sh" else f"python {path}")
    driver.append(f"printf '\\n{MARK} done\\n'")
    (scripts / "walk.sh").write_text("\n".join(driver) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFT_", "BENTOML_"))}
    env.update(GRAFT_URL=url, GRAFT_GRPC=grpc_target, PATH=f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    log = scripts / "output.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(scripts / "walk.sh")], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(WALK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = -9
    output = log.read_text(errors="replace")
    parts = re.split(rf"^{MARK} (\S+)$", output, flags=re.M)  # ["", "1", out1, "2", out2, …]
    ran = dict(zip(parts[1::2], parts[2::2]))
    if rc == 0 and "done" in ran:
        return None, output, 0
    last = [k for k in ran if k != "done"][-1]
    return next(b for b in blocks if str(b.n) == last), ran[last], rc


def test_the_readme_examples_run_in_order_against_the_server(readme_server, tmp_path):
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang in ("sh", "py") and b.marker != SKIP]
    work = walk_dir(tmp_path)
    failed, output, rc = walk(blocks, work, readme_server.url, readme_server.grpc_target)
    if failed is not None:
        why = f"timed out after {WALK_TIMEOUT_S}s" if rc == -9 else f"exit {rc}"
        pytest.fail(f"{failed.label} failed ({why}):\n{failed.code}\n--- its output (last 6000 characters) ---\n"
                    f"{output[-6000:]}\n--- server log: {readme_server.log_path}", pytrace=False)
    # What the walk left on the server is what the README says it does.
    with readme_server.client() as admin:
        assert admin.get("/v1/tenants/acme/adapters").status_code == 404  # erased at the end of the walk
    assert (work / "pets.zip").is_file() and (work / "cat.jpg").is_file()


def test_the_readyz_sample_has_the_keys_the_server_answers(readme_server):
    sample_blocks = [b for b in readme_blocks(README.read_text()) if b.marker == READYZ_SAMPLE]
    assert len(sample_blocks) == 1 and sample_blocks[0].lang == "json"
    sample = json.loads(sample_blocks[0].code)
    real = httpx.get(f"{readme_server.url}/readyz", timeout=10).json()
    assert set(sample) == set(real)
    by_kind = {b["kind"]: b for b in real["backbones"]}
    assert {b["kind"] for b in sample["backbones"]} == set(by_kind)
    for b in sample["backbones"]:
        assert set(b) == set(by_kind[b["kind"]]), b["id"]
        assert set(b["int8_gate"]) == set(by_kind[b["kind"]]["int8_gate"]), b["id"]
