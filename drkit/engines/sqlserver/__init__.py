"""SQL Server: T-SQL builders, the ODBC session, msdb history, the chain model and availability groups."""
