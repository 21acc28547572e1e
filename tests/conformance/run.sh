#!/usr/bin/env bash
# Runs every client scenario of the official MCP conformance suite
# (npm @modelcontextprotocol/conformance) against agentrt's MCP client and
# prints a pass/fail line per scenario. Needs Node.js; 0.1.12 is the newest
# release that runs on Node 20 (later ones need Node 22).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
cargo build --locked -q -p agentrt-cli
export AGENTRT_BIN="$ROOT/target/debug/agentrt"
WORK=target/mcp-conformance
mkdir -p "$WORK" && cd "$WORK"
[ -d node_modules/@modelcontextprotocol/conformance ] || npm install --silent --no-audit --no-fund @modelcontextprotocol/conformance@0.1.12 >/dev/null
SCENARIOS=$(npx --no-install conformance list | sed -n '/Client scenarios/,$p' | sed -n 's/^  - //p')
pass=0; fail=0
for s in $SCENARIOS; do
    if timeout 120 npx --no-install conformance client --command "$ROOT/tests/conformance/client.sh" --scenario "$s" > "log-${s//\//_}.txt" 2>&1; then
        echo "PASS  $s"; pass=$((pass + 1))
    else
        echo "FAIL  $s"; fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed (logs in $WORK)"
