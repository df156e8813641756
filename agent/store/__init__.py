"""The SQL store: schema, migrations, connection, and the writes of a flush."""
