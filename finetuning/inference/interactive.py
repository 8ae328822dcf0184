"""``inference.py --interactive``: a prompt loop on stdin that streams each answer, with line editing on a
terminal, a running conversation for chat-trained models, and Ctrl-C that never ends in a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TextIO

from finetuning.inference.generation import Generator, user_turn

EXIT_WORDS = ("exit", "quit")
RESET_COMMAND = "/reset"  # chat: start a new conversation


def _line_reader(stdin: TextIO, stdout: TextIO) -> Callable[[], str]:
    """Lines from ``stdin``; on a terminal through ``input`` with readline, so arrow keys and history work."""
    if stdin is sys.stdin and stdin.isatty() and stdout is sys.stdout:
        with contextlib.suppress(ImportError):  # absent on some platforms: plain input() still works
            import readline  # noqa: F401  (importing it is what turns line editing on for input())

        def read() -> str:
            try:
                return input("> ") + "\n"
            except EOFError:
                return ""

        return read
    return stdin.readline


def interactive(generator: Generator, stdin: TextIO, stdout: TextIO) -> int:
    """A prompt loop: each instruction's answer streams to ``stdout``. Returns how many were answered.

    A chat-trained model gets the conversation so far with each new turn (``/reset`` forgets it). Ctrl-C while
    an answer streams cancels that answer; at the prompt it ends the session, as Ctrl-D, ``exit`` or EOF do.
    """
    chat = generator.rendering.chat
    if stdin.isatty():
        reset = ", /reset forgets the conversation" if chat else ""
        print(f"Type an instruction and press Enter ('exit' or Ctrl-D to quit{reset}).", file=stdout, flush=True)
    read = _line_reader(stdin, stdout)
    history: list[dict[str, str]] = []
    answered = 0
    while True:
        try:
            line = read()
        except KeyboardInterrupt:
            print(file=stdout, flush=True)
            break
        instruction = line.strip()
        if not line or instruction.lower() in EXIT_WORDS:
            break
        if instruction == RESET_COMMAND:
            history.clear()
            continue
        if not instruction:
            continue
        turn = user_turn(instruction)
        try:
            answer = generator.stream({"messages": [*history, turn]} if chat else instruction, stdout)
        except KeyboardInterrupt:
            print("\n[answer cancelled]", file=stdout, flush=True)
            continue
        answered += 1
        if chat:
            history += [turn, {"role": "assistant", "content": answer}]
    return answered
