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

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
CHAT = "chat"  # the family's own chat template
DOLLY_PROMPT = "Instruction:\n{instruction}\n\nResponse:\n"
DOLLY_PROMPT_WITH_CONTEXT = "Instruction:\n{instruction}\n\nContext:\n{context}\n\nResponse:\n"
CHAT_ROLES = {
    "user": "user",
    "human": "user",
    "model": "model",
    "assistant": "model",
    "gpt": "model",
}

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
    def is_chat(self) -> bool:
        return self.name == CHAT or self.name in families.CHAT_TEMPLATES

    @property
    def family(self) -> families.Family:
        return families.CHAT_TEMPLATES.get(self.name, families.DEFAULT)

    @property
    def ends_with_eos(self) -> bool:
        return not self.is_chat

    def fields(self, available: list[str]) -> list[str]:
        """Dataset columns this template reads (to check before rendering anything)."""
        if self.name == "dolly":
            wanted = ["instruction", "response"]
        elif self.is_chat:
            wanted = (
                ["messages"] if self.column("messages") in available else ["prompt", "response"]
            )
        else:
            wanted = sorted(
                set(_field_names(self.prompt_format) + _field_names(self.response_format))
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
            return _chat_segments(self._messages(record), self.family)
        mapped = {
            f: self._get(record, f) for f in _field_names(self.prompt_format + self.response_format)
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
            return _chat_segments([{"role": "user", "content": text}], self.family)[0][0]
        names = _field_names(self.prompt_format)
        return self.prompt_format.format(**{names[0]: text}) if len(set(names)) == 1 else text

    def conversation_prompt(self, turns: list[dict]) -> str:
        """The prompt for the model's next reply after `turns` ({role, content}, user and model
        alternating, the last from the user): chat turns, or for plain templates each exchange in
        the template's prompt/response form, one after another."""
        if self.is_chat:
            return "".join(text for text, _ in _chat_segments(turns, self.family))
        replies = [t["content"] for t in turns[1::2]] + [None]
        return "".join(
            self.wrap_prompt(user["content"]) + (f"{reply}\n\n" if reply is not None else "")
            for user, reply in zip(turns[0::2], replies)
        )


def _chat_segments(messages: list[dict], family: families.Family) -> list[Segment]:
    """The family's chat turns: a system turn of its own where the family has one (Gemma 4), else the
    system message folded into the first user turn, as Gemma 1-3's own templates do."""
    start, end = family.start_of_turn, family.end_of_turn
    system_turn = family.system_turn
    segments: list[Segment] = []
    system = ""
    for i, message in enumerate(messages):
        role = str(message.get("role", "")).lower()
        content = str(message.get("content", ""))
        if role == "system":
            system = f"{start}system\n{content}{end}\n" if system_turn else content + "\n\n"
            continue
        if role not in CHAT_ROLES:
            raise KftError(
                f"chat message {i} has role '{role}'; use user, model (or assistant) or system"
            )
        if CHAT_ROLES[role] == "user":
            if system_turn:
                segments.append((f"{system}{start}user\n{content}{end}\n{start}model\n", False))
            else:
                segments.append((f"{start}user\n{system}{content}{end}\n{start}model\n", False))
            system = ""
        else:
            if not segments:
                segments.append((f"{system if system_turn else ''}{start}model\n", False))
                system = ""
            segments.append((f"{content}{end}", True))
            segments.append(("\n", False))
    if segments and segments[-1] == ("\n", False):
        segments.pop()
    return segments


def for_tokenizer(template: Template, tokenizer) -> Template:
    """`chat` made concrete for the tokenizer's family; a chat template whose turn markers are not
    single tokens of this vocabulary (Gemma 1-3 turns on Gemma 4) is refused."""
    from dataclasses import replace

    family = families.get(families.of_tokenizer(tokenizer) or families.DEFAULT.name)
    if template.name == CHAT:
        return replace(template, name=family.chat_template)
    if template.is_chat and template.family.end_of_turn not in tokenizer.get_vocabulary():
        raise KftError(
            f"data.template {template.name} uses {template.family.end_of_turn}, which this "
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
