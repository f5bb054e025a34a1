// Starts a point-in-time restore from the Prefect UI's deployment Run form (Run → Custom run), in Debian's
// chromium, watches the run complete and opens its restore report artifact.
//
//   node tests/browser/restore.mjs <ui-base-url> <deployment-id> <into> <target YYYY-MM-DDTHH:MM (UTC)> <shots-dir>
//
// The browser: chromium.mjs (Debian's chromium through playwright-core; no browser is downloaded).
// Prints one line per step, then `run: <flow-run-id>` and `report: <the artifact's text>`; exits 1 (after a
// screenshot and the page's HTML) when a step fails. Screenshots: run-form.png, run-completed.png, report.png.
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { openPage, step } from './chromium.mjs';

const [ui, deploymentId, into, target, shots] = process.argv.slice(2);
const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})$/.exec(target || '');
if (!ui || !deploymentId || !into || !m || !shots) {
  console.error('usage: restore.mjs <ui-base-url> <deployment-id> <into> <YYYY-MM-DDTHH:MM> <screenshot-dir>');
  process.exit(2);
}
const [, day, time] = m;
mkdirSync(shots, { recursive: true });

const { browser, page } = await openPage();
page.on('response', (r) => { if (r.status() >= 400) console.log(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`); });
let failed = false;
try {
  step(`open ${ui}/deployments/deployment/${deploymentId}`);
  await page.goto(`${ui}/deployments/deployment/${deploymentId}`, { waitUntil: 'networkidle' });
  await page.locator('button', { hasText: /^\s*Run\s*$/ }).first().click();
  await page.getByText('Custom run', { exact: true }).click();
  await page.waitForURL(/\/run(\?|$)/);
  step('the Run form is open');

  // Each property is found by its label (the form's <label for=...> ids do not point at the inputs).
  const prop = (label) => page.locator('.schema-form-property')
    .filter({ has: page.locator('.schema-form-property__label', { hasText: label }) });
  await prop(/^\s*into\s*$/).locator('textarea').fill(into);

  const targetField = prop(/^\s*target \(/);
  await targetField.getByRole('button', { name: 'date-time', exact: true }).click();
  if ((await targetField.locator('.p-select-button__value').textContent()).trim() !== 'UTC') {
    throw new Error('the target time zone is not UTC');
  }
  await targetField.locator('.p-date-button__control').click();
  const picker = page.locator('.p-date-picker');
  await picker.locator('input[type=date]').fill(day);
  await picker.locator('input[type=time]').fill(time);
  await picker.getByRole('button', { name: 'Apply', exact: true }).click();
  const shown = (await targetField.locator('.p-date-button__value').textContent()).trim();
  step(`target picked: ${shown}`);

  const keepField = prop(/^\s*keep_running/);
  await keepField.getByRole('switch').click();
  await keepField.locator('[role=switch][aria-checked=true]').waitFor();  // throws if it never turns on
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(shots, 'run-form.png'),
    clip: { x: 0, y: 0, width: 1280, height: 900 } });
  step('the form is filled: into, target, keep_running');

  const created = page.waitForResponse((r) => r.request().method() === 'POST'
    && /\/deployments\/[0-9a-f-]+\/create_flow_run$/.test(new URL(r.url()).pathname));
  await page.getByRole('button', { name: 'Submit', exact: true }).click();
  const response = await created;
  if (!response.ok()) throw new Error(`creating the run failed: HTTP ${response.status()} ${await response.text()}`);
  const runId = (await response.json()).id;
  // the "View run" toast is gone in a few seconds: open the run the form created directly
  await page.goto(`${ui}/runs/flow-run/${runId}`, { waitUntil: 'networkidle' });
  step(`submitted; watching run ${runId}`);

  const badge = page.locator('.state-badge, [class*=state-badge]').first();
  const deadline = Date.now() + 240000;
  for (;;) {
    const state = ((await badge.textContent({ timeout: 20000 })) || '').trim();
    if (state === 'Completed') break;
    if (/Failed|Crashed|Cancelled/.test(state)) throw new Error(`the run ended ${state}`);
    if (Date.now() > deadline) throw new Error(`the run is still ${state}`);
    await page.waitForTimeout(1000);  // the UI refreshes the run's state itself; this only paces the reading
  }
  step('the run shows Completed');
  await page.locator('.p-tab', { hasText: /^\s*Artifacts\s*$/ }).click();
  const card = page.locator('a[href*="/artifacts/artifact/"]')
    .filter({ has: page.locator('.artifact-card__title', { hasText: /-restore-report$/ }) });
  await card.waitFor();
  await page.screenshot({ path: path.join(shots, 'run-completed.png'), clip: { x: 0, y: 0, width: 1280, height: 900 } });

  await card.click();
  await page.waitForURL(/\/artifacts\/artifact\//);
  // the report's own heading (publish_restore_report: "# Restore of DB"), not a card's description
  const report = page.locator('.markdown-renderer')
    .filter({ has: page.getByRole('heading', { name: /^Restore of / }) }).first();
  await report.waitFor();
  await page.screenshot({ path: path.join(shots, 'report.png'), clip: { x: 0, y: 0, width: 1280, height: 900 } });
  step('the restore report artifact is open');
  console.log(`run: ${runId}`);
  console.log(`report: ${(await report.innerText()).replace(/\s+/g, ' ')}`);
} catch (err) {
  failed = true;
  console.error(`FAILED: ${err && err.stack ? err.stack : err}`);
  try {
    await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true });
    writeFileSync(path.join(shots, 'failure.html'), await page.content());
    console.error(`screenshot and HTML in ${shots}`);
  } catch (e) {
    console.error(`(no screenshot: ${e})`);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
