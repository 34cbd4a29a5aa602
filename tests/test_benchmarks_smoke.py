"""The in-process benchmarks' pieces work and compare like with like; no load test here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from benchmarks import instructions, policy_cost, proxies
from benchmarks.decode import (
    DECODERS,
    DEFAULT_SAMPLES,
    accepts,
    decode_syntax_only,
    decode_with_msgspec,
    decode_with_stdlib_pydantic,
    run_decode_benchmarks,
)
from benchmarks.e2e import WORKLOADS, E2EResult, Scenario, best_round
from benchmarks.openai_payloads import (
    TEXT_PIECES,
    completion_body,
    text_stream,
    tool_call_stream,
    tool_names,
)
from benchmarks.policy_cost import PolicyCostResult
from benchmarks.processes import running_server
from benchmarks.report import Report, add_e2e, add_policy_cost
from benchmarks.translation import (
    CLIENT_MODEL,
    MESSAGE_ID,
    run_translation_benchmarks,
    translate_stream,
)
from benchmarks.translation import scenario_names as translation_scenario_names
from benchmarks.upstream import encoded_routes
from messages_mw.translate import to_anthropic_message

SMALL_SAMPLE = DEFAULT_SAMPLES / "small_chat.json"
VALID = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
TEXT_BLOCK = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}


def _body(**changes: object) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def _without(field: str) -> bytes:
    return json.dumps({key: value for key, value in VALID.items() if key != field}).encode()


VALID_BODIES = {
    "minimal": _body(),
    "blocks and extras": _body(
        messages=[{"role": "user", "content": [TEXT_BLOCK]}],
        system=[{"type": "text", "text": "be brief"}],
        stream=True,
        temperature=1,
        top_k=5,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "u-1"},
        future_field={"anything": True},
    ),
    "unknown role and block type": _body(
        messages=[{"role": "narrator", "content": [{"type": "hologram", "data": 1}]}]
    ),
}
INVALID_BODIES = {
    "not JSON": b'{"model": ',
    "not an object": b"[1, 2]",
    "missing model": _without("model"),
    "missing messages": _without("messages"),
    "empty messages": _body(messages=[]),
    "negative max_tokens": _body(max_tokens=-1),
    "max_tokens as string": _body(max_tokens="16"),
    "content as number": _body(messages=[{"role": "user", "content": 5}]),
    "block without type": _body(messages=[{"role": "user", "content": [{"text": "hi"}]}]),
    "stream as string": _body(stream="yes"),
    "temperature as string": _body(temperature="hot"),
    "model as number": _body(model=4),
}


@pytest.mark.parametrize("body", VALID_BODIES.values(), ids=VALID_BODIES.keys())
def test_both_decoders_accept_valid_bodies(body: bytes) -> None:
    assert accepts(decode_with_msgspec, body)
    assert accepts(decode_with_stdlib_pydantic, body)


@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_both_decoders_reject_invalid_bodies(body: bytes) -> None:
    assert not accepts(decode_with_msgspec, body)
    assert not accepts(decode_with_stdlib_pydantic, body)


def test_the_decode_floor_checks_syntax_and_nothing_else() -> None:
    # It accepts what the validator refuses, and refuses what is not JSON syntax for an object.
    assert accepts(decode_syntax_only, INVALID_BODIES["model as number"])
    assert not accepts(decode_with_msgspec, INVALID_BODIES["model as number"])
    assert not accepts(decode_syntax_only, b'{"model": "m", "messages": [}')
    assert not accepts(decode_syntax_only, b"[1, 2]")


def test_decode_benchmark_returns_positive_timings() -> None:
    results = run_decode_benchmarks(
        DEFAULT_SAMPLES, rounds=2, number=20, sample_files=(SMALL_SAMPLE.name,)
    )

    assert [r.decoder for r in results] == list(DECODERS)
    assert all(r.seconds_per_call > 0 and r.baseline_seconds_per_call > 0 for r in results)
    assert all(accepts(decode, SMALL_SAMPLE.read_bytes()) for decode in DECODERS.values())


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    lines = raw.decode().splitlines()
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


def test_translation_payloads_translate_to_complete_answers() -> None:
    message = json.loads(
        to_anthropic_message(completion_body(), model=CLIENT_MODEL, message_id=MESSAGE_ID)
    )
    assert message["content"][0]["text"] == "".join(TEXT_PIECES)
    assert message["usage"]["cache_read_input_tokens"] > 0

    text_events = _sse_events(translate_stream(text_stream()))
    deltas = [e["delta"] for e in text_events if e["type"] == "content_block_delta"]
    assert "".join(d["text"] for d in deltas) == "".join(TEXT_PIECES)
    assert text_events[-1] == {"type": "message_stop"}

    tool_events = _sse_events(translate_stream(tool_call_stream()))
    starts = [e["content_block"] for e in tool_events if e["type"] == "content_block_start"]
    assert [block["name"] for block in starts] == tool_names()
    assert [e["type"] for e in tool_events][-2:] == ["message_delta", "message_stop"]


def test_translation_benchmark_returns_positive_timings() -> None:
    results = run_translation_benchmarks(
        DEFAULT_SAMPLES, rounds=1, number=3, sample_files=(SMALL_SAMPLE.name,)
    )

    assert {r.name for r in results} == set(
        translation_scenario_names(DEFAULT_SAMPLES, sample_files=(SMALL_SAMPLE.name,))
    )
    assert all(r.seconds_per_unit > 0 and r.baseline_seconds_per_unit > 0 for r in results)
    assert {r.unit for r in results} == {"request", "chunk"}


def test_mock_upstream_answers_both_apis_with_framed_bodies() -> None:
    routes = encoded_routes()

    assert set(routes) == {b"/v1/messages", b"/v1/chat/completions"}
    completion = routes[b"/v1/chat/completions"]
    head, _, body = completion.json_response.partition(b"\r\n\r\n")
    assert body == completion_body() and b"content-length: %d" % len(body) in head
    chunks = [part.split(b"\r\n")[1] for part in completion.sse_parts[1:-1]]
    assert chunks == text_stream()


def _result(gateway: str, cpu_ms: float, rss_mb: float) -> E2EResult:
    scenario = Scenario(WORKLOADS[0], 1, gateway)
    return E2EResult(scenario, rps=1000.0, cpu_ms_per_request=cpu_ms, rss_mb=rss_mb)


@pytest.mark.parametrize(
    ("policy_us", "cell"),
    [
        (529.0, "CPU ≤ 1.10x d: 1.06x ✓"),
        (549.8, "CPU ≤ 1.10x d: 1.10x ✓"),
        (550.6, "CPU ≤ 1.10x d: 1.101x ✗"),
        (650.0, "CPU ≤ 1.10x d: 1.30x ✗"),
    ],
)
def test_policy_target_cell_agrees_with_its_mark(policy_us: float, cell: str) -> None:
    result = Report()
    name = "policy in process json 57KB c=1"
    add_policy_cost(result, [PolicyCostResult(name, 500.0, policy_us, 15, 256)])

    rows = {row["scenario"].split()[-1]: row for row in result.sections[0]}
    assert rows["e:messages_mw+policy"]["target"] == cell
    assert rows["d:messages_mw"]["µs/op"] == "500.0"
    assert result.notes[-1].endswith(f"json 57KB c=1 +{policy_us - 500:.0f}")


def test_end_to_end_policy_row_reports_its_ratio_without_judging_it() -> None:
    result = Report()
    add_e2e(result, [_result("d", 0.5, 40.0), _result("e", 0.6, 41.5)])

    rows = {row["scenario"].split()[-1]: row for row in result.sections[0]}
    assert rows["e:messages_mw+policy"]["target"] == "CPU vs d: 1.20x"
    assert result.notes[-1].endswith("json 57KB c=1 CPU 1.20x, RSS +1.5 MB")


@pytest.mark.parametrize("entry", sorted(policy_cost.ENTRIES))
def test_policy_cost_runs_both_gateways_against_the_mock_upstream(entry: str) -> None:
    with running_server("upstream", cpu=os.sched_getaffinity(0).pop()) as upstream:
        results = uvloop.run(
            policy_cost.run_all(upstream.url, DEFAULT_SAMPLES, 2, 4, ["sse 57KB c=32"], entry)
        )
    assert [r.name for r in results] == ["policy in process sse 57KB c=32"]
    assert results[0].core_us > 0 and results[0].policy_us > 0
    assert (results[0].batches, results[0].requests_per_batch) == (2, 4)


@pytest.mark.parametrize("entry", sorted(policy_cost.ENTRIES))
def test_policy_cost_refuses_to_time_answers_that_are_not_200(entry: str) -> None:
    from messages_mw import ApiKeyConfig, AuthConfig, Gateway, GatewayConfig

    # The benchmark's requests carry another key: every answer is a 401.
    auth = AuthConfig(mode="static", keys=(ApiKeyConfig(id="other", key="not-the-bench-key"),))
    gateway = Gateway(GatewayConfig(provider="mock", auth=auth, usage_log=False))
    body = SMALL_SAMPLE.read_bytes()
    with pytest.raises(RuntimeError, match="401"):
        uvloop.run(policy_cost._batch(gateway, body, 2, 4, entry))


def test_best_round_keeps_the_fastest_round_and_the_lowest_cpu() -> None:
    scenario = Scenario(WORKLOADS[0], 32, "d")
    tries = [
        E2EResult(scenario, rps=900.0, cpu_ms_per_request=0.50, errors=1),
        E2EResult(scenario, rps=1100.0, cpu_ms_per_request=0.55),
        E2EResult(scenario, status="failed: boom", rps=5000.0, cpu_ms_per_request=0.01),
    ]
    best = best_round(tries)
    assert (best.rps, best.cpu_ms_per_request, best.errors) == (1100.0, 0.50, 1)
    failed = [E2EResult(scenario, status="failed: a"), E2EResult(scenario, status="failed: b")]
    assert best_round(failed).status == "failed: a"


_REPO_ROOT = Path(__file__).resolve().parent.parent


def test_instructions_child_serves_its_requests_outside_callgrind() -> None:
    # What each callgrind run executes: the gateway answering 200s to the mock upstream.
    with running_server("upstream", cpu=os.sched_getaffinity(0).pop()) as upstream:
        child = [sys.executable, "-m", "benchmarks.instructions", "--child"]
        for variant in ("d", "e"):
            args = [variant, "small_chat.json", "0", "8", upstream.url]
            completed = subprocess.run(
                [*child, *args], cwd=_REPO_ROOT, capture_output=True, timeout=120
            )
            assert completed.returncode == 0, completed.stderr.decode()[-2000:]


def test_instructions_per_request_is_the_difference_of_two_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Start-up and warm-up are in both runs: only the extra requests' count remains.
    counts = {100: 5_000_000 + 100 * 600, 200: 5_000_000 + 200 * 600}
    monkeypatch.setattr(instructions, "_count", lambda variant, w, n, url, seed: counts[n])
    assert instructions.per_request("d", WORKLOADS[2], 100, "http://x") == 600.0


def test_every_instruction_count_child_hashes_with_the_seed_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With Python's random seed the same code's count moved by 3.5 K a request: dict probes.
    seeds: list[str] = []

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[bytes]:
        seeds.append(options["env"]["PYTHONHASHSEED"])
        return subprocess.CompletedProcess(command, 0, b"", b"==1== Collected : 1000\n")

    monkeypatch.setattr(instructions.subprocess, "run", run)
    assert instructions.per_request("e", WORKLOADS[2], 100, "http://x", hash_seed=7) == 0.0
    assert instructions.per_request("d", WORKLOADS[2], 100, "http://x") == 0.0
    assert seeds == ["7", "7", "0", "0"]


def test_the_gateway_and_the_load_generator_get_different_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The parent pins itself to the load core; a later look at its own affinity put every
    # gateway there too, beside the upstream and the load generator.
    from benchmarks import __main__ as cli
    from benchmarks import e2e

    affinity = {0, 1}

    def pin(pid: int, cores: set[int]) -> None:
        affinity.clear()
        affinity.update(cores)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(affinity))
    monkeypatch.setattr(os, "sched_setaffinity", pin)
    seen: list[e2e.Cores] = []

    def run_all(*args: Any) -> tuple[list[E2EResult], None]:
        seen.append(e2e.choose_cores())  # what the real run_all pins its children with
        return [], None

    monkeypatch.setattr(e2e, "run_all", run_all)
    e2e.choose_cores.cache_clear()
    try:
        cli.main(["--only", "json 1KB c=1 d:"])
    finally:
        e2e.choose_cores.cache_clear()  # the machine's own cores for the tests after
    assert seen == [e2e.Cores(gateway=0, load=1)]


def test_e_sends_requests_that_carry_tags_and_a_session(tmp_path: Path) -> None:
    # e is "every policy built-in on": the requests it is measured with must give the tagging
    # built-in something to do (issue 3 item 3: tags from a header, the key, metadata; a
    # session id from x-claude-code-session-id, which Claude Code sends on every request).
    from messages_mw import Gateway

    usage = tmp_path / "usage.jsonl"
    body = (DEFAULT_SAMPLES / "small_chat.json").read_bytes()

    async def one_request(url: str) -> None:
        config = proxies.build_gateway_with_policy(url).config
        gateway = Gateway(msgspec.structs.replace(config, usage_file=str(usage)))
        try:
            await policy_cost._batch(gateway, body, 1, 1, "server")
        finally:
            await gateway.aclose()

    with running_server("upstream", cpu=os.sched_getaffinity(0).pop()) as upstream:
        uvloop.run(one_request(upstream.url))
    event = json.loads(usage.read_text().splitlines()[0])
    # UsageEvent omits empty fields: a missing key is an empty value.
    assert event.get("tags"), f"no tags in e's usage event: {event}"
    assert event.get("session_id"), f"no session in e's usage event: {event}"


def test_e_turns_on_token_spend_and_tag_limits() -> None:
    # Issue 3 item 6: per key and per tag, requests per minute, tokens per minute, spend.
    # With requests per minute alone the limiter's record() step returns at once.
    gateway = proxies.build_gateway_with_policy("http://127.0.0.1:1")
    rules = gateway.config.limits.rules
    assert any(rule.tokens_per_minute for rule in rules), rules
    assert any(rule.spend for rule in rules), rules
    assert any(rule.scope == "tag" for rule in rules), rules
    assert gateway._policy.limiter.counts_usage


def test_a_failed_round_is_not_dropped_from_the_report() -> None:
    # Round 2 of 2: the gateway child died ("failed: ..."); round 1 was clean.
    scenario = Scenario(WORKLOADS[0], 32, "d")
    tries = [
        E2EResult(scenario, rps=1000.0, cpu_ms_per_request=0.5),
        E2EResult(scenario, status="failed: loadgen failed: ConnectionRefusedError"),
    ]
    result = Report()
    add_e2e(result, [best_round(tries)])
    assert any("failed" in note for note in result.notes), result.notes


def test_the_error_note_names_one_of_the_errors_it_counts() -> None:
    scenario = Scenario(WORKLOADS[0], 32, "d")
    tries = [
        E2EResult(scenario, rps=900.0, errors=2, first_error="status 500: b'{...}'"),
        E2EResult(scenario, rps=1100.0),
    ]
    result = Report()
    add_e2e(result, [best_round(tries)])
    assert result.notes == [f"{scenario.name}: 2 errors, first: status 500: b'{{...}}'"]


def test_aiohttp_baseline_gets_the_process_settings_messages_mw_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # d and e are served after messages_mw.tuning.tune_for_serving() (GC freeze + threshold,
    # glibc malloc thresholds); c, the pass-through d must match, never is.
    import messages_mw.tuning

    tuned: list[str] = []
    monkeypatch.setattr(messages_mw.tuning, "tune_for_serving", lambda: tuned.append("c"))

    def no_serving(coroutine: Any) -> None:
        coroutine.close()

    monkeypatch.setattr(proxies.uvloop, "run", no_serving)
    proxies.main(["aiohttp", "--upstream", "http://127.0.0.1:1"])
    assert tuned == ["c"]
