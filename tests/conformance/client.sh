#!/usr/bin/env bash
# The client command the MCP conformance suite runs: it appends the test
# server's URL and names the scenario in MCP_CONFORMANCE_SCENARIO. Each
# scenario is driven through `agentrt mcp`, i.e. agentrt's own MCP client.
set -u
URL="${@: -1}"
BIN="${AGENTRT_BIN:-agentrt}"
case "${MCP_CONFORMANCE_SCENARIO:-}" in
    tools_call) exec "$BIN" mcp call "$URL" add_numbers '{"a": 1, "b": 2}' ;;
    elicitation-sep1034-client-defaults) exec "$BIN" mcp call "$URL" test_client_elicitation_defaults ;;
    sse-retry) exec "$BIN" mcp call "$URL" test_reconnection ;;
    *) exec "$BIN" mcp tools "$URL" ;;
esac
