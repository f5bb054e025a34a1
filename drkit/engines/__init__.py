"""Database engines behind one protocol (base.Engine): PostgreSQL today, SQL Server next."""
