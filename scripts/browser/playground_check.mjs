// Load the card serve playground in headless Chromium, run AR and CARD side by side on one
// prompt, check that decoding steps render and text appears, and save screenshots.
// With --api-key KEY (a server started with --api-key), it first checks that the page asks for
// the key and refuses a wrong one, then enters the key and runs as above.
// Usage: node playground_check.mjs --url http://127.0.0.1:PORT/ --out DIR [--api-key KEY]
import { chromium } from "playwright-core";
import path from "node:path";
import fs from "node:fs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const url = arg("--url");
const out = arg("--out", ".");
const apiKey = arg("--api-key", "");
fs.mkdirSync(out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page = null;
const fail = async (msg) => {
  console.error("playground check FAILED: " + msg);
  if (page) {
    console.error("page error box: " + await page.textContent("#error").catch(() => "?"));
    await page.screenshot({ path: path.join(out, "playground-failed.png"), fullPage: true }).catch(() => {});
  }
  await browser.close();
  process.exit(1);
};
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 950 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push("request failed: " + r.url()));
  await page.goto(url);
  await page.fill("#prompt", "Alice was beginning");
  if (apiKey) {
    const asks = () => document.getElementById("model").textContent.includes("needs an API key");
    await page.waitForFunction(asks, null, { timeout: 10000 });
    for (const wrong of ["", "not-" + apiKey]) {
      await page.fill("#api_key", wrong);
      await page.click("#run");
      await page.waitForFunction(() => document.getElementById("error").textContent.includes("needs an API key"),
        null, { timeout: 10000 });
      if (await page.locator(".panel").count()) await fail(`key ${JSON.stringify(wrong)}: decoding started`);
      await page.waitForSelector("#run:not([disabled])");
    }
    console.log("api key: the page refused a missing and a wrong key");
    await page.fill("#api_key", apiKey);
  } else {
    await page.waitForFunction(() => document.getElementById("model").textContent.includes("context"));
  }
  await page.selectOption("#decoder", "all");
  await page.fill("#max_tokens", "32");
  // A barely trained model is never confident: a low τ shows several commits per step.
  await page.fill("#threshold", "0.004");
  await page.fill("#delay", "80");
  // The verifier with a draft tree: its text is still AR's.
  await page.fill("#tree", "4");
  await page.click("#run");
  const card = ".panel[data-decoder=card]";
  const ar = ".panel[data-decoder=ar]";
  // Mid-run: the first steps are on screen (with pending [MASK] slots unless τ let all pass).
  await page.waitForSelector(`${card} .steps .step`, { timeout: 30000 });
  const masked = await page.locator(`${card} .slot.masked`).count();
  console.log(`mid-run: ${masked} pending [MASK] slots in the CARD window`);
  await page.screenshot({ path: path.join(out, "playground-running.png") });
  await page.waitForSelector(`${card}[data-done="1"]`, { timeout: 60000 });
  await page.waitForSelector(`${ar}[data-done="1"]`, { timeout: 60000 });
  await page.waitForSelector(`.panel[data-decoder=verify][data-done="1"]`, { timeout: 60000 });
  const stats = await page.evaluate(() => {
    const p = (d) => {
      const el = document.querySelector(`.panel[data-decoder=${d}]`);
      return {
        steps: el.querySelectorAll(".steps .step").length,
        text: el.querySelector(".body").textContent,
        tokens: Number(el.querySelector(".s-tokens").textContent),
        forwards: Number(el.querySelector(".s-forwards").textContent),
        tpf: el.querySelector(".s-tpf").textContent,
        tps: el.querySelector(".s-tps").textContent,
        status: el.querySelector(".status").textContent,
        branch: el.querySelectorAll(".steps .tok.branch").length,
      };
    };
    return { ar: p("ar"), card: p("card"), verify: p("verify"), error: document.getElementById("error").textContent };
  });
  await page.screenshot({ path: path.join(out, "playground.png"), fullPage: true });
  console.log(JSON.stringify(stats));
  if (errors.length) await fail("page errors: " + errors.join("; "));
  if (stats.error) await fail("the page shows an error: " + stats.error);
  for (const d of ["ar", "card", "verify"]) {
    const s = stats[d];
    if (s.steps < 1) await fail(`${d}: no steps rendered`);
    if (!s.text.length || s.tokens < 1) await fail(`${d}: no text appeared`);
    if (s.forwards < 1 || !(Number(s.tps) > 0)) await fail(`${d}: no statistics`);
  }
  if (stats.ar.steps !== stats.ar.forwards) await fail("AR: one step per forward pass expected");
  if (stats.verify.text !== stats.ar.text) await fail("verified CARD must show AR's text");
  if (stats.verify.forwards > stats.ar.forwards) await fail("verified CARD took more passes than AR");
  console.log("playground check: ok");
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
