import pytest

from batch_pipeline.generation.results import result_row
from batch_pipeline.protocol.answers import Completion, EngineRequest, EngineResult
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.responses import RESPONSES_URL, ResponseObject, chat_body, chat_equivalent

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_text_input_and_instructions_become_chat_messages():
    body = chat_body({"model": "m", "input": "Capital of France?", "instructions": "Be brief.",
                      "max_output_tokens": 20, "temperature": 0.2, "metadata": {"k": "v"}, "store": False})
    assert body == {"model": "m", "max_tokens": 20, "temperature": 0.2, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]}


def test_input_items_and_text_format_map_to_messages_and_response_format():
    body = chat_body({"model": "m", "input": [
        {"role": "developer", "content": "Answer in JSON."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Paris?"},
                                                        {"type": "input_text", "text": "Or Lyon?"}]}],
        "text": {"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}}})
    assert body["messages"] == [{"role": "developer", "content": "Answer in JSON."},
                                {"role": "user", "content": "Paris?\nOr Lyon?"}]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA,
                                                                              "strict": True}}
    assert chat_body({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("fields, param, code", [
    ({"tools": [{"type": "web_search"}]}, "tools", "unsupported_parameter"),
    ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
    ({"reasoning": {"effort": "low"}}, "reasoning", "unsupported_parameter"),
    ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}}}, "text.format.schema",
     "invalid_value"),
    ({"text": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "text.format.name", "invalid_value"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].type",
     "invalid_value"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}]}, "input[0].type",
     "invalid_value"),
])
def test_unsupported_or_invalid_fields_name_the_responses_field(fields, param, code):
    with pytest.raises(UnsupportedRequest) as caught:
        chat_body({"model": "m", "input": "hi", **fields})
    assert (caught.value.param, caught.value.code) == (param, code)


def test_the_engine_runs_a_responses_request_as_its_chat_request():
    request = EngineRequest(3, "r", {"model": "m", "input": "hi"}, RESPONSES_URL)
    assert chat_equivalent(request) == EngineRequest(3, "r", {"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}, CHAT_COMPLETIONS_URL)
    chat = EngineRequest(1, "c", {"model": "m", "messages": []}, CHAT_COMPLETIONS_URL)
    assert chat_equivalent(chat) is chat


@pytest.mark.parametrize("finish_reason, status", [("stop", "completed"), ("length", "incomplete")])
def test_answers_come_back_as_response_objects_echoing_the_settings(finish_reason, status):
    settings = {"model": "m", "instructions": "Be brief.", "max_output_tokens": 5, "metadata": {"k": "v"},
                "text": {"format": {"type": "json_object"}}}
    result = EngineResult(request=EngineRequest(0, "r", settings, RESPONSES_URL), prompt_tokens=7, cached_tokens=2,
                          completions=[Completion(text='{"a": 1}', finish_reason=finish_reason, tokens=5)])
    row = result_row(result, "m")
    body = ResponseObject.model_validate_json(row.body_json)
    assert body.id.startswith("resp_") and body.object == "response" and body.status == status
    assert (body.incomplete_details is None) == (status == "completed")
    assert body.output[0].content[0].text == '{"a": 1}' and body.output[0].status == status
    assert (body.instructions, body.max_output_tokens, body.metadata) == ("Be brief.", 5, {"k": "v"})
    assert body.text == {"format": {"type": "json_object"}}
    assert (body.usage.input_tokens, body.usage.output_tokens, body.usage.total_tokens) == (7, 5, 12)
    assert body.usage.input_tokens_details.cached_tokens == 2
    assert (row.text, row.finish_reason, row.completion_tokens) == ('{"a": 1}', finish_reason, 5)
