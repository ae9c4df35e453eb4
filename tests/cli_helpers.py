"""The `nanoseek` command called in-process, as the tests of every subsystem drive it.

In-process, an exception other than the ones `main` turns into a message never reaches stderr: it fails the test
by itself. What a test of bad input checks is the other half: exit code 2 and the message, on the one
`nanoseek COMMAND: error: ...` message that `main` (or argparse) prints."""

from __future__ import annotations

import io
import re
import sys

from nanoseek.cli import main


def cli_run(capsys, argv: list[str], stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `nanoseek ARGV`; `stdin` is fed as a pipe gives it (bytes underneath)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def cli_error(capsys, argv: list[str], *needles: str, rc: int = 2) -> str:
    """Run `nanoseek ARGV`, check that it exits `rc` with an error line holding every needle; return stderr."""
    code, _, err = cli_run(capsys, argv)
    assert code == rc, (argv, code, err)
    # one message, from main's handler or argparse (a progress bar may share its line on stderr)
    assert len(re.findall(rf"nanoseek {re.escape(argv[0])}( [a-z]+)?: error: ", err)) == 1, (argv, err)
    for n in needles:
        assert n in err, (n, err)
    return err
