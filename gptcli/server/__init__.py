"""`gptcli serve`: OpenAI's HTTP API over one engine (protocol.py reads requests, app.py
answers them, runner.py runs uvicorn). See docs/serve.md."""
