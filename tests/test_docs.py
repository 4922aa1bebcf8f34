"""The pages say what the code does: what they link and name exists, the flags they show are
accepted, and the README's quick start runs as written (with tiny settings appended)."""

import functools
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import REPO, TINY_MODEL, TINY_RUN, make_checkout, run_script, write_corpus

PAGES = [
    REPO / "README.md",
    REPO / "CONTRIBUTING.md",
    REPO / "checkpoints" / "README.md",
    REPO / "pretrained" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
SCRIPTS = ("bigram.py", "MODEL.py", "bench.py")
FENCE = re.compile(r"^\s*```")
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`]+)`")
# What names a file of this repository, as opposed to a placeholder (my.txt), a run's output
# (run.pt.png, checkpoints/my.pt) or a folder: these endings, or these names.
REPO_FILE_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".png", ".sh"}
REPO_FILE_NAMES = {"requirements.txt", "requirements-dev.txt", ".ci/run", ".gitignore"}
PATH_LIKE = re.compile(r"[\w.-]+(/[\w.-]+)*")
# The README's sections whose commands a newcomer runs first, in the order they run them.
QUICK_START = ("## Write", "## Train", "## Your own text")
TINY_TRAIN = [*TINY_RUN, "--max-iters", "20", "--eval-interval", "10"]
DEFAULT_CHECKPOINT = "checkpoints/shakespeare.pt"


@functools.cache
def parse(page: Path) -> tuple[list[tuple[int, str, str]], str]:
    """The page's fenced code lines (line number, text, the fence's language) and its prose
    (fenced lines blanked, so that line numbers stay)."""
    code, prose, language = [], [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            language = line.strip().removeprefix("```") if language is None else None
            prose.append("")
        elif language is not None:
            code.append((number, line, language))
            prose.append("")
        else:
            prose.append(line)
    return code, "\n".join(prose)


def where(page: Path, number: int | None = None) -> str:
    name = str(page.relative_to(REPO))
    return f"{name}:{number}" if number else name


def code_commands(page: Path, shell_only: bool = False) -> list[tuple[int, str]]:
    """Lines of the code blocks (of ```bash blocks only, not output, if asked), continuation lines
    joined, a leading `$ ` dropped."""
    commands, pending = [], None
    for number, line, language in parse(page)[0]:
        if shell_only and language not in {"bash", "sh", "shell", "console"}:
            continue
        start, text = pending or (number, "")
        text += line.removeprefix("$ ")
        if text.endswith("\\"):
            pending = (start, text[:-1] + " ")
            continue
        pending = None
        commands.append((start, text))
    return commands


def inline_code(page: Path) -> list[str]:
    """Inline code of the prose, leaving out link texts whose target is a web address."""
    prose = LINK.sub(lambda m: "" if "://" in m[2] else m[0], parse(page)[1])
    return [" ".join(span.split()) for span in INLINE_CODE.findall(prose)]


def script_calls(text: str) -> list[tuple[str, list[str]]]:
    """(script, arguments) of each bigram.py / MODEL.py / bench.py call in one shell line."""
    if not re.search(r"\b(bigram|MODEL|bench)\.py\b", text):
        return []
    tokens = shlex.split(text, comments=True)
    calls = []
    for i, token in enumerate(tokens):
        script = Path(token).name
        if script in SCRIPTS and token.endswith(".py"):
            args = []
            for arg in tokens[i + 1 :]:
                if arg in {"|", ">", ">>", "&&", ";", "||", "2>&1"}:
                    break
                args.append(arg)
            calls.append((script, args))
    return calls


def looks_like_repo_file(token: str) -> bool:
    token = token.strip("'\",;:()")
    if not PATH_LIKE.fullmatch(token) or token.startswith(("../", "/")):
        return False
    if ".pt" in token:  # a run's outputs are named after their checkpoint: run.pt.png
        return False
    return token in REPO_FILE_NAMES or Path(token).suffix in REPO_FILE_SUFFIXES


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, - for a space."""
    headings = re.findall(r"^#+ (.+)$", parse(page)[1], flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@functools.cache
def accepted_flags(script: str) -> frozenset[str]:
    """Every option string the script's --help names, --no- forms included."""
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))


def readme_section(heading: str) -> list[tuple[int, str]]:
    """The code lines of the README section whose heading starts with `heading`."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    assert starts, f"README.md has no section {heading!r}"
    end = next(
        (i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
    )
    numbers = range(starts[0] + 1, end + 1)
    return [(n, text) for n, text in code_commands(REPO / "README.md", True) if n in numbers]


def test_every_link_and_repository_path_on_the_pages_exists():
    missing = []
    for page in PAGES:
        for target in (m[2] for m in LINK.finditer(parse(page)[1])):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                missing.append(f"{where(page)}: link {target}")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                missing.append(f"{where(page)}: link {target} (no such heading)")
        named = [t for span in inline_code(page) for t in span.split()]
        named += [t for _, line in code_commands(page) for t in line.split()]
        for token in filter(looks_like_repo_file, named):
            if not (REPO / token.strip("'\",;:()")).exists():
                missing.append(f"{where(page)}: {token}")
    assert not missing, "named on the pages but not in the repository:\n" + "\n".join(missing)


def test_every_flag_the_pages_give_a_script_is_one_it_accepts():
    unknown = []
    for page in PAGES:
        lines = code_commands(page) + [(None, span) for span in inline_code(page)]
        for number, text in lines:
            for script, args in script_calls(text):
                for flag in (a.split("=")[0] for a in args if a.startswith("-")):
                    if flag not in accepted_flags(script):
                        unknown.append(f"{where(page, number)}: {script} {flag}")
    assert not unknown, "flags the programs do not accept:\n" + "\n".join(unknown)


def test_no_command_names_a_path_a_reader_does_not_have():
    private = []
    for page in PAGES:
        for number, text in code_commands(page):
            if "/tmp/" in text or "../shared" in text:
                private.append(f"{where(page, number)}: {text.strip()}")
    assert not private, "commands with paths outside the repository:\n" + "\n".join(private)


def test_readme_is_a_short_guide_with_the_essentials_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 300, f"README.md has {len(readme)} lines"
    code = code_commands(REPO / "README.md")
    first = [text.split("#")[0].strip() for n, text in code if n <= 120]
    cpu_torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    for command in (cpu_torch, "pip install -r requirements.txt", "python bigram.py"):
        assert command in first, f"{command!r} is not in a code block of the first 120 lines"
    assert any(c.startswith("python MODEL.py") for c in first), "no python MODEL.py by line 120"
    own_text = [c for c in first if c.startswith("python bigram.py --data")]
    assert own_text, "no python bigram.py --data ... (your own text) by line 120"


def test_readme_gives_ci_its_test_command():
    commands = [text.split("#")[0].strip() for _, text in code_commands(REPO / "README.md")]
    assert "python -m pytest -q" in commands


def test_readme_quick_start_runs_as_written(tmp_path):
    commands = [
        (n, shlex.split(text, comments=True))
        for heading in QUICK_START
        for n, text in readme_section(heading)
    ]
    commands = [(n, argv) for n, argv in commands if argv]
    for n, argv in commands:
        assert argv[0] == "python" and argv[1] in SCRIPTS, f"README.md:{n}: {argv}"
    assert {argv[1] for _, argv in commands} == {"bigram.py", "MODEL.py"}

    checkout = make_checkout(tmp_path / "checkout", shipped=True)
    # The corpora the commands read, holding every character of the README's prompts.
    prompts = "".join(a[i + 1] for _, a in commands for i, x in enumerate(a) if x == "--prompt")
    corpora = ["data/input.txt"]
    corpora += [a[i + 1] for _, a in commands for i, x in enumerate(a) if x == "--data"]
    for seed, name in enumerate(dict.fromkeys(corpora)):
        path = checkout / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_corpus(path, seed=seed)
        path.write_text(path.read_text(encoding="utf-8") + prompts, encoding="utf-8")

    def run(command):
        n, (_, script, *args) = command
        if script == "MODEL.py":
            extra = ["--num-tokens", "50"]
        elif "--init-from" in args:  # the shape comes from the checkpoint: no model flags
            extra = TINY_TRAIN[len(TINY_MODEL) :]
        else:
            extra = TINY_TRAIN
        one_thread = {"OMP_NUM_THREADS": "1"}  # two at a time on two cores
        return run_script(script, *args, *extra, repo=checkout, cwd=checkout, env=one_thread)

    # New runs first, then fine-tuning (it reads their checkpoints), then generation; the
    # commands of one wave read nothing the others write, so two run at a time.
    waves = [
        [c for c in commands if c[1][1] == "bigram.py" and "--init-from" not in c[1]],
        [c for c in commands if c[1][1] == "bigram.py" and "--init-from" in c[1]],
        [c for c in commands if c[1][1] == "MODEL.py"],
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for wave in waves:
            for (n, argv), result in zip(wave, pool.map(run, wave), strict=True):
                said = f"README.md:{n}: {' '.join(argv)}"
                assert result.returncode == 0, f"{said}\n{result.stderr}"
                if argv[1] == "MODEL.py":
                    assert len(result.stdout) >= 50, f"{said}: {result.stdout!r}"
                    continue
                args = argv[2:]
                out = args[args.index("--out") + 1] if "--out" in args else DEFAULT_CHECKPOINT
                assert (checkout / out).is_file(), f"{said}: no {out}"
                assert (checkout / f"{out}.jsonl").is_file(), f"{said}: no {out}.jsonl"


@pytest.mark.parametrize(
    "script, some_flags",
    [
        ("bigram.py", {"--data", "--out", "--init-from", "--split-qkv", "--no-split-qkv"}),
        ("MODEL.py", {"--checkpoint", "--prompt", "-i", "--interactive", "--no-kv-cache"}),
        ("bench.py", {"--preset", "--only", "--skip-original"}),
    ],
)
def test_the_accepted_flags_come_from_the_programs_help(script, some_flags):
    # The flag check is only as good as this set: it must hold every form of the real options.
    flags = accepted_flags(script)
    assert some_flags <= flags, sorted(some_flags - flags)
