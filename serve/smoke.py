"""Health check and smoke client for any OpenAI-compatible server (vLLM, SGLang, transformers serve).

    python -m serve.smoke --base-url http://127.0.0.1:8000/v1 [--model m3] [--wait 120]
                          [--max-tokens 64] [--require-reasoning] [--summary-out s.json] [--json]

Waits until GET <root>/health answers 200 (vLLM, SGLang and transformers serve all have it;
transformers serve's /v1/models scans the HF cache and fails without one, so it is not the readiness
probe), then sends one chat request with thinking on and one with it off
(`extra_body={"chat_template_kwargs": {"enable_thinking": ...}}`), temperature 0, and checks the
reasoning/answer split:
- reasoning comes from the message's `reasoning_content` (SGLang, transformers serve, vLLM < 0.11)
  or `reasoning` (newer vLLM) when the server's qwen3 reasoning parser is on; otherwise the content is
  split on the think tags with m3.text.reasoning.split_reasoning;
- no think tag may be left in the answer; thinking off must give no reasoning;
- with --require-reasoning (real models), thinking on must give some reasoning.
tokens/s = completion tokens / wall time of the non-streaming request (prefill included).
The API key is read from --api-key-env (default M3_SERVE_API_KEY) and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

from m3.runs import write_summary
from m3.text.reasoning import THINK_END, THINK_START, split_reasoning

DEFAULT_PROMPT = "I have had a mild fever and a sore throat for two days. What should I do?"


def wait_ready(root_url: str, timeout_s: float = 120.0, proc=None, interval_s: float = 0.5) -> float:
    """Poll GET <root_url>/health until 200; seconds waited. Raises if `proc` (the server's Popen)
    exits first or the timeout passes."""
    t0 = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {proc.returncode} before it was ready (see its log)"
            )
        try:
            if httpx.get(f"{root_url.rstrip('/')}/health", timeout=5.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{root_url}/health not ready after {timeout_s:.0f}s")
        time.sleep(interval_s)


def served_model(base_url: str, api_key: str | None) -> str:
    """The first model id of GET /v1/models (vLLM, SGLang). transformers serve: pass --model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=30.0)
    if r.status_code != 200 or not r.json().get("data"):
        raise ValueError(f"{base_url}/models lists no model (HTTP {r.status_code}): pass --model")
    return r.json()["data"][0]["id"]


def split_message(message) -> tuple[str, str, str]:
    """(reasoning, answer, source) of an OpenAI ChatCompletionMessage; source says where the
    reasoning came from: the parser's field name, or `think-tags` when split here."""
    extra = message.model_extra or {}
    content = message.content or ""
    for name in ("reasoning_content", "reasoning"):
        if extra.get(name) is not None:
            return str(extra[name]).strip(), content.strip(), name
    reasoning, answer = split_reasoning(content)
    return reasoning, answer, "think-tags"


def check_split(reasoning: str, answer: str, enable_thinking: bool, require_reasoning: bool) -> list[str]:
    problems = []
    if THINK_START in answer or THINK_END in answer:
        problems.append(f"thinking={enable_thinking}: think tags left in the answer")
    if not enable_thinking and reasoning:
        problems.append("thinking=False still produced reasoning (chat_template_kwargs ignored?)")
    if enable_thinking and require_reasoning and not reasoning:
        problems.append("thinking=True produced no reasoning")
    return problems


def run_smoke(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    max_tokens: int = 64,
    prompt: str = DEFAULT_PROMPT,
    require_reasoning: bool = False,
    timeout_s: float = 600.0,
) -> dict:
    """One request with thinking on and one off; the split, tokens and tokens/s of each."""
    import openai

    # The openai client insists on a key; a server started without one ignores it.
    client = openai.OpenAI(
        base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0
    )
    modes, problems = {}, []
    for thinking in (True, False):
        t0 = time.perf_counter()
        resp = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
        )
        seconds = time.perf_counter() - t0
        reasoning, answer, source = split_message(resp.choices[0].message)
        tokens = resp.usage.completion_tokens if resp.usage else 0
        problems += check_split(reasoning, answer, thinking, require_reasoning)
        modes["thinking" if thinking else "no_thinking"] = {
            "reasoning_chars": len(reasoning),
            "answer_chars": len(answer),
            "reasoning_source": source,
            "answer_head": answer[:80],
            "completion_tokens": tokens,
            "finish_reason": resp.choices[0].finish_reason,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        }
    total_tokens = sum(m["completion_tokens"] for m in modes.values())
    total_s = sum(m["seconds"] for m in modes.values())
    return {
        "base_url": base_url,
        "model": model,
        "modes": modes,
        "tokens_per_s": round(total_tokens / total_s, 2) if total_s > 0 else 0.0,
        "ok": not problems,
        "problems": problems,
    }


def format_report(report: dict) -> str:
    lines = [f"smoke {report['base_url']} model={report['model']}: {'ok' if report['ok'] else 'FAILED'}"]
    for name, m in report["modes"].items():
        lines.append(
            f"  {name:12s} reasoning={m['reasoning_chars']} chars ({m['reasoning_source']}) "
            f"answer={m['answer_chars']} chars, {m['completion_tokens']} tokens in {m['seconds']}s "
            f"= {m['tokens_per_s']} tok/s"
        )
    lines += [f"  problem: {p}" for p in report["problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="http://HOST:PORT/v1")
    p.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    p.add_argument("--api-key-env", default="M3_SERVE_API_KEY")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for /health")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--require-reasoning", action="store_true", help="thinking on must give reasoning")
    p.add_argument("--summary-out", default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    base_url = args.base_url.rstrip("/")
    if not base_url.endswith("/v1"):
        print("error: --base-url must end with /v1", file=sys.stderr)
        return 2
    key = os.environ.get(args.api_key_env) or None
    try:
        wait_ready(base_url.removesuffix("/v1"), timeout_s=args.wait)
        model = args.model or served_model(base_url, key)
        report = run_smoke(
            base_url, model, api_key=key, max_tokens=args.max_tokens, prompt=args.prompt,
            require_reasoning=args.require_reasoning,
        )  # fmt: skip
    except (TimeoutError, ValueError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.summary_out:
        write_summary(
            args.summary_out,
            "serve",
            "smoke_tokens_per_s",
            report["tokens_per_s"],
            f"smoke client against {base_url}",
        )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
