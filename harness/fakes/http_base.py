"""The life cycle the fake HTTP servers share: an aiohttp app on 127.0.0.1, on a free port by
default (tests run in parallel with other developers' servers, so no fixed port), usable as
`async with Fake() as server:`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from aiohttp import web


@dataclass
class FakeHTTPServer:
    """Subclasses are dataclasses too and build their routes in `make_app`.

    host and port are keyword-only so that each fake's own fields keep their positions."""

    host: str = field(default="127.0.0.1", kw_only=True)
    port: int = field(default=0, kw_only=True)  # 0: a free one, set by start()
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    # shutdown_timeout: handlers that hang on purpose are cancelled on close instead of waited for.
    runner_options: ClassVar[dict[str, Any]] = {"shutdown_timeout": 0.5, "access_log": None}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.make_app(), **self.runner_options)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop(self) -> None:
        """The name the Home Assistant and weather fakes had for `close`."""
        await self.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
