"""OpenAI tools without an engine: the schemas required/named generate under, JSON turned into calls,
refusals naming the field, the answer's shape (checked by the official client's model) and vLLM's own
`hermes` parser on crafted text."""

import json

import jsonschema
import openai.types.chat
import pytest

from batch_pipeline.generation.engine.host_protocol import HostResult
from batch_pipeline.generation.engine.vllm.prompts import check_template_renders_calls, prompts
from batch_pipeline.generation.engine.vllm.tool_parsing import (
    AutoToolReader,
    auto_reader,
    read_answer,
    vllm_tool_parser,
)
from batch_pipeline.generation.results import result_row
from batch_pipeline.protocol.answers import Completion, EngineRequest, EngineResult
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL, chat_completion
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.tools import FunctionCall, ToolCall, forced_calls, tool_use
from batch_pipeline_tests.support.models import EMBEDDED_MODEL_DIR

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                      "required": ["city"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Forecast for a city",
                                            "parameters": WEATHER_PARAMETERS}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}  # no parameters: arguments are an empty object


def _named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def _body(**fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}], **fields}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)


@pytest.mark.parametrize("fields, param", [
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": []}, "tools"),
    ({"tools": ["get_weather"]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"parameters": WEATHER_PARAMETERS}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "x", "parameters": {"type": "nope"}}}]},
     "tools[1].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": _named("get_time")}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "function": {"name": "get_weather"}}}, "tool_choice.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "none"}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "parallel_tool_calls": "maybe"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_hostile_tool_fields_are_refused_naming_the_field(fields, param):
    with pytest.raises(UnsupportedRequest) as caught:
        tool_use(_body(**fields))
    assert (caught.value.param, caught.value.code) == (param, "invalid_value")
    assert param.split("[")[0].split(".")[0] in caught.value.message


def test_none_and_no_tools_answer_in_text_and_show_the_template_no_tools():
    assert tool_use(_body()) is None
    assert tool_use(_body(tools=[WEATHER], tool_choice="none")) is None
    assert tool_use(_body(tools=[WEATHER], tool_choice="required")).tools == [WEATHER]
    assert tool_use(_body(tools=[WEATHER])).choice == "auto"  # OpenAI's default when tools are given
    assert tool_use(_body(tools=[WEATHER])).schema is None


def test_a_named_function_generates_its_own_parameters():
    assert tool_use(_body(tools=[WEATHER, CLOCK], tool_choice=_named("get_weather"))).schema == WEATHER_PARAMETERS
    schema = tool_use(_body(tools=[WEATHER, CLOCK], tool_choice=_named("get_time"))).schema
    jsonschema.validate({}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schema)


def test_required_generates_an_array_of_calls_to_the_given_tools():
    schema = tool_use(_body(tools=[WEATHER, CLOCK], tool_choice="required")).schema
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Paris"}},
                         {"name": "get_time", "parameters": {}}], schema)
    for wrong in ([], [{"name": "get_news", "parameters": {}}], [{"name": "get_weather", "parameters": {"days": 2}}],
                  [{"name": "get_time", "parameters": {}, "why": "x"}], {"name": "get_time", "parameters": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    single = tool_use(_body(tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False)).schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_time", "parameters": {}}] * 2, single)


def test_required_gathers_the_tools_definitions_where_their_references_point():
    point = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    tool = {"type": "function", "function": {"name": "move", "parameters": {
        "$defs": {"point": point}, "type": "object", "properties": {"to": {"$ref": "#/$defs/point"}}}}}
    schema = tool_use(_body(tools=[tool], tool_choice="required")).schema
    assert schema["$defs"] == {"point": point}
    jsonschema.validate([{"name": "move", "parameters": {"to": {"x": 1}}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "move", "parameters": {"to": {"y": 1}}}], schema)
    clash = {"type": "function", "function": {"name": "jump", "parameters": {
        "$defs": {"point": {"type": "string"}}, "type": "object"}}}
    with pytest.raises(UnsupportedRequest) as caught:
        tool_use(_body(tools=[tool, clash], tool_choice="required"))
    assert caught.value.param == "tools[1].function.parameters"


def test_forced_answers_become_tool_calls_with_json_arguments():
    named = tool_use(_body(tools=[WEATHER], tool_choice=_named("get_weather")))
    [call] = forced_calls(named, '{"city": "Zürich", "days": 2}')
    assert (call.type, call.function.name) == ("function", "get_weather") and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Zürich", "days": 2}

    required = tool_use(_body(tools=[WEATHER, CLOCK], tool_choice="required"))
    calls = forced_calls(required, '[{"name": "get_time", "parameters": {}}, '
                                   '{"name": "get_weather", "parameters": {"city": "Oslo"}}]')
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_time", {}), ("get_weather", {"city": "Oslo"})]
    assert len({c.id for c in calls}) == 2


def test_finish_reasons_follow_openai():
    required = tool_use(_body(tools=[WEATHER], tool_choice="required"))
    named = tool_use(_body(tools=[WEATHER], tool_choice=_named("get_weather")))
    text, calls, reason = read_answer(required, None, '[{"name": "get_weather", "parameters": {"city": "A"}}]', "stop")
    assert (text, len(calls), reason) == ("", 1, "tool_calls")
    # OpenAI (and vLLM) keep `stop` for a call the request named.
    text, calls, reason = read_answer(named, None, '{"city": "A"}', "stop")
    assert (text, len(calls), reason) == ("", 1, "stop")
    # Cut by max_tokens: not JSON yet, so no calls; the text stays, as does `length`.
    assert read_answer(required, None, '[{"name": "get_wea', "length") == ('[{"name": "get_wea', None, "length")
    assert read_answer(named, None, '{"city": "Par', "length") == ('{"city": "Par', None, "length")
    assert read_answer(None, None, "hello", "stop") == ("hello", None, "stop")


def test_auto_needs_a_parser_named_in_the_registry():
    use = tool_use(_body(tools=[WEATHER]))
    with pytest.raises(UnsupportedRequest) as caught:
        auto_reader(use, None, "SmolLM2-135M-Instruct", tokenizer=None)
    assert caught.value.param == "tools"
    assert "SmolLM2-135M-Instruct" in caught.value.message and "tool_call_parser" in caught.value.message
    assert auto_reader(tool_use(_body(tools=[WEATHER], tool_choice="required")), None, "m", None) is None
    assert auto_reader(None, "hermes", "m", None) is None


def _result(*completions: Completion) -> EngineResult:
    return EngineResult(request=EngineRequest(0, "row-0", _body(), CHAT_COMPLETIONS_URL), prompt_tokens=5, completions=list(completions))


def test_answers_with_tool_calls_are_valid_for_the_official_client():
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    result = _result(Completion(text="", finish_reason="tool_calls", tokens=9, tool_calls=[call]),
                     Completion(text="Let me look.", finish_reason="tool_calls", tokens=12, tool_calls=[call]),
                     Completion(text="Sunny.", finish_reason="stop", tokens=3))
    dumped = json.loads(chat_completion("m", result).model_dump_json())
    answer = openai.types.chat.ChatCompletion.model_validate(dumped)
    first, second, plain = answer.choices
    assert first.message.content is None and first.finish_reason == "tool_calls"
    assert first.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(first.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert second.message.content == "Let me look."
    assert plain.message.content == "Sunny." and "tool_calls" not in dumped["choices"][2]["message"]
    # Previews and quality checks see the call, not an empty answer.
    assert result_row(result, "m").text == 'get_weather({"city": "Paris"})'


def test_tool_calls_survive_the_engine_host_protocol():
    call = ToolCall(id="call_1", function=FunctionCall(name="get_time", arguments="{}"))
    result = _result(Completion(text="", finish_reason="tool_calls", tokens=4, tool_calls=[call]))
    line = json.dumps(HostResult.of(result).model_dump(mode="json"))
    back = HostResult.model_validate_json(line).engine_result(result.request)
    assert back.completions[0].tool_calls == [call]


def test_templates_that_cannot_show_tool_calls_refuse_them(tokenizer):
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    conversation = [{"role": "user", "content": "Time?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "c1", "content": "12:00"}]
    with pytest.raises(UnsupportedRequest) as caught:
        prompts(tokenizer, EngineRequest(0, "r", _body(messages=conversation), CHAT_COMPLETIONS_URL), 2048)
    assert caught.value.param == "messages[1].tool_calls"
    check_template_renders_calls([{"role": "assistant", "content": "", "tool_calls": [call]}],
                                 "{% for call in message.tool_calls %}")
    # A tool result alone renders (SmolLM2 shows its role and content); tools given to a template that
    # ignores them change nothing, so required/named run on it.
    body = _body(messages=[conversation[0], {"role": "tool", "tool_call_id": "c1", "content": "12:00"}],
                 tools=[WEATHER], tool_choice="required")
    [prompt] = prompts(tokenizer, EngineRequest(0, "r", body, CHAT_COMPLETIONS_URL), 2048, tool_use(body))
    assert "12:00" in prompt.text and prompt.text.endswith("<|im_start|>assistant\n")


def test_vllms_hermes_parser_reads_auto_answers(tokenizer):
    """hermes needs no special tokens of the tokenizer (it searches the text for `<tool_call>`), so the
    embedded model's tokenizer stands in for a Hermes-format model's."""
    use = tool_use(_body(tools=[WEATHER, CLOCK]))
    reader = AutoToolReader.load(use, "hermes", "m", tokenizer)
    assert reader.skip_special_tokens is False  # the parser's own adjustment: call markers may be special tokens
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    content, calls, reason = read_answer(use, reader, text, "stop")
    assert (content, reason) == ("Let me check.", "tool_calls")
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c.id.startswith("call_") for c in calls)
    assert read_answer(use, reader, "It is sunny.", "stop") == ("It is sunny.", None, "stop")
    assert read_answer(use, reader, '<tool_call>{"name": broken', "stop") == ('<tool_call>{"name": broken', None,
                                                                              "stop")
    single = AutoToolReader.load(tool_use(_body(tools=[WEATHER, CLOCK], parallel_tool_calls=False)), "hermes", "m",
                                 tokenizer)
    assert [c.function.name for c in single.read(text)[1]] == ["get_weather"]


def test_a_registry_naming_no_vllm_parser_is_refused(tokenizer):
    with pytest.raises(ValueError, match="hermes"):
        vllm_tool_parser("hermez")
    with pytest.raises(UnsupportedRequest) as caught:
        AutoToolReader.load(tool_use(_body(tools=[WEATHER])), "hermez", "m", tokenizer)
    assert caught.value.param == "tools"
