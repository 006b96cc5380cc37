"""The Itron simulator's token call, shared by the baselines (aiohttp only: the raw
baselines must not carry export-worker code)."""

from __future__ import annotations

import aiohttp


async def itron_headers(session: aiohttp.ClientSession, sim_url: str) -> dict[str, str]:
    """Headers of an authenticated DPSS call, from a client-credentials token (the demo
    subscriber); callers add Itron-CorrelationId per request."""
    async with session.post(
        f"{sim_url}/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            "scope": "DPSSSubscriberApi",
        },
    ) as r:
        token = (await r.json())["access_token"]
    return {"Authorization": f"Bearer {token}", "DataSubscriberId": "demo-subscriber"}
