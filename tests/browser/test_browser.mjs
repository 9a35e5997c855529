// End-to-end: the store browser served by a real lmapd (behind a bearer
// token), driven in headless Debian Chromium by playwright-core.
//
// - the page asks for the token and keeps it in the session only;
// - ids page as GET /v1/ids and `lmap ids` list them; the search works from
//   the keyboard alone, and a result opens from the keyboard;
// - a box dragged over the map gives bars with the classes and
//   probabilities that POST /v1/labels answers for the box the page shows;
//   moving and resizing it, relabel (whose dashed region is the crop
//   mirrored across the diagonal), flip and a 3 x 3 token grid too; the
//   box moves and resizes from the keyboard as well;
// - the side panel shows the store and live figures from /metrics;
// - every control has a label; no console error, no CSP violation, and no
//   request leaves 127.0.0.1.
// Screenshots go to $LMAP_TEST_TMP/browser (kept as test artifacts); with
// LMAP_UPDATE_DOCS=1 the README's screenshot and rendered SVG are written
// to docs/images from this run. Loopback only; lmapd is stopped by its PID.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const LMAP = process.env.LMAP_BIN || path.join(root, "build/lmap");
const LMAPD = process.env.LMAPD_BIN || path.join(root, "build/lmapd");
const TMP = path.join(process.env.LMAP_TEST_TMP || "/tmp", "browser");
const CHROMIUM = "/usr/bin/chromium";

let playwright;
try {
  playwright = await import("playwright-core");
} catch (e) {
  console.error("FAIL: playwright-core is not installed: run tests/run.sh, or " +
                "npm ci --prefix tests/browser (" + e.message + ")");
  process.exit(1);
}
if (!fs.existsSync(CHROMIUM)) {
  console.error("FAIL: " + CHROMIUM + " is missing: run tests/run.sh, or apt-get install chromium");
  process.exit(1);
}

let passed = 0;
const failures = [];
function check(cond, what) {
  if (cond) passed++;
  else { failures.push(what); console.log("FAIL: " + what); }
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.status !== 0)
    throw new Error(cmd + " " + args.join(" ") + ": exit " + r.status + "\n" + r.stderr);
  return r.stdout;
}

// ---- the store and the daemon ----

fs.rmSync(TMP, { recursive: true, force: true });
fs.mkdirSync(TMP, { recursive: true });
const store = path.join(TMP, "browse.lmap");
const names = path.join(TMP, "classes.txt");
// ImageNet's class names, as torchvision lists them, for a legend that reads.
fs.writeFileSync(names, run("/usr/bin/python3", ["-c",
  "import torchvision.models._meta as m; print('\\n'.join(m._IMAGENET_CATEGORIES))"]));
run(LMAP, ["synth", "-o", store, "--images", "120", "--class-names", names, "--level", "1",
           "--force", "--no-progress"]);
const ids = run(LMAP, ["ids", store]).split("\n").filter(Boolean);
const classNames = fs.readFileSync(names, "utf8").split("\n");
const token = "browser-test-token-" + process.pid;
const tokenFile = path.join(TMP, "token");
fs.writeFileSync(tokenFile, token + "\n");

const logPath = path.join(TMP, "lmapd.log");
const log = fs.openSync(logPath, "w");
const daemon = spawn(LMAPD, ["--store", store, "--listen", "127.0.0.1:0", "--token-file", tokenFile,
                             "--threads", "2"], { stdio: ["ignore", "ignore", log] });
let port = 0;
for (let i = 0; i < 500 && !port; i++) {
  await new Promise((r) => setTimeout(r, 20));
  for (const line of fs.readFileSync(logPath, "utf8").split("\n"))
    if (line.includes('"event":"listening"')) port = JSON.parse(line).port;
}
if (!port) {
  console.error("FAIL: lmapd did not start:\n" + fs.readFileSync(logPath, "utf8"));
  daemon.kill("SIGKILL");
  process.exit(1);
}
const base = "http://127.0.0.1:" + port;

async function labels(body) {
  const res = await fetch(base + "/v1/labels", {
    method: "POST", body: JSON.stringify(body),
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
  });
  if (!res.ok) throw new Error("POST /v1/labels: " + res.status + " " + (await res.text()));
  return (await res.json()).results[0];
}

// ---- the browser ----

const browser = await playwright.chromium.launch({
  executablePath: CHROMIUM,
  // No sandbox (root in a VM); no background traffic to Google's hosts,
  // which this closed network refuses.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const problems = [];
let tokenGiven = false; // until then, the 401s that ask for it are expected
page.on("console", (m) => {
  if (m.type() === "error" && !(!tokenGiven && m.text().includes("status of 401")))
    problems.push("console: " + m.text());
});
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("request", (r) => {
  const u = new URL(r.url());
  if (u.protocol !== "data:" && u.host !== "127.0.0.1:" + port)
    problems.push("request outside lmapd: " + r.url());
});

// The bars' classes and probabilities, and the request they answer.
async function bars() {
  return page.evaluate(() => {
    const ol = document.getElementById("bars");
    return {
      request: ol.dataset.request ? JSON.parse(ol.dataset.request) : null,
      classes: [...ol.children].map((li) => +li.dataset.class),
      probs: [...ol.children].map((li) => +li.dataset.p),
      names: [...ol.children].map((li) => li.querySelector(".name").textContent),
    };
  });
}

// Waits (up to 15 s: sanitizer builds are slow) until the page has drawn the
// answer to the box its inputs show.
async function settledBars(what) {
  for (let i = 0; i < 600; i++) {
    const state = await page.evaluate(() => ({
      inputs: ["x0", "y0", "x1", "y1"].map((k) => +document.getElementById("box-" + k).value),
      format: document.getElementById("format-relabel").checked ? "relabel" : "xyxy",
      flip: document.getElementById("flip").checked,
      G: +document.getElementById("output-size").value,
      request: document.getElementById("bars").dataset.request,
    }));
    if (state.request) {
      const req = JSON.parse(state.request);
      const [x0, y0, x1, y1] = state.inputs;
      const box = state.format === "relabel" ? [y0, x0, y1 - y0, x1 - x0] : [x0, y0, x1, y1];
      if (req.box_format === state.format && req.queries[0].flip === state.flip &&
          req.output_size === state.G &&
          req.queries[0].box.every((v, j) => Math.abs(v - box[j]) < 1e-9))
        return Object.assign(await bars(), { box: state.inputs });
    }
    await page.waitForTimeout(25);
  }
  throw new Error(what + ": the bars never showed the box's answer");
}

// Compares the bars with the server's answer for the request they show.
async function checkBars(shown, what, token = 0) {
  const ans = await labels(shown.request);
  const G = shown.request.output_size;
  const classes = G > 1 ? ans.classes[token] : ans.classes;
  const probs = G > 1 ? ans.probs[token] : ans.probs;
  const n = Math.min(10, classes.length);
  check(shown.classes.length === n &&
        shown.classes.every((c, i) => c === classes[i]) &&
        shown.probs.every((p, i) => p === probs[i]),
        what + ": bars " + JSON.stringify(shown.classes.slice(0, 3)) + " / " +
        JSON.stringify(shown.probs.slice(0, 3)) + " are POST /v1/labels' " +
        JSON.stringify(classes.slice(0, 3)) + " / " + JSON.stringify(probs.slice(0, 3)));
  check(shown.names.every((s, i) => s === classes[i] + " " + classNames[classes[i]]),
        what + ": bars named by the store's class names (" + shown.names[0] + ")");
  return { classes, probs };
}

// The grid's place on the screen, for drags in image fractions.
async function gridRect() {
  return page.locator("#cells").boundingBox();
}

async function drag(from, to, steps = 12) {
  const g = await gridRect();
  const at = (f) => [g.x + f[0] * g.width, g.y + f[1] * g.height];
  await page.mouse.move(...at(from));
  await page.mouse.down();
  await page.mouse.move(...at(to), { steps });
  await page.mouse.up();
}

const near = (a, b, tol) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

try {
  const response = await page.goto(base + "/");
  check(response.status() === 200 &&
        (response.headers()["content-security-policy"] || "").includes("default-src 'none'"),
        "GET / is the page, with its content security policy");

  // The token: asked for at the first 401, kept in this tab's session.
  await page.locator("#token-dialog[open]").waitFor({ timeout: 10000 });
  check(true, "the page asks for the bearer token");
  await page.locator("#token-input").fill(token);
  tokenGiven = true;
  await page.locator("#token-input").press("Enter");
  await page.locator("#id-list button").first().waitFor({ timeout: 10000 });
  const kept = await page.evaluate(() => [sessionStorage.getItem("lmap-token"), localStorage.length]);
  check(kept[0] === token && kept[1] === 0, "the token is kept in session storage only");

  // Pages of ids, as `lmap ids` lists them.
  const listed = async () => page.$$eval("#id-list button", (bs) => bs.map((b) => b.dataset.id));
  let shown = await listed();
  check(JSON.stringify(shown) === JSON.stringify(ids.slice(0, 50)),
        "the first page is lmap ids' first 50 (" + shown.length + ")");
  await page.locator("#page-next").click();
  await page.waitForFunction((id) => document.querySelector("#id-list button")?.dataset.id === id, ids[50]);
  shown = await listed();
  check(JSON.stringify(shown) === JSON.stringify(ids.slice(50, 100)), "Next: ids 51-100");
  await page.locator("#page-prev").click();
  await page.waitForFunction((id) => document.querySelector("#id-list button")?.dataset.id === id, ids[0]);
  check(true, "Previous: back to ids 1-50");

  // The search from the keyboard alone: Tab to the field, type, Enter,
  // Tab to the first result, Enter.
  await page.locator("body").click({ position: { x: 5, y: 5 } });
  let reached = false;
  for (let i = 0; i < 10 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement?.id === "id-search");
  }
  check(reached, "the id search is reached with Tab");
  const target = ids[77];
  const prefix = target.slice(0, target.indexOf("_") + 1);
  const want = ids.filter((id) => id.startsWith(prefix)).slice(0, 50);
  await page.keyboard.type(prefix);
  await page.keyboard.press("Enter");
  await page.waitForFunction((n) => document.querySelectorAll("#id-list button").length === n, want.length);
  shown = await listed();
  check(JSON.stringify(shown) === JSON.stringify(want),
        "search '" + prefix + "': the " + want.length + " ids that start with it");
  // Past the Search button to the first result.
  for (let i = 0; i < 3; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate(() => document.activeElement?.closest("#id-list") != null)) break;
  }
  await page.keyboard.press("Enter");
  await page.waitForFunction((id) => document.getElementById("map-title").textContent === id, want[0]);
  check(await page.locator("#cells rect").count() === 15 * 15, "Enter on a result shows its map (225 cells)");
  const id = want[0];

  // Drag a new box over the map.
  await drag([0.12, 0.3], [0.55, 0.85]);
  let s = await settledBars("drag");
  check(near(s.box, [0.12, 0.3, 0.55, 0.85], 0.02), "the dragged box is in the inputs: " + s.box);
  check(s.request.queries[0].id === id && s.request.box_format === "xyxy", "the bars are for this id, xyxy");
  const xyxy = await checkBars(s, "dragged xyxy box");
  await page.screenshot({ path: path.join(TMP, "browser-xyxy.png"), fullPage: true });

  // Move it, then resize it by its south-east corner.
  const before = s.box;
  const g = await gridRect();
  const mid = [(before[0] + before[2]) / 2, (before[1] + before[3]) / 2];
  await drag(mid, [mid[0] + 0.2, mid[1] - 0.1]);
  s = await settledBars("move");
  check(near(s.box, [before[0] + 0.2, before[1] - 0.1, before[2] + 0.2, before[3] - 0.1], 0.02),
        "dragging inside the box moves it: " + s.box);
  await checkBars(s, "moved box");
  const se = [s.box[2], s.box[3]];
  await drag(se, [se[0] + 0.1, se[1] + 0.05]);
  s = await settledBars("resize");
  check(near(s.box, [before[0] + 0.2, before[1] - 0.1, Math.min(1, before[2] + 0.3), before[3] - 0.05], 0.02),
        "dragging a corner resizes the box: " + s.box + " (grid " + Math.round(g.width) + " px)");
  await checkBars(s, "resized box");

  // The box from the keyboard: arrows move it, Shift with arrows resizes it.
  const k0 = s.box;
  await page.locator(".ui-box").focus();
  for (const key of ["ArrowRight", "ArrowRight", "ArrowRight", "ArrowDown", "Shift+ArrowLeft", "Shift+ArrowLeft"])
    await page.keyboard.press(key);
  s = await settledBars("keyboard");
  const kWant = [k0[0] + 0.03, k0[1] + 0.01, k0[2] + 0.01, k0[3] + 0.01];
  check(near(s.box, kWant, 1e-6) &&
        await page.evaluate(() => document.activeElement.classList.contains("ui-box")),
        "arrow keys move the focused box, Shift+arrows resize it, and it keeps the focus: " + s.box +
        " from " + k0 + ", focus on " + await page.evaluate(() => document.activeElement.outerHTML.slice(0, 80)));
  await checkBars(s, "box moved by the keyboard");

  // Back to the first box by the inputs, then relabel.
  for (const [k, v] of [["x0", 0.12], ["y0", 0.3], ["x1", 0.55], ["y1", 0.85]]) {
    await page.locator("#box-" + k).fill(String(v));
    await page.locator("#box-" + k).press("Enter");
  }
  s = await settledBars("typed box");
  check(near(s.box, [0.12, 0.3, 0.55, 0.85], 1e-9), "a box typed in the inputs is the box asked");
  await page.getByRole("radio", { name: /^relabel/ }).check();
  s = await settledBars("relabel");
  check(s.request.box_format === "relabel" &&
        near(s.request.queries[0].box, [0.3, 0.12, 0.55, 0.43], 1e-9),
        "relabel sends the crop as (top, left, height, width): " + JSON.stringify(s.request.queries[0].box));
  const relabel = await checkBars(s, "relabel box");
  check(JSON.stringify(relabel) !== JSON.stringify(xyxy),
        "relabel's soft label differs from xyxy's for the same crop");
  const pooled = await page.locator(".ui-pooled").boundingBox();
  const gr = await gridRect();
  // The official reading pools x in [top, top + height] and y in
  // [left, left + width], both scaled by the width: here a square grid.
  const f = [(pooled.x - gr.x) / gr.width, (pooled.y - gr.y) / gr.height,
             (pooled.x + pooled.width - gr.x) / gr.width, (pooled.y + pooled.height - gr.y) / gr.height];
  check(near(f, [0.3, 0.12, 0.85, 0.55], 0.02), "the dashed region is the crop mirrored: " + f.map((v) => v.toFixed(3)));
  await page.screenshot({ path: path.join(TMP, "browser-relabel.png"), fullPage: true });

  // Flip, then a 3 x 3 token grid and its token 4.
  await page.getByLabel("Flip horizontally").check();
  s = await settledBars("flip");
  check(s.request.queries[0].flip === true, "flip is sent");
  await checkBars(s, "flipped relabel box");
  await page.getByLabel("Flip horizontally").uncheck();
  await page.getByRole("radio", { name: /^xyxy/ }).check();
  await page.getByLabel("Output size G").selectOption("3");
  s = await settledBars("G = 3");
  check(await page.locator("#ui-overlay line").count() === 4, "G = 3: the token grid's 4 lines are drawn");
  await page.getByLabel("Token shown").selectOption("4");
  await page.waitForFunction(() => /^Token 4 /.test(document.getElementById("label-status").textContent));
  s = await settledBars("token 4");
  await checkBars(s, "G = 3, token 4", 4);
  await page.screenshot({ path: path.join(TMP, "browser-tokens.png"), fullPage: true });
  await page.getByLabel("Output size G").selectOption("1");
  await page.getByRole("radio", { name: /^relabel/ }).check();
  s = await settledBars("relabel again");

  // The side panel: the store, and live figures once two scrapes are in.
  const info = await page.$$eval("#store-info dd", (dds) => dds.map((d) => d.textContent));
  check(info[0] === String(ids.length) && info[3].startsWith("1000"),
        "the store panel shows the records and classes: " + info.slice(0, 4));
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById("live-labels").textContent),
                             null, { timeout: 10000 });
  const live = await page.$$eval("#live dd", (dds) => dds.map((d) => d.textContent));
  check(/^\d+$/.test(live[0]) && /^\d+$/.test(live[1]) && live[3] === "yes",
        "live figures from /metrics: labels/s " + live[0] + ", requests/s " + live[1] +
        ", p99 " + live[2] + ", ready " + live[3]);

  // Every control has a label.
  const unlabelled = await page.evaluate(() => {
    const bad = [];
    for (const el of document.querySelectorAll("input, select, textarea, button")) {
      const name = el.tagName === "BUTTON" ? el.textContent.trim() || el.getAttribute("aria-label")
        : (el.labels && el.labels.length ? el.labels[0].textContent.trim() : el.getAttribute("aria-label"));
      if (!name) bad.push(el.id || el.outerHTML.slice(0, 60));
    }
    return bad;
  });
  check(unlabelled.length === 0, "every control has a label (" + unlabelled.join(", ") + ")");
  check(problems.length === 0, "no console error and no request outside lmapd: " + problems.slice(0, 5).join("; "));

  await page.screenshot({ path: path.join(TMP, "browser.png"), fullPage: false });
  if (process.env.LMAP_UPDATE_DOCS) {
    const docs = path.join(root, "docs/images");
    fs.mkdirSync(docs, { recursive: true });
    fs.copyFileSync(path.join(TMP, "browser.png"), path.join(docs, "browser.png"));
    const b = s.request.queries[0].box.map((v) => +v.toFixed(6)).join(",");
    run(LMAP, ["render", store, id, "--box", b, "--box-format", "relabel", "-o", path.join(docs, "map.svg")]);
    console.log("wrote docs/images/browser.png and docs/images/map.svg (" + id + ", relabel box " + b + ")");
  }
} catch (e) {
  failures.push(String(e.stack || e));
  console.log("FAIL: " + (e.stack || e));
  await page.screenshot({ path: path.join(TMP, "failure.png"), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
  const exited = daemon.exitCode !== null ? Promise.resolve(daemon.exitCode)
    : new Promise((r) => daemon.once("exit", (c) => r(c)));
  daemon.kill("SIGTERM");
  const code = await exited;
  check(code === 0, "lmapd stopped by its PID: exit " + code);
}
console.log("screenshots in " + TMP);
console.log(passed + " passed, " + failures.length + " failed");
process.exit(failures.length ? 1 : 0);
