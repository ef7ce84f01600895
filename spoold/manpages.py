"""Man pages generated from the tools' own --help: one source for both.

``python -m spoold.manpages DIR`` writes ``DIR/<tool>.1`` for every tool.
The --help text is the single source of truth; this module only wraps it in
roff, so a page can never disagree with the tool.

The sh tools' help comes from running them: from ``bin/`` in a checkout,
else from where pip put the package's scripts (``script_dirs``), so the
pages can be made from a normal, non-editable install too.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
from datetime import date
from pathlib import Path

SH_TOOLS = ("gsub", "gkill", "gcancel", "ghold", "grelease", "gpause", "gresume", "gprio", "gdrain")
PY_TOOLS = {"gstat": "spoold.tools:gstat_main", "ghist": "spoold.tools:ghist_main",
            "glog": "spoold.tools:glog_main", "grequeue": "spoold.tools:grequeue_main",
            "spoold": "spoold.daemon:main"}
SUMMARY = {
    "gsub": "submit a job to the spool", "gkill": "kill running or cancel pending jobs",
    "gcancel": "cancel pending jobs", "ghold": "hold pending jobs",
    "grelease": "release held jobs", "gpause": "pause the queue", "gresume": "resume the queue",
    "gprio": "change a pending job's priority", "gdrain": "drain a GPU, or return it",
    "gstat": "GPUs, running and pending jobs", "ghist": "finished jobs",
    "glog": "a job's output", "grequeue": "submit finished jobs again",
    "spoold": "the GPU job scheduler daemon",
}


def script_dirs() -> list[Path]:
    """Where the sh tools may be, first match wins: a checkout's bin/ beside
    the package, then the scripts folder of this interpreter's install scheme
    (a venv's bin/), of the user scheme (pip install --user), and of a
    PREFIX/lib/pythonX.Y/site-packages install (pip install --prefix)."""
    here = Path(__file__).resolve().parent
    dirs = [here.parent / "bin", Path(sysconfig.get_path("scripts")),
            Path(sysconfig.get_path("scripts", f"{os.name}_user"))]
    if here.parent.name in ("site-packages", "dist-packages"):
        dirs.append(here.parents[3] / "bin")
    return dirs


def tool_path(tool: str) -> Path:
    """The sh tool ``tool``: in ``script_dirs``, else on PATH."""
    for folder in script_dirs():
        if (folder / tool).is_file():
            return folder / tool
    found = shutil.which(tool)
    if found:
        return Path(found)
    raise FileNotFoundError(f"{tool} is not installed: not in "
                            f"{', '.join(map(str, script_dirs()))} nor on PATH "
                            "(pip install spoold puts it beside the Python tools)")


def help_text(tool: str) -> str:
    if tool in SH_TOOLS:
        return subprocess.run(["/bin/sh", str(tool_path(tool)), "--help"], capture_output=True,
                              text=True, check=True).stdout
    module, func = PY_TOOLS[tool].split(":")
    main = getattr(__import__(module, fromlist=[func]), func)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"])
    return out.getvalue()


def roff(tool: str, text: str) -> str:
    def esc(line: str) -> str:
        line = line.replace("\\", "\\e")
        return ("\\&" + line) if line.startswith((".", "'")) else line

    body = "\n".join(esc(line) for line in text.rstrip().splitlines())
    return (f'.TH {tool.upper()} 1 "{date.today():%Y-%m-%d}" "spoold" "User Commands"\n'
            f".SH NAME\n{tool} \\- {SUMMARY[tool]}\n.SH DESCRIPTION\n.nf\n{body}\n.fi\n"
            ".SH SEE ALSO\ngsub(1), gstat(1), spoold(1); docs/spool-format.md\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "man")
    out.mkdir(parents=True, exist_ok=True)
    try:
        pages = {tool: roff(tool, help_text(tool)) for tool in (*SH_TOOLS, *PY_TOOLS)}
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"spoold.manpages: {e}", file=sys.stderr)
        return 1
    for tool, page in pages.items():
        (out / f"{tool}.1").write_text(page)
    print(f"wrote {len(pages)} man pages to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
