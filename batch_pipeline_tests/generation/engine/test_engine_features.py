"""Structured output, log probabilities and the completions endpoint on the real engine, in the run and
through the engine host (the default path)."""

import json

import jsonschema
import pytest

from batch_pipeline.generation.quality import json_expectation, read_quality
from batch_pipeline.protocol.batch import BatchOutputLine
from batch_pipeline.protocol.chat import ChatCompletion
from batch_pipeline.protocol.completions import COMPLETIONS_URL, TextCompletion
from batch_pipeline.protocol.responses import RESPONSES_URL, ResponseObject
from batch_pipeline_tests.support.batches import materialize_cell
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT

pytestmark = pytest.mark.engine

EXAMPLES = PROJECT_ROOT / "data" / "examples"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["engineer", "teacher", "doctor", "other"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
_PEOPLE = [("Ada", 36, "an engineer"), ("Marta", 52, "a teacher"), ("Li", 29, "a doctor"), ("Sam", 41, "a baker")]


def _chat(custom_id: str, content: str, **fields) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}}


def _chat_file() -> list[dict]:
    person_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    lines = []
    for index in range(100):
        name, age, role = _PEOPLE[index % len(_PEOPLE)]
        lines.append(_chat(f"person-{index:03d}", f"Extract the person as JSON: {name} is {age} and works as {role}. "
                                                 f"(record {index})", response_format=person_format, max_tokens=80))
    lines.append(_chat("object", 'Answer with a JSON object whose key "color" names the colour of the sky.',
                       response_format={"type": "json_object"}, max_tokens=120))
    lines.append(_chat("logprobs", "Say hello.", logprobs=True, top_logprobs=3, max_tokens=8))
    bad_schema = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "integer", "minimum": "x"}}}
    lines.append(_chat("bad-schema", "Say hello.", response_format=bad_schema))
    return lines


def _completion(custom_id: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": COMPLETIONS_URL, "body": {"model": MODEL, **body}}


def _completions_file() -> list[dict]:
    return [
        _completion("plain", prompt="The capital of France is", max_tokens=6),
        _completion("two-prompts", prompt=["One, two,", "Monday, Tuesday,"], max_tokens=4),
        _completion("token-ids", prompt=[504, 3575, 282], max_tokens=4),
        _completion("echo", prompt="Roses are red,", echo=True, max_tokens=5),
        _completion("logprobs", prompt="Water boils at", logprobs=2, max_tokens=5),
        _completion("suffix", prompt="def f(", suffix="return x", max_tokens=5),
    ]


def _materialize(pipeline, key: str, lines: list[dict]) -> tuple[dict, dict, dict]:
    result = materialize_cell(pipeline, key, lines)
    paths = pipeline.layout.responses(key, MODEL)
    read = lambda path: {line.custom_id: line for line in map(BatchOutputLine.model_validate_json,  # noqa: E731
                                                                path.read_text().splitlines())}
    metadata = result.asset_materializations_for_node("batch_responses")[0].metadata
    return read(paths.output), read(paths.errors), metadata


@pytest.fixture(params=["in_process", pytest.param("server", marks=pytest.mark.engine_server)])
def any_pipeline(request):
    return request.getfixturevalue("pipeline" if request.param == "in_process" else "server_pipeline")


def test_structured_answers_validate_and_logprobs_come_in_openai_shape(any_pipeline):
    outputs, errors, _ = _materialize(any_pipeline, "features-chat-0123456", _chat_file())
    assert set(errors) == {"bad-schema"}
    error = errors["bad-schema"].response.body["error"]
    assert error["param"] == "response_format.json_schema.schema" and "JSON Schema" in error["message"]

    bodies = {custom_id: ChatCompletion.model_validate(line.response.body) for custom_id, line in outputs.items()}
    for index in range(100):
        choice = bodies[f"person-{index:03d}"].choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    json_object = bodies["object"].choices[0]
    assert json_object.message.content.lstrip().startswith("{")
    if json_object.finish_reason == "stop":
        assert isinstance(json.loads(json_object.message.content), dict)

    answer = bodies["logprobs"]
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(token.token for token in content) == answer.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)  # greedy: the likeliest (or a tie)
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
        assert bytes(token.bytes).decode() == token.token
    assert bodies["person-000"].choices[0].logprobs is None


def test_completions_answer_in_text_completion_shape(any_pipeline):
    outputs, errors, metadata = _materialize(any_pipeline, "features-completions-0123456", _completions_file())
    assert set(errors) == {"suffix"}
    assert errors["suffix"].response.body["error"]["param"] == "suffix"
    bodies = {custom_id: TextCompletion.model_validate(line.response.body) for custom_id, line in outputs.items()}
    assert all(body.object == "text_completion" and body.id.startswith("cmpl-") for body in bodies.values())
    assert bodies["plain"].choices[0].text.strip() and bodies["plain"].usage.completion_tokens <= 6

    two = bodies["two-prompts"]
    assert [choice.index for choice in two.choices] == [0, 1]
    assert two.usage.completion_tokens <= 8 and two.usage.prompt_tokens > bodies["token-ids"].usage.prompt_tokens
    assert bodies["token-ids"].usage.prompt_tokens == 3

    assert bodies["echo"].choices[0].text.startswith("Roses are red,")
    logprobs = bodies["logprobs"].choices[0].logprobs
    assert "".join(logprobs.tokens) == bodies["logprobs"].choices[0].text
    assert len(logprobs.token_logprobs) == bodies["logprobs"].usage.completion_tokens
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0
    assert metadata["succeeded"].value == 5 and metadata["failed"].value == 1


@pytest.mark.parametrize("example", ["demo.jsonl", "structured.jsonl", "completions.jsonl", "responses.jsonl",
                                     "tools.jsonl"])
def test_every_shipped_example_runs_clean_and_passes_its_quality_checks(pipeline, example):
    lines = [json.loads(line) for line in (EXAMPLES / example).read_text().splitlines()]
    key = f"example-{example.split('.')[0]}-0123456"
    outputs, errors, _ = _materialize(pipeline, key, lines)
    assert not errors and len(outputs) == len(lines)
    report = read_quality(pipeline.layout.responses(key, MODEL).quality)
    assert not report.blocking_failures, report
    assert report.checks[-1].of == sum(json_expectation(json.dumps(line["body"])) is not None for line in lines)


def test_responses_answer_as_response_objects(any_pipeline):
    lines = [json.loads(line) for line in (EXAMPLES / "responses.jsonl").read_text().splitlines()]
    lines.append({"custom_id": "cut", "method": "POST", "url": RESPONSES_URL,
                  "body": {"model": MODEL, "input": "Tell me a long story.", "max_output_tokens": 3,
                           "instructions": "Be vivid.", "metadata": {"run": "test"}}})
    lines.append({"custom_id": "tools", "method": "POST", "url": RESPONSES_URL,
                  "body": {"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}})
    outputs, errors, _ = _materialize(any_pipeline, "features-responses-0123456", lines)
    assert set(errors) == {"tools"} and errors["tools"].response.body["error"]["param"] == "tools"
    bodies = {custom_id: ResponseObject.model_validate(line.response.body) for custom_id, line in outputs.items()}
    cut = bodies["cut"]
    assert (cut.status, cut.incomplete_details.reason, cut.usage.output_tokens) == ("incomplete", "max_output_tokens", 3)
    assert (cut.instructions, cut.max_output_tokens, cut.metadata) == ("Be vivid.", 3, {"run": "test"})
    capital = json.loads(bodies["json"].output[0].content[0].text)
    assert set(capital) == {"country", "capital"}
    assert all(body.output[0].content[0].text.strip() for body in bodies.values())


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast for a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"], "properties": {
        "city": {"type": "string", "maxLength": 30}, "days": {"type": "integer", "minimum": 1, "maximum": 14}}}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                   "properties": {"zone": {"type": "string", "maxLength": 30}}}}}
_TOOL_PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER_TOOL, TIME_TOOL)}
_CITIES = ["Paris", "Tokyo", "Lima", "Oslo"]


def _tools_file() -> list[dict]:
    tools = {"tools": [WEATHER_TOOL, TIME_TOOL], "max_tokens": 120}
    named = {"type": "function", "function": {"name": "get_weather"}}
    lines = []
    for index, city in enumerate(_CITIES):
        question = f"What will the weather be in {city} over the next {index + 2} days?"
        # One call at most: the array always closes, whatever a small model would repeat.
        lines.append(_chat(f"required-{index}", question, tool_choice="required", parallel_tool_calls=False, **tools))
        lines.append(_chat(f"named-{index}", question, tool_choice=named, **tools))
    lines.append(_chat("required-parallel", "What time is it in Tokyo, and the weather in Lima for 3 days?",
                       tool_choice="required", **tools))
    lines.append(_chat("auto", "What is the weather in Paris?", **tools))
    lines.append(_chat("unknown-tool", "Hi", tool_choice={"type": "function", "function": {"name": "get_news"}},
                       **tools))
    history = _chat("history", "unused", tool_choice="required", **tools)
    history["body"]["messages"] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 8 degrees."}]
    lines.append(history)
    return lines


def _check_calls(choice) -> None:
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), _TOOL_PARAMETERS[call.function.name])


def test_required_and_named_tools_answer_with_valid_calls_and_auto_needs_a_parser(any_pipeline):
    outputs, errors, _ = _materialize(any_pipeline, "features-tools-0123456", _tools_file())
    refused = {custom_id: line.response.body["error"]["param"] for custom_id, line in errors.items()}
    # SmolLM2's registry entry names no tool parser (its template shows no tools), and its template
    # cannot show an assistant's tool calls.
    assert refused == {"auto": "tools", "unknown-tool": "tool_choice.function.name",
                       "history": "messages[1].tool_calls"}
    assert "tool_call_parser" in errors["auto"].response.body["error"]["message"]

    bodies = {custom_id: ChatCompletion.model_validate(line.response.body) for custom_id, line in outputs.items()}
    for index in range(len(_CITIES)):
        required, named = bodies[f"required-{index}"].choices[0], bodies[f"named-{index}"].choices[0]
        # OpenAI's finish reasons: `tool_calls` for required, `stop` for a named function.
        assert (required.finish_reason, named.finish_reason) == ("tool_calls", "stop")
        assert len(required.message.tool_calls) == 1 and required.message.content is None
        assert [call.function.name for call in named.message.tool_calls] == ["get_weather"]
        assert named.message.content is None
        _check_calls(required)
        _check_calls(named)
    parallel = bodies["required-parallel"].choices[0]
    if parallel.finish_reason == "tool_calls":
        _check_calls(parallel)
    else:  # a small model may repeat calls until max_tokens: the cut JSON stays text
        assert parallel.finish_reason == "length" and parallel.message.tool_calls is None


def _deeply_nested_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


def test_a_request_vllm_refuses_when_added_is_its_400_and_the_warm_engine_stays_up(any_pipeline):
    """A valid schema nested deeper than vLLM takes passes validation; vLLM refuses it as it is added."""
    deep = {"type": "json_schema", "json_schema": {"name": "deep", "schema": _deeply_nested_schema(40)}}
    lines = [_chat(f"ok-{index}", "Say hello.", max_tokens=4) for index in range(4)]
    lines.insert(2, _chat("too-deep", "Say hello.", response_format=deep, max_tokens=4))
    # Passes validation (a token id within 32 bits); vLLM would index the logits with it inside a step.
    lines.insert(4, _chat("bias-outside-vocabulary", "Say hello.", logit_bias={"99999999": 5}, max_tokens=4))
    outputs, errors, _ = _materialize(any_pipeline, "poison-add-0123456", lines)
    assert sorted(outputs) == [f"ok-{index}" for index in range(4)]
    assert sorted(errors) == ["bias-outside-vocabulary", "too-deep"]
    assert all(line.response.status_code == 400 for line in errors.values())
    deep_error = errors["too-deep"].response.body["error"]
    assert deep_error["param"] == "response_format" and "nested too deeply" in deep_error["message"]
    bias_error = errors["bias-outside-vocabulary"].response.body["error"]
    assert bias_error["param"] == "logit_bias" and "vocabulary" in bias_error["message"]
    _, _, after = _materialize(any_pipeline, "poison-after-0123456", lines[:2])
    assert after["engine_reused"].value  # the same engine answered the next batch: it was never taken down
