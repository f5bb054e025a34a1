// Debian's chromium through playwright-core from .tools/playwright (scripts/install-browser.sh; no browser is
// downloaded), for the scripts that look at the Prefect UI.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const toolsDir = process.env.DRKIT_PLAYWRIGHT_DIR || path.join(here, '..', '..', '.tools', 'playwright');
const { chromium } = createRequire(path.join(toolsDir, 'package.json'))('playwright-core');

export const step = (what) => console.log(`[${new Date().toISOString()}] ${what}`);

// A headless browser and one page (UTC, 20 s per step); close the browser when done.
export async function openPage(viewport = { width: 1280, height: 900 }) {
  const browser = await chromium.launch({
    executablePath: process.env.DRKIT_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport, timezoneId: 'UTC' });
  context.setDefaultTimeout(20000);
  return { browser, page: await context.newPage() };
}
