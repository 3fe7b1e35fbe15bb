"""Prompt templates: a record becomes a list of (text, trainable) segments.

Trainable segments are the responses; everything else gets loss weight 0 when
`data.loss_on` is `response`. The end-of-response marker is part of the trainable text so a
tuned model learns to stop: `<end_of_turn>` for Gemma chat, the tokenizer's EOS (added at
tokenization, see `Template.ends_with_eos`) for plain templates.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from kft.errors import KftError

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
DOLLY_PROMPT = "Instruction:\n{instruction}\n\nResponse:\n"
DOLLY_PROMPT_WITH_CONTEXT = "Instruction:\n{instruction}\n\nContext:\n{context}\n\nResponse:\n"
CHAT_ROLES = {"user": "user", "human": "user", "model": "model", "assistant": "model", "gpt": "model"}

Segment = tuple[str, bool]


def _field_names(fmt: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


@dataclass
class Template:
    """Renders records for one of the templates named by `data.template`."""

    name: str
    columns: dict
    prompt_format: str = ""
    response_format: str = ""

    @property
    def ends_with_eos(self) -> bool:
        return self.name != "gemma-chat"

    def fields(self, available: list[str]) -> list[str]:
        """Dataset columns this template reads (to check before rendering anything)."""
        if self.name == "dolly":
            wanted = ["instruction", "response"]
        elif self.name == "gemma-chat":
            wanted = ["messages"] if self.column("messages") in available else ["prompt", "response"]
        else:
            wanted = sorted(set(_field_names(self.prompt_format) + _field_names(self.response_format)))
        return [self.column(f) for f in wanted]

    def column(self, field: str) -> str:
        return self.columns.get(field, field)

    def _get(self, record: dict, field: str, default=None):
        value = record.get(self.column(field), default)
        return "" if value is None else value

    def render(self, record: dict) -> list[Segment]:
        """All segments of one training example, in order."""
        if self.name == "dolly":
            context = str(self._get(record, "context", ""))
            fmt = DOLLY_PROMPT_WITH_CONTEXT if context.strip() else DOLLY_PROMPT
            prompt = fmt.format(instruction=self._get(record, "instruction"), context=context)
            return [(prompt, False), (str(self._get(record, "response")), True)]
        if self.name == "gemma-chat":
            return _chat_segments(self._messages(record))
        mapped = {f: self._get(record, f) for f in _field_names(self.prompt_format + self.response_format)}
        return [(self.prompt_format.format(**mapped), False), (self.response_format.format(**mapped), True)]

    def _messages(self, record: dict) -> list[dict]:
        if self.column("messages") in record:
            return list(record[self.column("messages")])
        return [{"role": "user", "content": self._get(record, "prompt")},
                {"role": "model", "content": self._get(record, "response")}]

    def wrap_prompt(self, text: str) -> str:
        """Put raw user text where the template's prompt goes (for `kft generate`)."""
        if self.name == "dolly":
            return DOLLY_PROMPT.format(instruction=text)
        if self.name == "gemma-chat":
            return _chat_segments([{"role": "user", "content": text}])[0][0]
        names = _field_names(self.prompt_format)
        return self.prompt_format.format(**{names[0]: text}) if len(set(names)) == 1 else text


    def conversation_prompt(self, turns: list[dict]) -> str:
        """The prompt for the model's next reply after `turns` ({role, content}, user and model
        alternating, the last from the user): chat turns, or for plain templates each exchange in
        the template's prompt/response form, one after another."""
        if self.name == "gemma-chat":
            return "".join(text for text, _ in _chat_segments(turns))
        replies = [t["content"] for t in turns[1::2]] + [None]
        return "".join(self.wrap_prompt(user["content"]) + (f"{reply}\n\n" if reply is not None else "")
                       for user, reply in zip(turns[0::2], replies))


def _chat_segments(messages: list[dict]) -> list[Segment]:
    """Gemma turns; a system message is folded into the first user turn, as Gemma's own template does."""
    segments: list[Segment] = []
    system = ""
    for i, message in enumerate(messages):
        role = str(message.get("role", "")).lower()
        content = str(message.get("content", ""))
        if role == "system":
            system = content + "\n\n"
            continue
        if role not in CHAT_ROLES:
            raise KftError(f"chat message {i} has role '{role}'; use user, model (or assistant) or system")
        if CHAT_ROLES[role] == "user":
            segments.append((f"{START_OF_TURN}user\n{system}{content}{END_OF_TURN}\n{START_OF_TURN}model\n", False))
            system = ""
        else:
            if not segments:
                segments.append((f"{START_OF_TURN}model\n", False))
            segments.append((f"{content}{END_OF_TURN}", True))
            segments.append(("\n", False))
    if segments and segments[-1] == ("\n", False):
        segments.pop()
    return segments


def from_config(data_config) -> Template:
    return Template(
        name=data_config.template,
        columns=dict(data_config.columns),
        prompt_format=data_config.prompt_format,
        response_format=data_config.response_format,
    )


def split_for_generation(segments: list[Segment]) -> tuple[str, str]:
    """(prompt, reference): everything before the last response, and that response."""
    last = max(i for i, (_, trainable) in enumerate(segments) if trainable)
    prompt = "".join(text for text, _ in segments[:last])
    return prompt, segments[last][0].removesuffix(END_OF_TURN)
