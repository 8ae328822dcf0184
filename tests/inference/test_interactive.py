"""Unit tests of finetuning/inference/interactive.py with a stand-in generator: Ctrl-C, /reset, chat history."""

from __future__ import annotations

import io

from finetuning.data.templates import Rendering, get_template
from finetuning.inference.interactive import interactive


class FakeGenerator:
    """Answers 'answer N' to the Nth prompt; raises KeyboardInterrupt (Ctrl-C) on the prompt 'slow'."""

    def __init__(self, chat: bool) -> None:
        self.rendering = Rendering(get_template("alpaca"), chat=chat)
        self.prompts: list[object] = []

    def stream(self, record, out) -> str:
        self.prompts.append(record)
        last = record["messages"][-1]["content"] if isinstance(record, dict) else record
        if last == "slow":
            print("partial", end="", file=out)
            raise KeyboardInterrupt
        answer = f"answer {len(self.prompts)}"
        print(answer, file=out)
        return answer


def run(generator, text: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    answered = interactive(generator, io.StringIO(text), out)
    return answered, out.getvalue().splitlines()


def test_ctrl_c_during_an_answer_cancels_it_and_the_session_goes_on():
    answered, lines = run(FakeGenerator(chat=False), "slow\nName a color.\n")
    assert answered == 1 and lines == ["partial", "[answer cancelled]", "answer 2"]


def test_ctrl_c_at_the_prompt_ends_the_session_cleanly():
    class Interrupted(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    generator = FakeGenerator(chat=False)
    assert interactive(generator, Interrupted(), io.StringIO()) == 0 and generator.prompts == []


def test_chat_models_get_the_conversation_so_far_and_reset_forgets_it():
    generator = FakeGenerator(chat=True)
    answered, _ = run(generator, "Hi\nslow\nAnd then?\n/reset\nNew topic\nexit\nignored\n")
    assert answered == 3
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    assert generator.prompts[2] == {
        "messages": [user("Hi"), {"role": "assistant", "content": "answer 1"}, user("And then?")]
    }  # the cancelled turn is not part of the conversation
    assert generator.prompts[3] == {"messages": [user("New topic")]}


def test_instruction_models_get_each_line_alone():
    generator = FakeGenerator(chat=False)
    run(generator, "Hi\nAnd then?\n")
    assert generator.prompts == ["Hi", "And then?"]
