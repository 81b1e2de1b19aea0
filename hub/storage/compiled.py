"""Core statements compiled once, run on the asyncpg connection under an SQLAlchemy one.

For the hottest reads (a page of tasks: 100 rows and more per answer). SQLAlchemy's own
execution looks the compiled form up in its cache by a key it builds for every call, then
wraps each row in a `Row` through per-column processors; asyncpg's `Record` already holds
what the response Structs need. The connection still comes from the engine's pool (its
checkout, ping and return are SQLAlchemy's), and failures come out as SQLAlchemy's, so the
app answers them as it answers any other (503 for an unreachable database).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import sqlalchemy.exc
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


class Compiled:
    """`statement` as asyncpg SQL ($1, $2 …) and the names of its parameters in that order."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())  # type: ignore[attr-defined]

    async def fetch(
        self, conn: AsyncConnection, params: Mapping[str, Any]
    ) -> Sequence[asyncpg.Record]:
        args = [params[name] for name in self.names]
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        try:
            records: Sequence[asyncpg.Record] = await driver.fetch(self.sql, *args)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not (driver.is_closed() or isinstance(exc, asyncpg.InterfaceError)):
                raise  # an error in the statement itself: a bug, not an outage
            if driver.is_closed():
                await conn.invalidate()  # not back into the pool
            raise sqlalchemy.exc.OperationalError(self.sql, None, exc) from exc
        return records
