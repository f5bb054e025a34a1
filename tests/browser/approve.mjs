// Approves a paused drkit failover through the Prefect UI's Resume form, in Debian's chromium.
//
//   DRKIT_APPROVAL_CODE=123456 node tests/browser/approve.mjs <ui-base-url> <flow-run-id> <approver> <reason> <screenshot-dir>
//
// The code (from the approver's authenticator app) comes in the environment, not on the command line.
// The browser: chromium.mjs (Debian's chromium through playwright-core; no browser is downloaded).
// Prints one line per step; exits 1 (after a screenshot and the dialog's HTML) when a step fails.
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { openPage, step } from './chromium.mjs';

const [ui, runId, approver, reason, shots] = process.argv.slice(2);
const code = process.env.DRKIT_APPROVAL_CODE || '';
if (!ui || !runId || !approver || !reason || !shots || !code) {
  console.error('usage: DRKIT_APPROVAL_CODE=<code> approve.mjs <ui-base-url> <flow-run-id> <approver> <reason> <screenshot-dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const { browser, page } = await openPage({ width: 1400, height: 1000 });
let failed = false;
try {
  step(`open ${ui}/runs/flow-run/${runId}`);
  await page.goto(`${ui}/runs/flow-run/${runId}`, { waitUntil: 'networkidle' });
  await page.locator('.state-badge, [class*=state-badge]').filter({ hasText: 'Paused' }).first().waitFor();
  step('the run shows Paused');

  await page.getByRole('button', { name: 'Resume', exact: true }).click();
  const dlg = page.getByRole('dialog');
  await dlg.locator('.p-modal__title', { hasText: 'Resume Flow Run' }).waitFor();
  step('the Resume dialog is open');

  // The form's <label for=...> ids do not point at the inputs: find each property by its label text.
  const prop = (label) => dlg.locator('.schema-form-property')
    .filter({ has: page.locator('.schema-form-property__label', { hasText: label }) });
  const confirm = prop(/confirm.region.failure/i).getByRole('switch');
  await confirm.click();
  if ((await confirm.getAttribute('aria-checked')) !== 'true') {
    throw new Error('the confirm_region_failure switch did not turn on');
  }
  await prop(/^\s*approver/i).locator('textarea').fill(approver);
  await prop(/^\s*code/i).locator('textarea, input').first().fill(code);
  await prop(/^\s*reason/i).locator('textarea').fill(reason);
  await page.screenshot({ path: path.join(shots, 'filled.png'), fullPage: true });
  step('the form is filled');

  await dlg.getByRole('button', { name: 'Submit', exact: true }).click();
  await dlg.waitFor({ state: 'detached' });
  step('submitted; the dialog closed');
} catch (err) {
  failed = true;
  console.error(`FAILED: ${err && err.stack ? err.stack : err}`);
  try {
    await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true });
    const html = (await page.getByRole('dialog').count()) ? await page.getByRole('dialog').first().innerHTML()
      : await page.content();
    writeFileSync(path.join(shots, 'failure.html'), html);
    console.error(`screenshot and HTML in ${shots}`);
  } catch (e) {
    console.error(`(no screenshot: ${e})`);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
