// The MCP client of tests/mcp.rs: the official TypeScript SDK connects to the endpoint with a
// Bearer token and runs the steps given as JSON, printing each answer (or the error) as JSON.
//   node client.mjs <mcp url> <token> '[{"op":"list"},{"op":"call","name":"...","arguments":{}}]'
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, stepsText] = process.argv.slice(2);
const steps = JSON.parse(stepsText);
const out = { steps: [] };
const client = new Client({ name: "sluice-test", version: "1.0.0" });
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
try {
  await client.connect(transport);
  out.protocolVersion = transport.protocolVersion ?? null;
  for (const step of steps) {
    try {
      if (step.op === "list") {
        out.steps.push(await client.listTools());
      } else if (step.op === "call") {
        out.steps.push(await client.callTool({ name: step.name, arguments: step.arguments ?? {} }));
      } else {
        throw new Error(`unknown step ${step.op}`);
      }
    } catch (e) {
      out.steps.push({ thrown: String(e), code: e.code ?? null });
    }
  }
} catch (e) {
  out.connectError = { message: String(e), code: e.code ?? null };
}
await client.close().catch(() => {});
console.log(JSON.stringify(out));
