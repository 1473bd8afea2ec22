"""One module per command, named after it: `gptcli eval` is commands/eval.py.

Each module takes a request dataclass and returns a result that renders itself as text
(`to_text`) and as JSON (`to_json`); cli/app.py parses flags into the request and prints the
result. Commands wire the stages below them and never write to stdout themselves:
generate streams into the sink cli/app.py hands in. Heavy libraries are imported by these
modules, so cli/app.py imports them only inside command bodies.
"""
