"""`kft chat`: talk to a tuned model, turn after turn, in the run's template.

The model is loaded and its sampler compiled once; each reply is generated from the whole
conversation so far (history), rendered as the run's template renders training examples.
"""

from __future__ import annotations

from kft.generation import sampling

HELP = "/reset starts a new conversation, /exit (or Ctrl-D) leaves"


class Session:
    """One conversation with `task`: the history and the next reply."""

    def __init__(self, task, max_new_tokens: int = 128):
        self.task, self.max_new_tokens = task, max_new_tokens
        self.template = getattr(task, "kft_template", None)
        self.history: list[dict] = []

    def prompt_for(self, text: str) -> str:
        turns = [*self.history, {"role": "user", "content": text}]
        if self.template is None:
            return text
        return self.template.conversation_prompt(turns)

    def reply(self, text: str) -> str:
        prompt = self.prompt_for(text)
        answer = sampling.generate(
            self.task, self.task.preprocessor.tokenizer, [prompt], self.max_new_tokens
        )[0]
        self.history += [
            {"role": "user", "content": text},
            {"role": "model", "content": answer.strip()},
        ]
        return answer.strip()

    def reset(self) -> None:
        self.history = []


def run(task, read=input, write=print, max_new_tokens: int = 128) -> None:
    """The loop: read a line, answer it; `/reset`, `/exit` and end of input are understood."""
    session = Session(task, max_new_tokens)
    write(f"kft chat: {HELP}")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            write("(new conversation)")
        elif text.startswith("/"):
            write(f"unknown command {text}: {HELP}")
        elif text:
            write(f"model> {session.reply(text)}")
