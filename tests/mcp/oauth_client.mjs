// The OAuth MCP client of tests/mcp_oauth.rs: the official TypeScript SDK with an
// OAuthClientProvider that completes the browser part headlessly. Its redirectToAuthorization
// opens the authorization URL with the signed-in session cookie, reads the consent form, allows
// it and keeps the code from the redirect, as a browser would (redirects followed by hand).
// State (client information, tokens, verifier) persists in a JSON file between runs, exactly as
// the SDK gives it (it stamps an `issuer` and drops data whose issuer does not match).
//   node oauth_client.mjs <mcp url> '<config json>'
// config: {state: <file>, cookie: "sluice_session=...", consent: true|false, steps: [...],
//          clientMetadataUrl: <https URL of a client metadata document, instead of registering>}
// steps: {op:"list"} {op:"call",name,arguments} {op:"sleep",ms} {op:"tokens"}
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [url, configText] = process.argv.slice(2);
const config = JSON.parse(configText);
const saved = existsSync(config.state) ? JSON.parse(readFileSync(config.state, "utf8")) : {};
const out = { steps: [], authorizations: [], savedTokens: 0 };
const redirectUrl = "http://127.0.0.1:7777/callback";
let code = null;

const persist = () => writeFileSync(config.state, JSON.stringify(saved));

const provider = {
  get redirectUrl() { return redirectUrl; },
  clientMetadataUrl: config.clientMetadataUrl,
  get clientMetadata() {
    return {
      client_name: "Sluice test agent",
      redirect_uris: [redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  clientInformation() { return saved.client; },
  saveClientInformation(info) { saved.client = info; persist(); },
  tokens() { return saved.tokens; },
  saveTokens(tokens) { saved.tokens = tokens; out.savedTokens += 1; persist(); },
  saveCodeVerifier(v) { saved.verifier = v; persist(); },
  codeVerifier() { return saved.verifier; },
  invalidateCredentials(scope) {
    if (scope === "all" || scope === "tokens") delete saved.tokens;
    if (scope === "all" || scope === "client") delete saved.client;
    if (scope === "all" || scope === "verifier") delete saved.verifier;
    persist();
  },
  async redirectToAuthorization(authorizationUrl) {
    const record = { url: String(authorizationUrl) };
    out.authorizations.push(record);
    if (!config.consent) {
      record.skipped = true;
      return;
    }
    const page = await fetch(authorizationUrl, { redirect: "manual", headers: { cookie: config.cookie } });
    record.pageStatus = page.status;
    const html = await page.text();
    const consent = /name="consent" value="([^"]+)"/.exec(html);
    if (!consent) {
      record.page = html.slice(0, 500);
      return;
    }
    const form = new URLSearchParams({ consent: consent[1], decision: "allow" });
    const answer = await fetch(new URL("/oauth/authorize", authorizationUrl), {
      method: "POST",
      redirect: "manual",
      headers: { cookie: config.cookie, "content-type": "application/x-www-form-urlencoded" },
      body: form,
    });
    record.formStatus = answer.status;
    const location = answer.headers.get("location");
    record.location = location;
    code = location ? new URL(location).searchParams.get("code") : null;
  },
};

async function connect() {
  const client = new Client({ name: "sluice-oauth-test", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  try {
    await client.connect(transport);
    return { client, transport };
  } catch (e) {
    if (!(e instanceof UnauthorizedError) || !code) throw e;
  }
  await transport.finishAuth(code);
  code = null;
  const again = new Client({ name: "sluice-oauth-test", version: "1.0.0" });
  const second = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  await again.connect(second);
  return { client: again, transport: second };
}

let client;
try {
  const connected = await connect();
  client = connected.client;
  out.protocolVersion = connected.transport.protocolVersion ?? null;
  for (const step of config.steps) {
    try {
      if (step.op === "list") {
        out.steps.push(await client.listTools());
      } else if (step.op === "call") {
        out.steps.push(await client.callTool({ name: step.name, arguments: step.arguments ?? {} }));
      } else if (step.op === "sleep") {
        await new Promise((r) => setTimeout(r, step.ms));
        out.steps.push({ slept: step.ms });
      } else if (step.op === "tokens") {
        out.steps.push({ tokens: saved.tokens ?? null });
      } else {
        throw new Error(`unknown step ${step.op}`);
      }
    } catch (e) {
      out.steps.push({ thrown: String(e), unauthorized: e instanceof UnauthorizedError, code: e.code ?? null });
    }
  }
} catch (e) {
  out.connectError = { message: String(e), unauthorized: e instanceof UnauthorizedError, code: e.code ?? null };
}
out.client = saved.client ?? null;
out.tokens = saved.tokens ?? null;
await client?.close().catch(() => {});
console.log(JSON.stringify(out));
