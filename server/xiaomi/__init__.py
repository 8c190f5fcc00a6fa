"""XiaoAi (小爱) speakers through the Xiaomi cloud: our own async client (account, MiNA,
conversation, MIoT), the per-model table, the `python -m server.xiaomi` command line, and the
bridge that makes each configured speaker an endpoint of the conversation core."""
