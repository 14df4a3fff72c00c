"""A tool round trip through the CLI on the embedded model: `dsv4 run --messages ... --json` asks, the model
calls the calculator, the script runs it and sends the result back, the model answers with it.

    python3 cli_tool_round_trip.py DSV4_EXECUTABLE TOY_TOOLS_JSON
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def reply(exe, messages, workdir):
    path = Path(workdir) / "messages.json"
    path.write_text(json.dumps(messages))
    out = subprocess.run([exe, "run", "--messages", str(path), "--json", "--quiet", "-n", "120"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(exe, tools_path):
    messages = [{"role": "system", "content": "You are a helpful assistant with a calculator and a unit converter.",
                 "tools": json.loads(Path(tools_path).read_text())},
                {"role": "user", "content": "Please calculate 4521 + 377."}]
    with tempfile.TemporaryDirectory() as workdir:
        first = reply(exe, messages, workdir)
        call = first["tool_calls"][0]["function"]
        expression = json.loads(call["arguments"])["expression"]
        assert call["name"] == "calculator" and re.fullmatch(r"[0-9 +\-*]+", expression), call
        result = str(eval(expression))  # digits and + - * only, checked above
        messages += [first, {"role": "tool", "content": result}]
        answer = reply(exe, messages, workdir)
    assert not answer["tool_calls"] and result in answer["content"], answer
    print(f"tool call {call['name']}({expression}) -> {result}; answer: {answer['content']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
