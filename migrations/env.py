"""Alembic environment: runs on the engine the caller hands over.

SQLite cannot ALTER most things, so every migration runs in batch mode there
(``render_as_batch``), and the naming convention on the metadata gives every
constraint a name that batch mode can drop.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

from infermeter.store.schema import metadata

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("infermeter migrations need an engine or sqlalchemy.url")
        engine = create_engine(url)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("infermeter migrations run online only")
run_migrations_online()
