"""``normserve serve`` refuses bad options with exit status 2 and a message naming the option,
before anything starts: the CLI's ``main`` in this process (the real servers of
tests/service/process all start through ``python -m normserve.cli serve``)."""

from __future__ import annotations

import pytest

from normserve.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--model-repository", "/no/such/dir"], "not a directory"),
    (["--workers", "0"], "must be > 0"),
    (["--device", "tpu"], "invalid choice"),
    (["--max-queue-delay-us", "-1"], "must be >= 0"),
])
def test_cli_refuses_bad_options(args, message, capsys):
    try:
        code = main(["serve", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
