"""Prompt templates: a record becomes a list of (text, trainable) segments.

Trainable segments are the responses; everything else gets loss weight 0 when
`data.loss_on` is `response`. The end-of-response marker is part of the trainable text so a
tuned model learns to stop: `<end_of_turn>` for Gemma 1-3 chat, `<turn|>` for Gemma 4 chat,
the tokenizer's EOS (added at tokenization, see `Template.ends_with_eos`) for plain templates.

`chat` is the family-aware name: it becomes `gemma-chat` or `gemma4-chat` once the tokenizer
(hence the family) is known (`for_tokenizer`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from kft import families
from kft.core.errors import KftError

CHAT = "chat"  # the family's own chat template
TEXT = "text"  # a pre-formatted text column, every token trained
DOLLY_PROMPT = "Instruction:\n{instruction}\n\nResponse:\n"
DOLLY_PROMPT_WITH_CONTEXT = "Instruction:\n{instruction}\n\nContext:\n{context}\n\nResponse:\n"
CHAT_ROLES = families.chat.ROLES
Segment = families.chat.Segment


def field_names(fmt: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


@dataclass
class Template:
    """Renders records for one of the templates named by `data.template`."""

    name: str
    columns: dict
    prompt_format: str = ""
    response_format: str = ""

    @property
    def is_chat(self) -> bool:
        return self.name == CHAT or self.name in families.CHAT_TEMPLATES

    @property
    def chat(self) -> families.chat.ChatFormat:
        return families.CHAT_TEMPLATES.get(self.name, families.DEFAULT.chat)

    @property
    def ends_with_eos(self) -> bool:
        return not self.is_chat

    def fields(self, available: list[str]) -> list[str]:
        """Dataset columns this template reads (to check before rendering anything)."""
        if self.name == "dolly":
            wanted = ["instruction", "response"]
        elif self.name == TEXT:
            wanted = ["text"]
        elif self.is_chat:
            wanted = (
                ["messages"] if self.column("messages") in available else ["prompt", "response"]
            )
        else:
            wanted = sorted(
                set(field_names(self.prompt_format) + field_names(self.response_format))
            )
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
        if self.is_chat:
            return self.chat.segments(self._messages(record))
        if self.name == TEXT:  # pre-formatted (the guanaco notebook's dataset_text_field="text")
            return [(str(self._get(record, "text")), True)]
        mapped = {
            f: self._get(record, f) for f in field_names(self.prompt_format + self.response_format)
        }
        return [
            (self.prompt_format.format(**mapped), False),
            (self.response_format.format(**mapped), True),
        ]

    def _messages(self, record: dict) -> list[dict]:
        if self.column("messages") in record:
            return list(record[self.column("messages")])
        return [
            {"role": "user", "content": self._get(record, "prompt")},
            {"role": "model", "content": self._get(record, "response")},
        ]

    def wrap_prompt(self, text: str) -> str:
        """Put raw user text where the template's prompt goes (for `kft generate`)."""
        if self.name == "dolly":
            return DOLLY_PROMPT.format(instruction=text)
        if self.is_chat:
            return self.chat.segments([{"role": "user", "content": text}])[0][0]
        names = field_names(self.prompt_format)
        return self.prompt_format.format(**{names[0]: text}) if len(set(names)) == 1 else text

    def conversation_prompt(self, turns: list[dict]) -> str:
        """The prompt for the model's next reply after `turns` ({role, content}, user and model
        alternating, the last from the user): chat turns, or for plain templates each exchange in
        the template's prompt/response form, one after another."""
        if self.is_chat:
            return "".join(text for text, _ in self.chat.segments(turns))
        replies = [t["content"] for t in turns[1::2]] + [None]
        return "".join(
            self.wrap_prompt(user["content"]) + (f"{reply}\n\n" if reply is not None else "")
            for user, reply in zip(turns[0::2], replies)
        )


def for_tokenizer(template: Template, tokenizer) -> Template:
    """`chat` made concrete for the tokenizer: the family's own turns, or where this vocabulary lacks
    them (SmolLM2: a Llama model speaking ChatML) the chat format whose markers it holds. A chat
    template whose end marker is not a token of this vocabulary (Gemma turns on Gemma 4) is refused."""
    from dataclasses import replace

    vocabulary = set(tokenizer.get_vocabulary())
    family = families.get(families.of_tokenizer(tokenizer) or families.DEFAULT.name)

    if template.name == CHAT:
        return replace(template, name=families.chat_for(family, vocabulary).name)
    if template.is_chat and template.chat.end not in vocabulary:
        raise KftError(
            f"data.template {template.name} uses {template.chat.end}, which this "
            f"{family.name} tokenizer lacks; use data.template: chat (the model family's own turns)"
        )
    return template


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
    reference = segments[last][0]
    for marker in families.end_of_turn_markers():
        reference = reference.removesuffix(marker)
    return prompt, reference
