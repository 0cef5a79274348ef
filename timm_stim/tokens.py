"""Hugging Face tokens never shown: in error messages, Hub answers and argparse errors of every command.

``mask_tokens`` replaces the token huggingface_hub would use (``HF_TOKEN`` or ``hf auth login``), every
part of it long enough to identify it (a server may echo a truncated token), and values given on the
command line that may be tokens. ``TokenMaskingParser`` is an ``argparse.ArgumentParser`` whose errors
pass through it: argparse quotes the values it refuses (``unrecognized arguments: --hub-token=hf_...``).
"""
import argparse
import re
import sys
from typing import Any, Iterable, List, NoReturn, Optional, Sequence, Tuple

__all__ = ['MIN_SECRET_PART', 'token_like', 'mask_tokens', 'TokenMaskingParser']

# A run of this many characters of a token, echoed anywhere, is masked (a random 8-character run does
# not occur in a message by chance; a shorter token is masked whole only).
MIN_SECRET_PART = 8
_TOKEN_PREFIX = 'hf_'


def token_like(argv: Sequence[str]) -> List[str]:
    """The values of ``argv`` that may be a token: ``hf_...``, and the value of any option named like ``--*token*``."""
    values = []
    for i, arg in enumerate(argv):
        option, equals, value = arg.partition('=') if arg.startswith('-') else ('', '', arg)
        if 'token' in option.lower():
            values.append(value if equals else (argv[i + 1] if i + 1 < len(argv) else ''))
        elif value.startswith(_TOKEN_PREFIX):
            values.append(value)
    return [v for v in values if v]


def _parts(secret: str) -> Iterable[str]:
    """Every run of ``secret`` of at least ``MIN_SECRET_PART`` characters, longest first."""
    for length in range(len(secret), MIN_SECRET_PART - 1, -1):
        for start in range(len(secret) - length + 1):
            yield secret[start:start + length]


def _mask_secret(text: str, secret: str) -> str:
    text = text.replace(secret, '***')
    if len(secret) < MIN_SECRET_PART:
        return text
    parts = [p for p in dict.fromkeys(_parts(secret)) if p in text]
    for part in parts:  # longest first: a long echo is masked whole, not piecewise
        text = text.replace(part, '***')
    return text


def mask_tokens(text: str, values: Sequence[str] = ()) -> str:
    """``text`` with the token and ``values`` (command-line values that may be tokens) replaced by ``***``.

    The token, and every ``hf_...`` value, is masked wherever it or a run of ``MIN_SECRET_PART``
    characters of it appears. Other ``values`` (the value of an option named like ``--*token*``) are
    masked where they stand whole, so that a short one blanks out no letters of the message.
    """
    try:
        from huggingface_hub import get_token
        token = get_token()
    except Exception:  # no huggingface_hub, or an unreadable token file: nothing of it can be shown
        token = None
    if token:
        text = _mask_secret(text, token)
    for value in values:
        if value.startswith(_TOKEN_PREFIX):
            text = _mask_secret(text, value)
        else:
            text = re.sub(rf'(?<![^\s\'"=]){re.escape(value)}(?![^\s\'",])', '***', text)
    return text


class TokenMaskingParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors never show a token, for every command of timm-stim.

    argparse's errors quote the values they refuse (``unrecognized arguments: --token hf_...``): here the token and
    every value of the command line that may be one (see ``token_like``) show as ``***``.
    """

    def parse_known_args(self, args: Optional[Sequence[str]] = None,
                         namespace: Any = None) -> Tuple[argparse.Namespace, List[str]]:
        self._secrets = token_like(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hint = '; the token comes from HF_TOKEN or `hf auth login`, never from an option' if 'token' in message else ''
        super().error(mask_tokens(message, getattr(self, '_secrets', ())) + hint)
