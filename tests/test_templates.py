"""Templates render exactly, keep any UTF-8 text, and mark only responses as trainable."""

from kft.config import DataConfig
from kft.data import templates


def render(record, **data):
    return templates.from_config(DataConfig(**data)).render(record)


def test_dolly_renders_the_keras_tutorial_template():
    segments = render({"instruction": "Name a fruit.", "context": "", "response": "Apple."})
    assert segments == [("Instruction:\nName a fruit.\n\nResponse:\n", False), ("Apple.", True)]


def test_dolly_with_context_adds_a_context_block():
    segments = render({"instruction": "Summarise.", "context": "Long text.", "response": "Short."})
    assert segments[0] == ("Instruction:\nSummarise.\n\nContext:\nLong text.\n\nResponse:\n", False)


def test_korean_text_passes_unharmed():
    segments = render(
        {"instruction": "한국어로 번역하세요: good morning", "response": "좋은 아침입니다."}
    )
    assert (
        "".join(t for t, _ in segments)
        == "Instruction:\n한국어로 번역하세요: good morning\n\nResponse:\n좋은 아침입니다."
    )


def test_gemma_chat_multi_turn_trains_every_model_turn_through_end_of_turn():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "안녕?"},
        {"role": "model", "content": "안녕하세요."},
    ]
    segments = render({"messages": messages}, template="gemma-chat")
    assert "".join(t for t, _ in segments) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\n안녕?<end_of_turn>\n<start_of_turn>model\n안녕하세요.<end_of_turn>"
    )
    assert [t for t, trainable in segments if trainable] == [
        "Hello!<end_of_turn>",
        "안녕하세요.<end_of_turn>",
    ]


def test_gemma_chat_from_prompt_response_columns_with_mapping():
    segments = render(
        {"q": "2+2?", "a": "4"}, template="gemma-chat", columns={"prompt": "q", "response": "a"}
    )
    assert segments == [
        ("<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n", False),
        ("4<end_of_turn>", True),
    ]


def test_custom_format_strings_and_prompt_wrapping():
    t = templates.from_config(
        DataConfig(template="custom", prompt_format="<usr> {q}\n<bot> ", response_format="{a}")
    )
    assert t.render({"q": "뭐?", "a": "응"}) == [("<usr> 뭐?\n<bot> ", False), ("응", True)]
    assert t.wrap_prompt("hi") == "<usr> hi\n<bot> "
    assert templates.from_config(DataConfig()).wrap_prompt("x") == "Instruction:\nx\n\nResponse:\n"


def test_split_for_generation_gives_prompt_and_reference():
    segments = render({"prompt": "Hi", "response": "Yo"}, template="gemma-chat")
    assert templates.split_for_generation(segments) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "Yo",
    )
