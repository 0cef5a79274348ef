"""Errors of timm_stim, and the one wrapper that turns them into exit codes for every command.

Two kinds of failure reach a user:

* ``InputError`` (exit code 2): bad input, found before any expensive work and before any
  file is written. Its message names the value, what was expected and how to fix it.
* ``CommandFailed`` (exit code 1, or its own ``exit_code``): the work ran, and a later step
  failed (e.g. publishing to the Hub after training); ``report()`` says what was kept and how
  to retry.

``run_command`` is the single place where these become exit codes and messages, and where a
command's cleanups run however it ends (``at_command_exit``: e.g. a run's claim on its output
folder is released); the model name check and the Hub-name prefixes are defined here once too.
"""
import atexit
import contextlib
import contextvars
import difflib
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

__all__ = [
    'InputError', 'UnsupportedModelError', 'CommandFailed', 'NonFiniteLossError', 'NonFiniteModelError',
    'run_command', 'command_main', 'command_prog', 'check_model_name',
    'HUB_PREFIXES', 'is_hub_name', 'EXIT_INPUT', 'EXIT_FAILED', 'EXIT_INTERRUPTED', 'at_command_exit',
]

_logger = logging.getLogger('timm_stim')

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C'd program

# Names timm.create_model resolves to a model in timm's Hugging Face format instead of a registered name.
HUB_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:')


class InputError(ValueError):
    """Bad input (an option, a file, a model name), found before any expensive work or any write.

    A ``ValueError`` so that library callers validating input can catch both alike.
    """

    exit_code = EXIT_INPUT


class UnsupportedModelError(InputError):
    """The model has no adapter, or its structure is not what its family's adapter expects."""


class CommandFailed(RuntimeError):
    """A command did its main work, then a later step failed; ``report()`` is what the user reads."""

    exit_code = EXIT_FAILED

    def report(self) -> str:
        """The text printed for this failure (default: the message)."""
        return str(self)


class NonFiniteLossError(CommandFailed):
    """A term of a training step is NaN or infinite (raised at the step, before the optimizer steps).

    Attributes:
        term: the term that went non-finite (``loss``, ``task_loss``, ``stim_kl[2] (depths 2,1,2,2)``,
            ``grad_norm``, ...).
        value: its value (NaN or +-inf).
    """

    def __init__(self, term: str, value: float, message: Optional[str] = None):
        super().__init__(message or f'the {term} of a training step is {value} (not finite).')
        self.term, self.value = term, value


class NonFiniteModelError(CommandFailed):
    """Weights hold NaN or infinite values: they are neither saved as a checkpoint nor published.

    Attributes:
        tensors: the names of the non-finite tensors.
    """

    def __init__(self, message: str, tensors: Sequence[str] = (), exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.tensors, self.exit_code = list(tensors), exit_code


def is_hub_name(name: str) -> bool:
    """Whether ``name`` is a ``hf-hub:`` / ``local-dir:`` model source rather than a registered timm name."""
    return isinstance(name, str) and name.startswith(HUB_PREFIXES)


def check_model_name(name: Any, option: str = '--model') -> None:
    """Raise ``InputError`` unless ``name`` is a timm model name or a ``hf-hub:`` / ``local-dir:`` source.

    Args:
        name: the model name given by the user.
        option: the option it came from, named in the message.
    """
    import timm
    if isinstance(name, str) and (is_hub_name(name) or timm.is_model(name)):
        return
    close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ' See timm.list_models().'
    raise InputError(f'{option} {name!r} is not a timm model.{hint}')


# The cleanups of the command running now (``run_command``): a context variable, not a global, so that
# commands run one inside another (or in threads) each end with their own.
_COMMAND_EXIT: 'contextvars.ContextVar[Optional[contextlib.ExitStack]]' = contextvars.ContextVar(
    'timm_stim_command_exit', default=None)


def at_command_exit(callback: Callable[[Optional[BaseException]], None]) -> None:
    """Call ``callback(error)`` when the running command ends, however it ends (``error`` is None on success).

    A command's resources that must not outlive it (a claim on an output folder) are released
    here, also when it fails, is interrupted or is called in-process (tests, notebooks). Outside
    ``run_command`` the callback runs at interpreter exit.
    """
    stack = _COMMAND_EXIT.get()
    if stack is None:
        atexit.register(callback, None)
        return
    stack.push(lambda exc_type, exc, tb: callback(exc))


def run_command(fn: Callable[[], Any], *, interrupted_hint: Optional[str] = None) -> Any:
    """Run a command's body; turn timm_stim's errors into a message and an exit code.

    On success returns what ``fn`` returns. ``InputError`` and ``CommandFailed`` are logged at
    ERROR level (no traceback; the log format adds the one prefix, ``ERROR: ``, as timm's logging
    does; the record's ``timm_stim_error`` says which kind) and end the program with
    ``SystemExit(exit_code)``, as argparse does for bad options; Ctrl-C ends it with exit code
    130 after ``interrupted_hint`` (if any) is logged. Any other exception is a bug and keeps
    its traceback.

    Args:
        fn: the command's body, called without arguments.
        interrupted_hint: what to log when the user interrupts (e.g. how to resume).
    """
    stack = contextlib.ExitStack()
    token = _COMMAND_EXIT.set(stack)
    try:
        with stack:  # the command's cleanups (at_command_exit) run before its error is reported
            return fn()
    except InputError as e:
        _logger.error(str(e), extra={'timm_stim_error': 'input'})
        raise SystemExit(e.exit_code) from None
    except CommandFailed as e:
        _logger.error(e.report(), extra={'timm_stim_error': 'failed'})
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        _logger.error('Interrupted.' + (f' {interrupted_hint}' if interrupted_hint else ''))
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        _COMMAND_EXIT.reset(token)


def command_prog(command: str) -> str:
    """The program name a command's usage and error lines show: the way the user started it.

    ``timm-stim analyze`` when run by the ``timm-stim`` script, ``train_stim.py`` for that script,
    else ``python -m timm_stim analyze``.

    Args:
        command: the ``timm-stim`` command (``train``, ``analyze``, ...).
    """
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    if script in ('timm-stim', 'timm-stim.exe'):
        return f'timm-stim {command}'
    if command == 'train' and script.endswith('.py') and script != '__main__.py':
        return script  # python train_stim.py
    return f'python -m timm_stim {command}'


def setup_command_logging() -> None:
    """Log as timm's train.py does (INFO lines plain, others ``LEVEL: message``) unless logging is already set up."""
    if not logging.getLogger().handlers:
        from timm.utils import setup_default_logging
        setup_default_logging()


def command_main(body: Callable[[Sequence[str]], Any], argv: Optional[Sequence[str]] = None) -> Any:
    """``run_command(lambda: body(argv))`` with ``argv`` defaulting to ``sys.argv[1:]``, logging as ``train``."""
    args = list(sys.argv[1:] if argv is None else argv)
    setup_command_logging()
    return run_command(lambda: body(args))
