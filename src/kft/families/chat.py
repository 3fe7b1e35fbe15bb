"""Chat formats: how a conversation becomes (text, trainable) segments for one model family.

A format is data (its turn openers and end marker), so a family names one and two families can
share one (ChatML: Qwen 2/2.5/3 and SmolLM2). The answer's end marker is trained, so a tuned model
stops; whatever separates turns after it is not. Each format reproduces its model's published
Jinja chat template (tests/test_chat_formats.py renders both and compares), less tool calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kft.core.errors import KftError

TEMPLATES = Path(__file__).parent / "templates"
Segment = tuple[str, bool]
ROLES = {"user": "user", "human": "user", "model": "model", "assistant": "model", "gpt": "model"}


@dataclass(frozen=True)
class ChatFormat:
    name: str  # what `data.template` calls it
    start: str  # the marker opening a turn (a single token of the family's vocabulary)
    end: str  # what closes an answer: trained, and a stop token when generating
    user: str  # a user turn and the opening of the model's reply: {system} and {content}
    answer: str  # the model's reply, trained: {content} (the end marker included)
    between: str = ""  # after an answer, before the next turn (not trained)
    system: str = ""  # a system turn of its own ({content}); empty: folded into the first user turn
    fold: str = "{system}\n\n{content}"  # a system message folded into the first user turn
    default_system: str = ""  # the system turn the template writes when the messages have none
    later_user: str = ""  # the user turn after the first, where it differs (Llama 2 repeats <s>)
    strip: bool = False  # contents are stripped, as the template does (`| trim`, `.strip()`)
    model_role: str = "model"  # the reply's role name in the template (shown in errors only)
    reply_opening: str = ""  # opens the last reply only (Qwen 3's empty think block)
    ollama: str = ""  # the same turns as an Ollama Modelfile TEMPLATE (Go template), "" if none
    jinja_file: str = (
        ""  # the model's own Jinja template (kft/families/templates/; SOURCES.md there)
    )

    @property
    def jinja(self) -> str:
        """The Jinja chat template an export writes (tokenizer_config.json, GGUF), "" if none."""
        return (TEMPLATES / self.jinja_file).read_text(encoding="utf-8") if self.jinja_file else ""

    def segments(self, messages: list[dict]) -> list[Segment]:
        """The conversation's segments; a reply is trainable, everything else is not."""
        segments: list[Segment] = []
        last_user = -1
        system = self.default_system
        given_system = None
        for i, message in enumerate(messages):
            role = str(message.get("role", "")).lower()
            content = str(message.get("content", ""))
            if self.strip:
                content = content.strip()
            if role == "system":
                given_system = content
                continue
            if role not in ROLES:
                raise KftError(
                    f"chat message {i} has role '{role}'; use user, model (or assistant) or system"
                )
            if given_system is not None:
                system, given_system = given_system, None
            if ROLES[role] == "user":
                opener = self.later_user if segments and self.later_user else self.user
                if system and self.system:
                    prefix, text = self.system.format(content=system), content
                elif system:
                    prefix, text = "", self.fold.format(system=system, content=content)
                else:
                    prefix, text = "", content
                segments.append((prefix + opener.format(content=text), False))
                last_user = len(segments) - 1
            else:
                if not segments:  # a conversation opening with the model's turn
                    prefix = self.system.format(content=system) if system and self.system else ""
                    segments.append((prefix + self.model_opening, False))
                segments.append((self.answer.format(content=content), True))
                if self.between:
                    segments.append((self.between, False))
            system = ""
        if self.between and segments and segments[-1] == (self.between, False):
            segments.pop()
        if self.reply_opening and last_user >= 0:
            segments[last_user] = (segments[last_user][0] + self.reply_opening, False)
        return segments

    @property
    def model_opening(self) -> str:
        """What opens the model's reply: the user turn's text after its content."""
        return self.user.split("{content}", 1)[1]


GEMMA = ChatFormat(
    "gemma-chat",
    start="<start_of_turn>",
    end="<end_of_turn>",
    user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
    answer="{content}<end_of_turn>",
    between="\n",
    jinja_file="gemma_chat.jinja",
    ollama=(
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}'
        "{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
    ),
)
GEMMA4 = ChatFormat(
    "gemma4-chat",
    start="<|turn>",
    end="<turn|>",
    user="<|turn>user\n{content}<turn|>\n<|turn>model\n",
    answer="{content}<turn|>",
    between="\n",
    system="<|turn>system\n{content}<turn|>\n",
)


def chatml(
    name: str, jinja_file: str, default_system: str = "", reply_opening: str = ""
) -> ChatFormat:
    """ChatML (`<|im_start|>role ... <|im_end|>`), with the default system turn the model's own
    template writes when there is none (Qwen 2.5) and what opens a reply (Qwen 3 without thinking)."""
    return ChatFormat(
        name,
        start="<|im_start|>",
        end="<|im_end|>",
        user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
        reply_opening=reply_opening,
        answer="{content}<|im_end|>",
        between="\n",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        default_system=default_system,
        model_role="assistant",
        jinja_file=jinja_file,
        ollama=(
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n" + reply_opening
        ),
    )


CHATML = chatml("chatml", "chatml.jinja")
QWEN = chatml(
    "qwen-chat",
    "qwen2_5_instruct.jinja",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
)
# Qwen 3 without thinking: its template opens the last reply with an empty think block.
QWEN3 = chatml("qwen3-chat", "qwen3.jinja", reply_opening="<think>\n\n</think>\n\n")
LLAMA3 = ChatFormat(
    "llama3-chat",
    start="<|start_header_id|>",
    end="<|eot_id|>",
    user=(
        "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    answer="{content}<|eot_id|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    strip=True,
    model_role="assistant",
    jinja_file="llama3_instruct.jinja",
    ollama=(
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}"
        "<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
)
# Llama 2 chat: every exchange is its own <s>...</s> sequence; the first <s> is the BOS kft adds.
LLAMA2 = ChatFormat(
    "llama2-chat",
    start="[INST]",
    end="</s>",
    user="[INST] {content} [/INST]",
    later_user="<s>[INST] {content} [/INST]",
    answer=" {content} </s>",
    fold="<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
    strip=True,
    model_role="assistant",
    jinja_file="llama2_chat.jinja",
    ollama=(
        '{{- $first := true }}{{- range .Messages }}{{- if eq .Role "user" }}'
        "{{ if not $first }}<s>{{ end }}[INST] {{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n"
        "<</SYS>>\n\n{{ end }}{{ .Content }} [/INST]{{ $first = false }}"
        '{{- else if eq .Role "assistant" }} {{ .Content }} </s>{{ end }}{{ end }}'
    ),
)
MISTRAL = ChatFormat(
    "mistral-chat",
    start="[INST]",
    end="</s>",
    user="[INST] {content} [/INST]",
    answer="{content}</s>",
    model_role="assistant",
    jinja_file="mistral_instruct.jinja",
    ollama=(
        '{{- range .Messages }}{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
        '{{- else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}'
    ),
)
FORMATS = {f.name: f for f in (GEMMA, GEMMA4, CHATML, QWEN, QWEN3, LLAMA3, LLAMA2, MISTRAL)}
