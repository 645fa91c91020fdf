"""The documentation (docs/, built with MkDocs) cannot rot: every command in it is run or checked here.

How the docs mark their commands (docs/index.md, "How to read the commands", says the same to readers):

- A ```bash block is ours. By its first line:
  - `# reference: ...`: NVIDIA's command, shown beside ours; never run, and it must not call this library.
  - `# full size: ...`: a command for GPUs we lack here (a 2B-14B model, 8 GPUs, a Slurm cluster). CHECKED, not
    run: each `cosmos-nemo` / `torchrun -m cosmos_nemo...` command must name a real subcommand and only flags that
    its argparse parser defines (test_every_documented_flag_exists), and each `cosmos-nemo train RECIPE ...` of it
    is built with `cosmos-nemo plan RECIPE --gpus WORLD --gpu-mem 1000 <its overrides>` (test_docs_pages_run), which
    builds the recipe, applies every dotted override and checks the TP/PP/CP layout against WORLD = --nproc or
    --nodes x --gpus-per-node GPUs. The --gpu-mem of 1000 GiB is deliberate: the check is the recipe, overrides and
    layout, not whether it fits a GPU (the parallelism page runs `plan` with real GPU sizes).
  - `# expect error: TEXT`: RUN; it must fail (non-zero exit) and print TEXT (the troubleshooting page).
  - anything else: RUN as written, at the tiny sizes the page uses, on the CPU.
- Blocks of any other language (```text, ```toml, ```json) are not commands.
- Steps that are not built are written as "not yet" in prose and never appear in a ```bash block (NOT_BUILT).

test_docs_pages_run runs every page's blocks in order in one shared workspace (later blocks use earlier outputs,
and the checkpoints page uses the runs of the workflow pages before it, as it says), each block in its own
`bash -euo pipefail` with the environment (exports) of the blocks before it on the same page. Nothing is skipped:
a block is run, checked as above, or is NVIDIA's reference; anything else fails the test.

To run some pages only (while writing one), name them in DOCS_PAGES, comma-separated paths under docs/:

    DOCS_PAGES=workflows/cosmos3-sft.md pytest -q tests/test_docs.py -k test_docs_pages_run

runs those pages and the pages whose outputs they use (PREREQUISITES, transitively; a page not listed there gets
every page before it in nav order), in nav order. The full run (no DOCS_PAGES) is what CI checks.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
# Flags of steps that are not built yet: the docs say "not yet" and no command block may use them.
NOT_BUILT: tuple[str, ...] = ()
PLAN_GPU_MEM = "1000"  # GiB: `plan` checks recipe, overrides and layout here, not the memory fit (see above)
# For DOCS_PAGES: the pages whose workspace outputs a page uses. A page missing here depends on every page before it.
PREREQUISITES: dict[str, tuple[str, ...]] = {
    "workflows/ar-post-training.md": (),  # its own sample videos, token dataset and runs/.../ar_tp2
    "workflows/cosmos3-sft.md": ("workflows/ar-post-training.md",),  # ar_tokens and the ar_tp2 run
}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str

    @property
    def kind(self) -> str:
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        for kind in ("reference", "full size", "expect error"):
            if re.match(rf"# {kind}\b", first):
                return kind
        return "run"

    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def _nav_pages() -> list[str]:
    """The pages in mkdocs.yml's nav order (the order a reader follows, and the order they run in)."""
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    out: list[str] = []

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                walk(value)
            else:
                out.append(value)

    walk(nav)
    return out


def _selected_pages() -> list[str]:
    """The pages test_docs_pages_run runs, in nav order: all, or DOCS_PAGES and their prerequisites."""
    pages = _nav_pages()
    wanted = [p.strip() for p in os.environ.get("DOCS_PAGES", "").split(",") if p.strip()]
    if not wanted:
        return pages
    unknown = [p for p in wanted if p not in pages]
    assert not unknown, f"DOCS_PAGES: {unknown} are not pages of mkdocs.yml's nav ({', '.join(pages)})"
    keep: set[str] = set()
    todo = list(wanted)
    while todo:
        page = todo.pop()
        if page not in keep:
            keep.add(page)
            todo += PREREQUISITES.get(page, pages[: pages.index(page)])
    return [p for p in pages if p in keep]


def _blocks(page: str) -> list[Block]:
    text = (DOCS / page).read_text()
    return [Block(page, text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _commands(block_text: str) -> list[list[str]]:
    """The shell commands of a block: continuation lines joined, comments and blank lines dropped, split on
    `&&`, `;` and `|` so that each `cosmos-nemo ...` is found wherever it stands."""
    joined = re.sub(r"\\\n", " ", block_text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # a heredoc body or similar: not a command line
            continue
        cmd: list[str] = []
        for tok in tokens + [";"]:
            if tok in ("&&", ";", "|", "||"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return out


# --------------------------------------------------------------------------------------------------
# the command-line parsers, introspected in this process


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positional_choices(parser: argparse.ArgumentParser) -> set[str]:
    out: set[str] = set()
    for action in parser._actions:
        if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):
            out |= set(action.choices)
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.fixture(scope="module")
def cli() -> argparse.ArgumentParser:
    from cosmos_nemo.cli import build_parser

    return build_parser()


def _resolve(cli: argparse.ArgumentParser, cmd: list[str]) -> tuple[str, argparse.ArgumentParser, list[str]] | None:
    """For a `cosmos-nemo ...` or `torchrun ... -m cosmos_nemo.X ...` command: (name, parser, its arguments)."""
    import importlib

    if cmd[0] == "cosmos-nemo":
        parser, args, name = cli, cmd[1:], "cosmos-nemo"
        while args and not args[0].startswith("-"):
            subs = _subparsers(parser)
            if args[0] not in subs:
                break
            parser, name, args = subs[args[0]], f"{name} {args[0]}", args[1:]
        return name, parser, args
    if cmd[0] in ("torchrun", "python") and "-m" in cmd:
        module = cmd[cmd.index("-m") + 1]
        if module.startswith("cosmos_nemo"):
            if module == "cosmos_nemo":
                return _resolve(cli, ["cosmos-nemo", *cmd[cmd.index("-m") + 2:]])
            mod = importlib.import_module(module)
            if hasattr(mod, "build_parser"):
                return module, mod.build_parser(), cmd[cmd.index("-m") + 2:]
            # a module that builds its parser inside main(): its flags are read from its --help
            text = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                                  timeout=300, env=_env()).stdout
            parser = argparse.ArgumentParser(add_help=False)
            for flag in sorted(set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", text))):
                parser.add_argument(flag, nargs="?")
            return module, parser, cmd[cmd.index("-m") + 2:]
    return None


def _documented_commands() -> list[tuple[Block, list[str]]]:
    out = []
    for page in _nav_pages():
        for block in _blocks(page):
            if block.lang == "bash" and block.kind != "reference":
                out += [(block, cmd) for cmd in _commands(block.text)]
    return out


# --------------------------------------------------------------------------------------------------
# fast checks


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    pages = _nav_pages()
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk, "every docs/*.md page must be in mkdocs.yml's nav, and only those"


def test_blocks_are_marked_and_reference_blocks_do_not_call_us():
    for page in _nav_pages():
        for block in _blocks(page):
            if block.lang in ("sh", "shell", "console"):
                pytest.fail(f"{block.where()}: commands go in ```bash blocks (see tests/test_docs.py), not ```{block.lang}")
            if block.lang == "bash" and block.kind == "reference":
                assert not re.search(r"\bcosmos-nemo\b|-m cosmos_nemo\b", block.text), (
                    f"{block.where()}: a `# reference:` block is NVIDIA's command; put ours in its own block")
            if block.lang == "bash" and block.kind != "reference":
                for flag in NOT_BUILT:
                    assert flag not in block.text, f"{block.where()}: {flag} is not built yet; write it as 'not yet'"


def test_every_mentioned_subcommand_exists(cli):
    """Every `cosmos-nemo X [Y]` in the docs' code (inline `code` spans and our ```bash blocks) names a real command
    (and subcommand)."""
    top = _subparsers(cli)
    mention = re.compile(r"cosmos-nemo ([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9-]*))?")
    found = 0
    for page in _nav_pages():
        raw = (DOCS / page).read_text()
        code = [b.text for b in _blocks(page) if b.lang == "bash" and b.kind != "reference"]
        code += re.findall(r"`([^`]+)`", FENCE.sub("", raw))
        text = "\n".join(c.replace("\\\n", " ") for c in code)
        for m in mention.finditer(text):
            first, second = m.group(1), m.group(2)
            line = m.group(0)
            assert first in top, f"docs/{page}: `{line}`: `cosmos-nemo {first}` is not a command ({', '.join(top)})"
            subs = set(_subparsers(top[first])) | _positional_choices(top[first])
            if subs and second is not None and first != "generate":
                assert second in subs, (f"docs/{page}: `cosmos-nemo {first} {second}`: no such subcommand "
                                        f"({', '.join(sorted(subs))})")
            if first == "generate" and second is not None and second not in _subparsers(top[first]):
                pass  # `cosmos-nemo generate` followed by prose
            found += 1
    assert found > 40, f"only {found} mentions of cosmos-nemo commands in the docs: is the pattern broken?"


def test_every_documented_flag_exists(cli):
    """Each `--flag` of each of our commands in a ```bash block (run or full size) is defined by that command's
    parser: the docs cannot show a flag that `--help` does not list."""
    checked = 0
    for block, cmd in _documented_commands():
        resolved = _resolve(cli, cmd)
        if resolved is None:
            continue
        name, parser, args = resolved
        known = _options(parser)
        for arg in args:
            if arg.startswith("--") and arg != "--":
                flag = arg.split("=", 1)[0]
                assert flag in known, f"{block.where()}: `{name}` has no flag {flag} (see `{name} --help`)"
                checked += 1
        if name == "cosmos-nemo":
            pytest.fail(f"{block.where()}: `{' '.join(cmd[:3])}` names no cosmos-nemo command")
    assert checked > 100, f"only {checked} flags checked: is the block parser broken?"


def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict` (what CI checks: broken links, nav, missing pages are errors)."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: run `bash scripts/setup.sh --dev` (requirements-dev.txt)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()


# --------------------------------------------------------------------------------------------------
# every page, run


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _plan_command(cmd: list[str]) -> list[str] | None:
    """`cosmos-nemo train RECIPE [launcher flags] [overrides]` -> the `cosmos-nemo plan` that builds the same recipe
    with the same overrides on the same number of GPUs."""
    if cmd[:2] != ["cosmos-nemo", "train"] or any(a.startswith("--sft-toml") or a.startswith("--sft_toml") for a in cmd):
        return None  # an SFT TOML names its recipe inside the file: its flags are checked, not planned
    args, recipe, overrides, recipe_args = cmd[2:], None, [], []
    nproc, nodes, per_node, executor = 1, 1, 8, "local"
    takes_value = {"--nproc", "--nodes", "--gpus-per-node", "--gpus_per_node", "--account", "--partition", "--time",
                   "--container-image", "--container_image", "--mounts", "--job-dir", "--job_dir", "--ssh-host",
                   "--ssh_host", "--ssh-user", "--ssh_user", "--env", "--name", "--toml", "--executor",
                   "--recipe-arg", "--recipe_arg"}
    i = 0
    while i < len(args):
        a = args[i]
        if a in takes_value:
            value = args[i + 1]
            if a == "--nproc":
                nproc = int(value)
            elif a == "--nodes":
                nodes = int(value)
            elif a in ("--gpus-per-node", "--gpus_per_node"):
                per_node = int(value)
            elif a == "--executor":
                executor = value
            elif a in ("--recipe-arg", "--recipe_arg"):
                recipe_args += ["--recipe-arg", value]
            elif a == "--toml":
                pytest.fail(f"a full-size `train --toml` cannot be checked with plan: {' '.join(cmd)}")
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        if recipe is None:
            recipe = a
        else:
            overrides.append(a)
        i += 1
    world = nodes * per_node if executor == "slurm" else nproc
    return ["cosmos-nemo", "plan", recipe, "--gpus", str(world), "--gpu-mem", PLAN_GPU_MEM, *recipe_args, *overrides]


def _run_block(block: Block, work: Path, envfile: Path, log) -> None:
    expect = None
    if block.kind == "expect error":
        expect = block.text.lstrip().splitlines()[0].split(":", 1)[1].strip()
    script = (f"set -euo pipefail\nsource {shlex.quote(str(envfile))}\n{block.text}\n"
              f"export -p > {shlex.quote(str(envfile))}\n")
    if expect is not None:  # the failing command must not stop the block before we see its output
        script = f"source {shlex.quote(str(envfile))}\n{block.text}\n"
    t0 = time.time()
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    log.append(f"{block.where()} [{block.kind}] {time.time() - t0:.1f}s rc={proc.returncode}")
    if expect is not None:
        assert proc.returncode != 0, f"{block.where()}: expected an error ({expect}); it succeeded:\n{out[-3000:]}"
        assert expect in out, f"{block.where()}: expected the error to say {expect!r}; it said:\n{out[-3000:]}"
    else:
        assert proc.returncode == 0, f"{block.where()} failed (exit {proc.returncode}):\n{block.text}\n--- output\n{out[-6000:]}"


def _check_block(block: Block, log) -> None:
    """Each `cosmos-nemo train` of a full-size block, built by `cosmos-nemo plan` in this process (the CLI's own
    main(), so the imports are paid once for all blocks)."""
    import contextlib
    import io

    from cosmos_nemo.cli import main

    for plan in (p for p in (_plan_command(c) for c in _commands(block.text)) if p):
        t0 = time.time()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                rc = main(plan[1:])
        except SystemExit as e:  # argparse and the CLI's own errors
            rc = e.code if isinstance(e.code, int) else 1
            out.write(str(e.code))
        log.append(f"{block.where()} [full size: {' '.join(plan[:3])} --gpus {plan[4]}] {time.time() - t0:.1f}s rc={rc}")
        assert rc == 0, (f"{block.where()}: the full-size command does not build: {' '.join(plan)}\n"
                         f"{out.getvalue()[-4000:]}")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 45 commands, a dozen of them training or generating; see the README for its time
def test_docs_pages_run(tmp_path):
    """Every page's ```bash blocks, in nav order, in one workspace: run (tiny sizes, CPU), or checked (full size),
    or NVIDIA's reference (not ours). Prints each block's time."""
    work = tmp_path / "work"
    work.mkdir()
    log: list[str] = []
    counts = {"run": 0, "full size": 0, "expect error": 0, "reference": 0}
    t0 = time.time()
    try:
        for page in _selected_pages():
            envfile = tmp_path / f"env_{page.replace('/', '_')}.sh"
            envfile.write_text("")
            for block in _blocks(page):
                if block.lang != "bash":
                    continue
                counts[block.kind] += 1
                if block.kind == "reference":
                    continue
                if block.kind == "full size":
                    _check_block(block, log)
                else:
                    _run_block(block, work, envfile, log)
    finally:
        print("\n".join(log))
        print(f"docs: {counts} in {time.time() - t0:.0f} s")
    if os.environ.get("DOCS_PAGES", "").strip():
        return  # some pages only: the totals below are the whole site's
    assert counts["run"] >= 30 and counts["full size"] >= 5 and counts["reference"] >= 10, counts
