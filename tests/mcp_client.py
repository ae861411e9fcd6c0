"""The Python MCP client of tests/mcp.rs: the official `mcp` SDK from PyPI (tests/requirements.txt)
connects to a workspace's MCP URL with a Bearer personal access token, lists the tools and calls
one, and prints what it saw as JSON.

    python mcp_client.py <mcp url> <token> <tool name> '<arguments json>'
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, tool: str, arguments: dict) -> dict:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            result = await client.call_tool(tool, arguments)
            return {
                "protocolVersion": client.protocol_version,
                "tools": [t.name for t in tools.tools],
                "call": result.model_dump(mode="json", by_alias=True, exclude_none=True),
            }


if __name__ == "__main__":
    url, token, tool, arguments = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, token, tool, json.loads(arguments)))))
