// The web UI as a user meets it, in a real browser (Debian's chromium, headless, driven by
// playwright-core). Run by tests/web_ui.rs, which starts `msaas serve --embedded` and checks
// the downloads against the API afterwards. Env: MSAAS_URL, MSAAS_KEY, SONG, BROKEN,
// CHROMIUM, OUT (downloads), ANONYMOUS_URL (optional: a server with anonymous auth),
// SCREENSHOTS (optional: write docs/ screenshots there).
// Prints one JSON line {job, stem, download, mix} on success; exits 1 with a reason otherwise.

const { chromium } = require("playwright-core");
const path = require("path");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const URL_ = env("MSAAS_URL");
const KEY = env("MSAAS_KEY");
const OUT = env("OUT");
const SHOTS = process.env.SCREENSHOTS || "";

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function until(what, predicate, timeoutMs = 120000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function shot(page, name) {
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    args: ["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
  });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });

  // 1. A wrong key is refused in words; the right one signs in.
  await page.goto(URL_);
  await page.waitForSelector("#sign-in:not([hidden])");
  await shot(page, "sign-in.png");
  await page.fill("#key", "not-the-key");
  await page.click('#sign-in-form button[type="submit"]');
  const refused = await until("the sign-in error", async () => {
    const text = await page.textContent("#sign-in-error");
    return text && text.trim() ? text : null;
  });
  check(/not accepted/i.test(refused), `sign-in error says: ${refused}`);
  await page.fill("#key", KEY);
  await page.click('#sign-in-form button[type="submit"]');
  await page.waitForSelector("#app:not([hidden])");
  await until("the model list", () => page.$$eval("#model option", (o) => o.length > 0));

  // 2. Upload a song; its progress moves; it finishes.
  await page.setInputFiles("#files", env("SONG"));
  const row = await until("the job row", () => page.$("#jobs li"));
  const jobId = await row.getAttribute("data-job");
  const seen = new Set();
  await until(
    "the job to finish",
    async () => {
      const status = await page.$eval(`#jobs li[data-job="${jobId}"]`, (li) => ({
        state: li.querySelector(".state").textContent,
        progress: li.querySelector("progress").value,
      }));
      seen.add(status.progress);
      check(status.state !== "failed", "the song's job failed");
      return status.state === "done";
    },
    180000,
  );
  const between = [...seen].filter((p) => p > 0 && p < 100);
  check(between.length >= 1 && seen.size >= 3, `progress never moved: saw ${[...seen]}`);
  await shot(page, "jobs.png");

  // 3. Open the player: one track per stem, with waveforms.
  await page.click(`#jobs li[data-job="${jobId}"] button.open`);
  await until("the stems", async () => {
    const status = await page.textContent("#player-status");
    return /stems/.test(status) && !/Loading/.test(status);
  });
  const stems = await page.$$eval("#tracks li", (lis) => lis.map((li) => li.dataset.stem));
  check(stems.includes("vocals") && stems.length >= 2, `tracks: ${stems}`);

  // 4. Play: the audio clock advances; Space pauses.
  await page.click("#play");
  const played = await until("the playhead to move", () =>
    page.evaluate(() => (window.msaasPlayer.position() > 0.3 ? window.msaasPlayer.position() : 0)),
  20000);
  check(played > 0.3, "not playing");
  const heardAll = await until("sound from the analyser", () =>
    page.evaluate(() => (window.msaasPlayer.level() > 1e-3 ? window.msaasPlayer.level() : 0)),
  10000);
  await shot(page, "player.png");

  // 5. Solo and mute change what is heard: the rendered mix equals the soloed stem alone, and
  //    with every stem muted the analyser hears silence.
  const mixError = async (only) =>
    page.evaluate(async (only) => {
      const player = window.msaasPlayer;
      const mix = await player.renderMix();
      const want = player.tracks.filter((t) => only.includes(t.name)).map((t) => t.buffer);
      let worst = 0;
      for (let c = 0; c < mix.numberOfChannels; c++) {
        const got = mix.getChannelData(c);
        for (let i = 0; i < got.length; i++) {
          let expected = 0;
          for (const b of want) expected += i < b.length ? b.getChannelData(Math.min(c, b.numberOfChannels - 1))[i] : 0;
          worst = Math.max(worst, Math.abs(got[i] - expected));
        }
      }
      return worst;
    }, only);
  check((await mixError(stems)) < 1e-4, "the full mix is not the sum of the stems");
  await page.click('#tracks li[data-stem="vocals"] button.solo');
  check((await mixError(["vocals"])) < 1e-4, "solo vocals: the mix is not the vocals alone");
  check((await mixError(stems)) > 1e-3, "solo vocals changed nothing");
  await page.click('#tracks li[data-stem="vocals"] button.solo');
  await page.click('#tracks li[data-stem="vocals"] button.mute');
  const rest = stems.filter((s) => s !== "vocals");
  check((await mixError(rest)) < 1e-4, "mute vocals: the mix still has them");
  for (const stem of rest) await page.click(`#tracks li[data-stem="${stem}"] button.mute`);
  const silent = await until("silence with every stem muted", () =>
    page.evaluate(() => window.msaasPlayer.level() < 1e-5),
  10000);
  check(silent, "muted, yet heard");
  for (const stem of stems) await page.click(`#tracks li[data-stem="${stem}"] button.mute`);
  // Space (with the focus on no control) plays and pauses.
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  const playing = () => page.evaluate(() => window.msaasPlayer.playing);
  const before = await playing();
  await page.keyboard.press("Space");
  await until("Space to toggle playback", async () => (await playing()) !== before, 5000);
  if (await playing()) {
    await page.keyboard.press("Space");
    await until("Space to pause", async () => !(await playing()), 5000);
  }

  // 6. Download a stem (the Rust side compares it with the API's bytes); export the mix.
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click('#tracks li[data-stem="vocals"] a.download'),
  ]);
  const downloadPath = path.join(OUT, `download-${download.suggestedFilename()}`);
  await download.saveAs(downloadPath);
  const [exported] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
  check(/mix\.wav$/.test(exported.suggestedFilename()), `export named ${exported.suggestedFilename()}`);
  const mixPath = path.join(OUT, "mix.wav");
  await exported.saveAs(mixPath);

  // 7. A job that fails shows its message; deleting it removes it.
  await page.setInputFiles("#files", env("BROKEN"));
  const failure = await until(
    "the broken file's failure",
    async () => {
      const rows = await page.$$eval("#jobs li", (lis) =>
        lis.map((li) => ({ id: li.dataset.job, problem: li.querySelector(".problem").textContent })),
      );
      const failed = rows.find((r) => r.id !== jobId && r.problem);
      return failed || null;
    },
    120000,
  );
  // The row says what the API says went wrong, with its code.
  const recorded = await page.evaluate(
    async ({ id, key }) => (await (await fetch(`/v1/jobs/${id}`, { headers: { Authorization: `Bearer ${key}` } })).json()).error,
    { id: failure.id, key: KEY },
  );
  check(recorded && recorded.code && recorded.message, `the failed job has no error: ${JSON.stringify(recorded)}`);
  check(
    failure.problem.includes(recorded.code) && failure.problem.includes(recorded.message),
    `failure reads: ${failure.problem}; the API says ${JSON.stringify(recorded)}`,
  );
  if (SHOTS) {
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, "phone.png");
    await page.setViewportSize({ width: 1100, height: 900 });
  }
  await page.click(`#jobs li[data-job="${failure.id}"] button.remove`);
  await until("the failed job to go", async () => !(await page.$(`#jobs li[data-job="${failure.id}"]`)), 10000);

  // 8. With anonymous auth (a laptop's `serve --embedded`), no key is asked for.
  if (process.env.ANONYMOUS_URL) {
    const open = await context.newPage();
    open.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    await open.goto(process.env.ANONYMOUS_URL);
    await open.waitForSelector("#app:not([hidden])");
    check(await open.$eval("#sign-in", (el) => el.hidden), "anonymous: the sign-in form shows");
    check(/no key/i.test(await open.textContent("#who")), "anonymous: not said that no key is needed");
    await open.close();
  }

  check(problems.length === 0, `the page reported: ${problems.join("; ")}`);
  await browser.close();
  console.log(JSON.stringify({ job: jobId, stem: "vocals", download: downloadPath, mix: mixPath, heard: heardAll }));
}

main().catch((err) => {
  console.error(`web UI test failed: ${err.stack || err}`);
  process.exit(1);
});
