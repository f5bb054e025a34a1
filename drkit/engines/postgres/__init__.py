"""PostgreSQL: the engine, its files and pages, WAL spool and archive script, restore lay-down, replicas."""
