import pytest

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.generation.engine.vllm.prompts import prompt_messages
from batch_pipeline.generation.engine.vllm.sampling import sampling_kwargs
from batch_pipeline.protocol.completions import COMPLETIONS_URL
from batch_pipeline.protocol.errors import UnsupportedRequest

MESSAGES = [{"role": "user", "content": "hi"}]
DEFAULTS = SamplingDefaults(max_tokens=256, temperature=0.0)


def _body(**fields):
    return {"model": "m", "messages": MESSAGES, **fields}


def test_registry_defaults_apply_under_request_fields():
    assert sampling_kwargs(_body(), DEFAULTS) == {"max_tokens": 256, "temperature": 0.0}
    assert sampling_kwargs(_body(temperature=0.7, top_p=0.9), DEFAULTS) == {
        "max_tokens": 256, "temperature": 0.7, "top_p": 0.9}


def test_openai_fields_map_to_vllm_names():
    kwargs = sampling_kwargs(_body(max_completion_tokens=12, max_tokens=99, stop="END", seed=3, n=2,
                                   presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"42": 5}),
                             SamplingDefaults())
    assert kwargs == {"max_tokens": 12, "stop": ["END"], "seed": 3, "n": 2, "presence_penalty": 0.5,
                      "frequency_penalty": -0.5, "logit_bias": {42: 5.0}}


def test_fields_without_effect_are_accepted():
    assert sampling_kwargs(_body(user="u1", store=False, stream=False, metadata={"a": "b"},
                                 response_format={"type": "text"}), SamplingDefaults()) == {}


@pytest.mark.parametrize("fields, param, code", [
    ({"functions": []}, "functions", "unsupported_parameter"),
    ({"stream": True}, "stream", "invalid_value"),
    ({"response_format": {"type": "regex"}}, "response_format", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nope"}}}},
     "response_format.json_schema.schema", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "has space"}}},
     "response_format.json_schema.name", "invalid_value"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "invalid_value"),
    ({"response_format": {"type": "json_object", "schema": {}}}, "response_format.schema", "unsupported_parameter"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"prompt": "hi"}, "prompt", "unsupported_parameter"),
    ({"temperature": 3}, "temperature", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"n": 0}, "n", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"logit_bias": {"word": 1}}, "logit_bias", "invalid_value"),
    ({"stop": ""}, "stop", "invalid_value"),
    ({"stop": ["a", ""]}, "stop", "invalid_value"),
    ({"top_k": -5}, "top_k", "invalid_value"),
    ({"n": 2}, "n", "invalid_value"),
    ({"n": 2, "temperature": 0}, "n", "invalid_value"),
    ({"min_tokens": 300}, "min_tokens", "invalid_value"),
    # What validation refuses too, for requests it never saw (validated before the limits existed).
    ({"seed": 2**70}, "seed", "invalid_value"),
    ({"top_k": 10**30}, "top_k", "invalid_value"),
    ({"logit_bias": {"1": float("nan")}}, "logit_bias.1", "invalid_value"),
    ({"logit_bias": {"1": -101}}, "logit_bias.1", "invalid_value"),
    ({"temperature": float("nan")}, "temperature", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}, "response_format.json_schema.schema", "invalid_value"),
])
def test_unsupported_or_invalid_fields_name_the_field(fields, param, code):
    with pytest.raises(UnsupportedRequest) as caught:
        sampling_kwargs(_body(**fields), DEFAULTS)
    assert caught.value.code == code
    assert caught.value.param == param
    if param:
        assert param.split(".")[0] in caught.value.message


def test_text_content_parts_are_joined():
    body = _body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                        {"type": "text", "text": "b"}]}])
    assert prompt_messages(body) == [{"role": "user", "content": "a\nb"}]


def test_n_above_one_works_when_sampling():
    assert sampling_kwargs(_body(n=3, temperature=0.7), DEFAULTS)["n"] == 3


def test_tool_conversations_reach_the_template_with_arguments_as_objects():
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    messages = [{"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": [{"type": "text", "text": "42"}], "tool_call_id": "c1"}]
    assert prompt_messages(_body(messages=messages)) == [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                                                            "function": {"name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]


@pytest.mark.parametrize("message, param", [
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}, "messages[0].tool_calls[0].function"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "[1]"}}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{"}}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"role": "tool", "content": "42"}, "messages[0].tool_call_id"),
    ({"role": "user", "content": "42", "tool_call_id": "c1"}, "messages[0].tool_call_id"),
    ({"role": "user", "content": "hi", "tool_calls": []}, "messages[0].tool_calls"),
])
def test_malformed_tool_conversations_are_refused_by_field(message, param):
    with pytest.raises(UnsupportedRequest) as caught:
        prompt_messages(_body(messages=[message]))
    assert caught.value.param == param


def test_image_parts_are_refused_with_their_position():
    body = _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(UnsupportedRequest) as caught:
        prompt_messages(body)
    assert caught.value.param == "messages[0].content[0]"


def test_structured_output_maps_to_vllm_structured_outputs():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    json_schema = {"type": "json_schema", "json_schema": {"name": "point", "schema": schema, "strict": True}}
    assert sampling_kwargs(_body(response_format=json_schema), SamplingDefaults()) == {
        "structured_outputs": {"json": schema}}
    assert sampling_kwargs(_body(response_format={"type": "json_object"}), SamplingDefaults()) == {
        "structured_outputs": {"json_object": True}}
    schemaless = {"type": "json_schema", "json_schema": {"name": "any"}}
    assert sampling_kwargs(_body(response_format=schemaless), SamplingDefaults()) == {
        "structured_outputs": {"json_object": True}}


def test_chat_logprobs_ask_vllm_for_the_top_alternatives():
    assert sampling_kwargs(_body(logprobs=True), SamplingDefaults()) == {"logprobs": 0}
    assert sampling_kwargs(_body(logprobs=True, top_logprobs=5), SamplingDefaults()) == {"logprobs": 5}
    assert sampling_kwargs(_body(logprobs=False), SamplingDefaults()) == {}


def _completion(**fields):
    return {"model": "m", "prompt": "Once upon a time", **fields}


def test_completions_fields_map_like_chat_fields():
    assert sampling_kwargs(_completion(max_tokens=5, logprobs=2, best_of=1), DEFAULTS,
                           COMPLETIONS_URL) == {"max_tokens": 5, "temperature": 0.0, "logprobs": 2}
    assert sampling_kwargs(_completion(echo=True, prompt=["a", [1, 2]]), DEFAULTS, COMPLETIONS_URL) == {
        "max_tokens": 256, "temperature": 0.0}


@pytest.mark.parametrize("fields, param, code", [
    ({"suffix": "end"}, "suffix", "unsupported_parameter"),
    ({"echo": True, "logprobs": 1}, "echo", "unsupported_parameter"),
    ({"logprobs": 6}, "logprobs", "invalid_value"),
    ({"best_of": 3}, "best_of", "unsupported_parameter"),
    ({"messages": MESSAGES}, "messages", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ({"max_completion_tokens": 3}, "max_completion_tokens", "unsupported_parameter"),
])
def test_completions_refusals_name_the_field(fields, param, code):
    with pytest.raises(UnsupportedRequest) as caught:
        sampling_kwargs(_completion(**fields), DEFAULTS, COMPLETIONS_URL)
    assert (caught.value.param, caught.value.code) == (param, code)


def test_completions_stop_at_16_tokens_unless_asked_as_with_openai():
    assert sampling_kwargs(_completion(), SamplingDefaults(), COMPLETIONS_URL) == {"max_tokens": 16}
    assert sampling_kwargs(_completion(max_tokens=40), SamplingDefaults(), COMPLETIONS_URL) == {"max_tokens": 40}
    assert sampling_kwargs(_completion(), SamplingDefaults(max_tokens=64), COMPLETIONS_URL) == {"max_tokens": 64}
    assert sampling_kwargs(_body(), SamplingDefaults()) == {}  # chat: up to the context length
