// A real OpenID provider for tests/sign_in.rs: node-oidc-provider (npm `oidc-provider`, installed
// by scripts/test.sh with `npm ci` in this directory) on 127.0.0.1, with one confidential client,
// PKCE required and the development login and consent pages, which a test drives over HTTP.
//
// Accounts: the login typed is the subject. Its e-mail address is the login when it has an `@`,
// else `<login>@example.com`; a login `unverified.<address>` has that address, and the provider
// does not assert it verified (`email_verified: false`).
//
// For the refusal tests, `POST /test/next-id-token` with a JSON object makes the next token
// answer carry an ID token re-signed with the provider's own key after changing its claims:
// `{"aud": "..."}` replaces the audience, `{"exp_offset_s": -3600}` sets the expiry relative to
// now. Signed with the real key, so only the changed claim is wrong.
//
// Usage: node provider.mjs --port P --client-id ID --client-secret S --redirect-uri URI
// Prints "listening" when it serves.

import { createServer } from "node:http";
import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";
import * as jose from "jose";

function argument(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const port = Number(argument("port"));
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "test-key", use: "sig", alg: "RS256" };

function claimsOf(login) {
  const unverified = login.startsWith("unverified.");
  const name = unverified ? login.slice("unverified.".length) : login;
  const email = name.includes("@") ? name : `${name}@example.com`;
  return {
    sub: login,
    email,
    email_verified: !unverified,
    given_name: "Test",
    family_name: login.split("@")[0],
  };
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: argument("client-id"),
      client_secret: argument("client-secret"),
      redirect_uris: [argument("redirect-uri")],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  jwks: { keys: [jwk] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["given_name", "family_name"],
  },
  // The claims of the scopes asked for go into the ID token itself.
  conformIdTokenClaims: false,
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => claimsOf(sub) }),
  cookies: { keys: ["sluice-test-cookie-key"] },
});

let nextIdToken = null;

provider.use(async (ctx, next) => {
  if (ctx.path === "/test/next-id-token" && ctx.method === "POST") {
    let body = "";
    for await (const chunk of ctx.req) body += chunk;
    nextIdToken = JSON.parse(body);
    ctx.status = 204;
    return;
  }
  await next();
  if (ctx.path === "/token" && nextIdToken && ctx.body && ctx.body.id_token) {
    const changes = nextIdToken;
    nextIdToken = null;
    const claims = jose.decodeJwt(ctx.body.id_token);
    if (changes.aud !== undefined) claims.aud = changes.aud;
    if (changes.exp_offset_s !== undefined) {
      const now = Math.floor(Date.now() / 1000);
      claims.exp = now + changes.exp_offset_s;
      claims.iat = Math.min(claims.iat, claims.exp - 60);
    }
    const key = await jose.importJWK(jwk, "RS256");
    ctx.body.id_token = await new jose.SignJWT(claims)
      .setProtectedHeader({ alg: "RS256", kid: "test-key", typ: "JWT" })
      .sign(key);
  }
});

createServer(provider.callback()).listen(port, "127.0.0.1", () => {
  console.log("listening");
});
