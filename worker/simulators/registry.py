"""A small in-memory stand-in for the Confluent Schema Registry REST endpoints the
client library uses (register, look up by id, latest version). For tests and the
local demo; point ``EXPORT_WORKER_SCHEMA_REGISTRY_URL`` at a real registry in production.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class FakeSchemaRegistry:
    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}
        self.subjects: dict[str, list[int]] = {}
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_post("/subjects/{subject}", self._lookup)
        app.router.add_get("/subjects/{subject}/versions/latest", self._latest)
        app.router.add_get("/schemas/ids/{id}", self._by_id)
        app.router.add_get("/subjects", self._list)
        return app

    @staticmethod
    def _key(schema_str: str) -> str:
        return json.dumps(json.loads(schema_str), sort_keys=True, separators=(",", ":"))

    def _find(self, schema_str: str) -> int | None:
        key = self._key(schema_str)
        for schema_id, entry in self.schemas.items():
            if self._key(entry["schema"]) == key:
                return schema_id
        return None

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        subject = request.match_info["subject"]
        try:
            schema_id = self._find(body["schema"])
        except (KeyError, ValueError):
            return web.json_response({"error_code": 42201, "message": "Invalid schema"}, status=422)
        if schema_id is None:
            schema_id = len(self.schemas) + 1
            self.schemas[schema_id] = {"schema": body["schema"], "schemaType": body.get("schemaType", "AVRO")}
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return web.json_response({"id": schema_id})

    async def _lookup(self, request: web.Request) -> web.Response:
        body = await request.json()
        subject = request.match_info["subject"]
        schema_id = self._find(body.get("schema", "null"))
        if schema_id is None or schema_id not in self.subjects.get(subject, []):
            return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)
        version = self.subjects[subject].index(schema_id) + 1
        return web.json_response(
            {"subject": subject, "id": schema_id, "version": version, "schema": self.schemas[schema_id]["schema"]}
        )

    async def _latest(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = self.subjects.get(subject)
        if not versions:
            return web.json_response({"error_code": 40401, "message": "Subject not found"}, status=404)
        schema_id = versions[-1]
        return web.json_response(
            {"subject": subject, "id": schema_id, "version": len(versions), "schema": self.schemas[schema_id]["schema"]}
        )

    async def _by_id(self, request: web.Request) -> web.Response:
        entry = self.schemas.get(int(request.match_info["id"]))
        if entry is None:
            return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)
        return web.json_response(entry)

    async def _list(self, _request: web.Request) -> web.Response:
        return web.json_response(sorted(self.subjects))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.base_url = f"http://{host}:{sockets[0].getsockname()[1] if sockets else port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
