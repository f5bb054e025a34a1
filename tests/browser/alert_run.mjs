// Looks in the Prefect UI, in Debian's chromium, for what an alert started: the flow run's page shows it
// Completed, and the Automations page lists the deployment trigger that started it.
//
//   node tests/browser/alert_run.mjs <ui-base-url> <flow-run-id> <flow-run-name> <automation-name> <shots-dir>
//
// Prints one line per step; exits 1 (after a screenshot and the page's HTML) when a step fails.
// Screenshots: alert-run.png, alert-automations.png.
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { openPage, step } from './chromium.mjs';

const [ui, runId, runName, automation, shots] = process.argv.slice(2);
if (!ui || !runId || !runName || !automation || !shots) {
  console.error('usage: alert_run.mjs <ui-base-url> <flow-run-id> <flow-run-name> <automation-name> <shots-dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const { browser, page } = await openPage();
let failed = false;
try {
  step(`open ${ui}/runs/flow-run/${runId}`);
  await page.goto(`${ui}/runs/flow-run/${runId}`, { waitUntil: 'networkidle' });
  const badge = page.locator('.state-badge, [class*=state-badge]').first();
  await badge.filter({ hasText: 'Completed' }).waitFor();
  await page.getByText(runName, { exact: true }).first().waitFor();
  await page.screenshot({ path: path.join(shots, 'alert-run.png') });
  step(`run page: ${runName} Completed`);

  step(`open ${ui}/automations`);
  await page.goto(`${ui}/automations`, { waitUntil: 'networkidle' });
  await page.getByText(automation, { exact: true }).first().waitFor();
  await page.screenshot({ path: path.join(shots, 'alert-automations.png') });
  step(`automations page lists ${automation}`);
} catch (err) {
  failed = true;
  console.error(`failed: ${err.message}`);
  await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  writeFileSync(path.join(shots, 'failure.html'), await page.content().catch(() => ''));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
