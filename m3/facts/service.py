"""`m3 facts serve`: the Fact-Aware reward as a small HTTP service for reward workers on a cluster.

    m3 facts serve [--host 127.0.0.1] [--port 8081] [--config facts.yaml]
    curl -s 127.0.0.1:8081/score -d '{"response": "...", "r_task": 0.9}' -H 'content-type: application/json'

One process holds the corpus, the retrieval indexes and the claim cache (L2 in memory; point
`cache.l1_backend: redis` at a shared Redis so several services share L1). Endpoints:
POST /score {response, r_task, question?} -> reward, r_fact, gate, per-claim labels;
POST /verify {claims, use_cache?} -> verdicts; GET /health; GET /stats (cache hit rates).
Binds 127.0.0.1 by default; any other address requires an API key in $M3_FACTS_API_KEY, sent by
clients as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import asdict

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

from m3.config import is_loopback
from m3.facts.reward import FactAwareReward, FactRewardConfig

KEY_ENV = "M3_FACTS_API_KEY"


class ScoreRequest(BaseModel):
    response: str
    r_task: float
    question: str | None = None


class VerifyRequest(BaseModel):
    claims: list[str]
    use_cache: bool = True


def build_app(reward: FactAwareReward, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="m3 fact-aware reward")

    def check(authorization: str | None) -> None:
        if api_key is None:
            return
        sent = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), api_key.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong API key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "verifier": reward.verifier.version}

    @app.get("/stats")
    async def stats(authorization: str | None = Header(default=None)) -> dict:
        check(authorization)
        return reward.cache.stats()

    @app.post("/score")
    async def score(req: ScoreRequest, authorization: str | None = Header(default=None)) -> dict:
        check(authorization)
        s = await reward.score(req.response, req.r_task, req.question)
        return {
            "reward": s.reward,
            "r_task": s.r_task,
            "r_fact": s.r_fact,
            "gate": s.gate,
            "claims": [{"claim": c, **asdict(v)} for c, v in zip(s.claims, s.verdicts, strict=True)],
        }

    @app.post("/verify")
    async def verify(req: VerifyRequest, authorization: str | None = Header(default=None)) -> dict:
        check(authorization)
        verdicts = await reward.verify(req.claims, use_cache=req.use_cache)
        return {"verdicts": [{"claim": c, **asdict(v)} for c, v in zip(req.claims, verdicts, strict=True)]}

    return app


def serve(host: str = "127.0.0.1", port: int = 8081, config_path: str | None = None) -> None:
    import uvicorn
    from omegaconf import OmegaConf

    api_key = os.environ.get(KEY_ENV) or None
    if not is_loopback(host) and api_key is None:
        raise ValueError(f"binding {host} exposes the service beyond this machine: set ${KEY_ENV} first")
    cfg = OmegaConf.structured(FactRewardConfig)
    if config_path:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(config_path))
    app = build_app(FactAwareReward(OmegaConf.to_object(cfg)), api_key)
    uvicorn.run(app, host=host, port=port, log_level="info")
