"""Man pages generated from the tools' own --help: one source for both.

``python -m spoold.manpages DIR`` writes ``DIR/<tool>.1`` for every tool.
The --help text is the single source of truth; this module only wraps it in
roff, so a page can never disagree with the tool.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from datetime import date
from pathlib import Path

SH_TOOLS = ("gsub", "gkill", "gcancel", "ghold", "grelease", "gpause", "gresume", "gprio")
PY_TOOLS = {"gstat": "spoold.tools:gstat_main", "ghist": "spoold.tools:ghist_main",
            "glog": "spoold.tools:glog_main", "grequeue": "spoold.tools:grequeue_main",
            "spoold": "spoold.daemon:main"}
SUMMARY = {
    "gsub": "submit a job to the spool", "gkill": "kill running or cancel pending jobs",
    "gcancel": "cancel pending jobs", "ghold": "hold pending jobs",
    "grelease": "release held jobs", "gpause": "pause the queue", "gresume": "resume the queue",
    "gprio": "change a pending job's priority",
    "gstat": "GPUs, running and pending jobs", "ghist": "finished jobs",
    "glog": "a job's output", "grequeue": "submit finished jobs again",
    "spoold": "the GPU job scheduler daemon",
}


def help_text(tool: str, bin_dir: Path) -> str:
    if tool in SH_TOOLS:
        script = bin_dir / tool
        return subprocess.run(["/bin/sh", str(script), "--help"], capture_output=True,
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
    bin_dir = Path(__file__).resolve().parent.parent / "bin"
    for tool in (*SH_TOOLS, *PY_TOOLS):
        (out / f"{tool}.1").write_text(roff(tool, help_text(tool, bin_dir)))
    print(f"wrote {len(SH_TOOLS) + len(PY_TOOLS)} man pages to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
