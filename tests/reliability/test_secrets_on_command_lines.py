"""Secrets never travel on a command line (``ps`` shows every process's arguments to every user of the host).

The Makefile may hand the Label Studio token to a program only through its environment or its standard input
(a shell builtin such as ``printf`` piping it), never as an argument.
"""

from __future__ import annotations

import re

from tasks.env import PROJECT_ROOT

SECRETS = ("LABEL_STUDIO_API_KEY",)
# VAR="$$SECRET" (an environment assignment before a command) or printf ... "$$SECRET" | (a builtin into a pipe)
ALLOWED = (
    re.compile(r'^\s*[A-Z_]+="\$\$(?P<name>[A-Z_]+)"\s*\\?$'),
    re.compile(r"^\s*(?:\w+=\$\$\()?printf '[^']*' \"\$\$(?P<name>[A-Z_]+)\" \|"),
)


def recipe_lines() -> list[tuple[int, str]]:
    lines = (PROJECT_ROOT / "Makefile").read_text().splitlines()
    return [(number, line) for number, line in enumerate(lines, start=1) if line.startswith("\t")]


def test_no_secret_is_passed_as_a_command_argument():
    offenders = []
    for number, line in recipe_lines():
        for secret in SECRETS:
            if f"$${secret}" not in line and f"$({secret})" not in line:
                continue
            if not any(pattern.match(line) and pattern.match(line)["name"] == secret for pattern in ALLOWED):
                offenders.append(f"Makefile:{number}: {line.strip()}")
    assert not offenders, "a secret on a command line is visible in ps:\n" + "\n".join(offenders)


def test_the_check_finds_a_token_on_a_curl_command_line():
    line = '\tcode=$$(curl -s -H "Authorization: Token $$LABEL_STUDIO_API_KEY" "$$url/api/projects"); \\'
    assert not any(pattern.match(line) for pattern in ALLOWED)
